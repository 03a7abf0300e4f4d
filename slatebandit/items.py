"""The item: one product as the catalog feed sends it (``PUT /v1/items``, ``slatebandit items
load``). Every layer reads it, so it depends on nothing of the package: the storage layer
(``logging.items``) stores it, retrieval builds features from it, the simulator makes them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Scalar = str | int | float | bool


class Item(BaseModel):
    """One catalog item, as PUT /v1/items and `slatebandit items load` accept it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    item_id: str = Field(min_length=1, max_length=128)
    title: str = Field(default="", max_length=512)
    category: str = Field(default="", max_length=128)
    brand: str = Field(default="", max_length=128)
    # Bounded so it fits the catalog's float32 column (about 3.4e38) with room to spare.
    price: float | None = Field(default=None, ge=0, le=1e15, allow_inf_nan=False)
    attributes: dict[str, Scalar] = Field(default_factory=dict, max_length=64)
    available: bool = True
