"""Request bodies, validated strictly at the boundary (pydantic strict mode, no unknown fields).

Every model is also the OpenAPI schema of its route (``slatebandit.server.openapi``).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from starlette.requests import Request

from slatebandit.errors import InvalidInput
from slatebandit.merchandising import PLACEMENTS
from slatebandit.recommender import Filters, SlateQuery
from slatebandit.recommender.pages import MAX_CHARS as MAX_PAGE_TOKEN

Scalar = str | int | float | bool
EventType = Literal["view", "click", "add_to_cart", "purchase"]
ItemId = Field(min_length=1, max_length=128)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SlateFilters(_Strict):
    category: list[str] = Field(
        default_factory=list, max_length=50, description="category path prefixes, any of"
    )
    brand: list[str] = Field(default_factory=list, max_length=50, description="any of")
    price_min: float | None = Field(default=None, ge=0, le=1e15, allow_inf_nan=False)
    price_max: float | None = Field(default=None, ge=0, le=1e15, allow_inf_nan=False)
    attributes: dict[str, Scalar] = Field(
        default_factory=dict, max_length=16, description="exact attribute values, all of"
    )

    @model_validator(mode="after")
    def _price_range(self) -> SlateFilters:
        low, high = self.price_min, self.price_max
        if low is not None and high is not None and low > high:
            raise ValueError("price_min must not exceed price_max")
        return self

    def to_filters(self) -> Filters:
        return Filters.from_body(self.model_dump())


class SlateRequest(_Strict):
    user_id: str = Field(min_length=1, max_length=128)
    k: int | None = Field(
        default=None, ge=1, le=1000, description="slate size (default from settings)"
    )
    context: dict[str, Scalar] = Field(
        default_factory=dict, max_length=32, description="device, page, ...: shared features"
    )
    session_items: list[str] = Field(
        default_factory=list, max_length=50, description="items seen in this session, newest first"
    )
    exclude: list[str] = Field(
        default_factory=list, max_length=1000, description="never show these"
    )
    filters: SlateFilters | None = Field(
        default=None, description="only items in these categories, brands, price range"
    )
    placement: str = Field(
        default="home",
        json_schema_extra={"enum": list(PLACEMENTS)},
        description="where the slate is shown: its candidate mix and a context feature",
    )
    item_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="placement item: the item page's item (never shown; neighbours first)",
    )
    items: list[Annotated[str, ItemId]] = Field(
        default_factory=list,
        max_length=100,
        description="placement cart: the cart's items (never shown; bought together first)",
    )
    category: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="placement category: a category path prefix ('men' is men and men/shoes)",
    )
    page_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PAGE_TOKEN,
        pattern="^[A-Za-z0-9_-]+$",
        description="an earlier answer's next_page, with the same other fields: the next k "
        "items, none of the chain's earlier ones",
    )

    @field_validator("placement")
    @classmethod
    def _known_placement(cls, placement: str) -> str:
        if placement not in PLACEMENTS:
            raise ValueError(f"must be one of {', '.join(PLACEMENTS)}")
        return placement

    @field_validator("context")
    @classmethod
    def _short_context_keys(cls, context: dict[str, Scalar]) -> dict[str, Scalar]:
        for name, value in context.items():
            if not 1 <= len(name) <= 64 or name.startswith("_"):
                raise ValueError(
                    f"context key {name!r} must be 1-64 characters, not starting with _"
                )
            if isinstance(value, str) and len(value) > 128:
                raise ValueError(f"context value of {name!r} is longer than 128 characters")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"context value of {name!r} must be a finite number")
        return context

    def to_query(self, *, explain: bool = False, dry_run: bool = False) -> SlateQuery:
        filters = None if self.filters is None else self.filters.to_filters()
        return SlateQuery(
            self.user_id,
            self.k,
            self.context,
            self.session_items,
            self.exclude,
            filters,
            explain=explain,
            dry_run=dry_run,
            placement=self.placement,
            item_id=self.item_id,
            cart=self.items,
            category=self.category,
            page_token=self.page_token,
        )


class RewardRequest(_Strict):
    event_id: str = Field(min_length=32, max_length=32, pattern="^[0-9a-f]{32}$")
    item_id: str = ItemId
    reward: float | None = Field(
        default=None, ge=-1e6, le=1e6, allow_inf_nan=False, description="default: by type"
    )
    type: str = Field(default="click", min_length=1, max_length=32, pattern="^[a-z_]+$")
    value: float | None = Field(
        default=None,
        ge=0,
        le=1e15,
        allow_inf_nan=False,
        description="what the action was worth in money (a purchase's amount)",
    )


class EventRequest(_Strict):
    user_id: str = Field(min_length=1, max_length=128)
    item_id: str = ItemId
    type: EventType


MAX_ITEMS_PER_REQUEST = 10_000
M = TypeVar("M", bound=BaseModel)


class EvaluationRequest(_Strict):
    policies: list[str] = Field(
        min_length=1, max_length=10, description="random | popular | logged | vw@V | vw:ARGS"
    )
    estimators: list[str] | None = Field(
        default=None, max_length=20, description="default ips, snips, dm, dr, cascade-ips/dr"
    )
    since: str | float | None = Field(default=None, description="ISO 8601, epoch or age (7d)")
    until: str | float | None = Field(default=None, description="default: now - reward wait")
    bootstrap: int = Field(default=1000, ge=0, le=10_000)
    seed: int = 0
    clip: float = Field(default=100.0, gt=0, allow_inf_nan=False)
    train_fraction: float = Field(default=0.5, gt=0, lt=1)
    metric: Literal["reward", "clicks", "conversions", "revenue"] = Field(
        default="reward", description="what a slot earns: the objective's reward, or one figure"
    )


def validate(model: type[M], data: object) -> M:
    """``model`` from decoded JSON or msgpack, or InvalidInput naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


def invalid(exc: ValidationError, prefix: str = "") -> InvalidInput:
    error = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "") or None
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "is required"
    return InvalidInput(f"{field or 'body'}: {message}", field=field)


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """Query parameter ``name`` as a whole number in [low, high], or ``default`` if absent;
    anything else is a 400 naming it."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # isdigit alone admits "²" and 5,000-digit strings, which int() then refuses with a 500
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not low <= int(raw) <= high:
        raise InvalidInput(f"{name}: must be a whole number from {low} to {high}", field=name)
    return int(raw)
