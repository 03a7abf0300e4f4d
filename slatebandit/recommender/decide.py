"""One slate, from query to logged decision: the pipeline between the API and the parts.

    context     the shopper's state and profile, the request's session items and context
    candidates  retrieval's generators, merged and filtered (``retrieval.candidates``)
    policy      the policy that serves this shopper: champion, canary or experiment arm
    slate       the policy fills the k slots and gives each pick its propensity
    reasons     why each item is there (and, asked for, the features that scored it)
    record      the decision, committed or spooled (``recommender.outage``) before the answer

``decide`` runs these in order; each step is a function of its own below.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from slatebandit.bandit import Shaping, SharedFeatures, valued
from slatebandit.logging import DecisionRecord, ShownSlot
from slatebandit.logging.partitions import new_event_id
from slatebandit.policies import Query, Slate
from slatebandit.policies.explain import contributions, reasons
from slatebandit.recommender.pages import Page, deeper, read_page, request_hash
from slatebandit.recommender.placements import FEATURE, Placement, placement_of
from slatebandit.recommender.state import Parts
from slatebandit.retrieval import (
    SOURCES,
    Allowed,
    Candidates,
    Filters,
    Quotas,
    UserState,
    context_tokens,
    generate,
)
from slatebandit.retrieval.catalog import Catalog

PROFILE_TOP = 5  # top categories and brands of the user's state that reach the scorer
RECENT = 5  # the shopper's most recent items: the similar generator's seeds, and context

Scalar = str | int | float | bool


@dataclass(frozen=True)
class SlateQuery:
    """What a storefront asks for (the API's ``POST /v1/slates`` body, validated)."""

    user_id: str
    k: int | None = None  # default: SLATEBANDIT_DEFAULT_K
    context: Mapping[str, Scalar] = field(default_factory=dict)
    session_items: Sequence[str] = ()  # newest first
    exclude: Sequence[str] = ()
    filters: Filters | None = None
    explain: bool = False  # add each pick's top features and what they added to its score
    # A dry run (the console's slate inspector) is never logged, counts no impression and
    # teaches nothing; it answers every candidate's score beside the slate.
    dry_run: bool = False
    placement: str = "home"  # where the slate is shown: home, item, cart or category
    # What the placement is about (``recommender.placements``): an item page's item, a cart's
    # items (the API's ``items``), a category page's path prefix.
    item_id: str | None = None
    cart: Sequence[str] = ()
    category: str | None = None
    page_token: str | None = None  # an earlier answer's next_page: the chain's next k items


@dataclass(frozen=True)
class Decision:
    """A slate as answered: its items with propensity, kind, source, score and reason."""

    event_id: str | None  # None for a dry run: nothing can be rewarded
    policy: str
    model_version: int
    logged: str  # database, spool or none
    items: list[dict[str, object]]
    experiment: str | None = None
    arm: str | None = None  # an experiment's arm, or ``canary``
    candidates: list[dict[str, object]] | None = None  # a dry run's, best score first
    next_page: str | None = None  # the page token of the next k; None: the chain ends here

    def to_dict(self) -> dict[str, object]:
        answer: dict[str, object] = {
            "event_id": self.event_id,
            "policy": self.policy,
            "model_version": self.model_version,
            "logged": self.logged,
            "items": self.items,
            "next_page": self.next_page,
        }
        if self.experiment is not None:
            answer["experiment"] = self.experiment
        if self.arm is not None:
            answer["arm"] = self.arm
        if self.candidates is not None:
            answer["dry_run"] = True
            answer["candidates"] = self.candidates
        return answer


@dataclass(frozen=True)
class Shopper:
    """The shopper as this request sees them: stored state, and the request's own items."""

    user_id: str  # as stored: pseudonymised if the server does
    state: UserState
    session: list[int]  # item keys of the request's session items, newest first
    exclude: set[int]
    recent: list[int]  # the state's RECENT latest items
    excluded: set[int]  # what the state's exclusion rules keep out (``UserState.excluded``)
    shared: SharedFeatures  # what every candidate is scored with
    placement: Placement
    page: Page  # what earlier pages of this chain showed


async def decide(r: Parts, query: SlateQuery) -> Decision:
    k = r.slate_size(query.k)
    shopper = await _shopper(r, query)
    # A category page narrows the request's filters to its prefix, for retrieval and rules.
    filters = shopper.placement.filters(query.filters)
    allowed = await r.allowed(filters) if filters else None
    candidates = _candidates(r, shopper, allowed)
    candidates, shaping = _shaped(r, shopper, candidates, allowed, k)
    policy, experiment, arm = await r.policy_for(shopper.user_id)
    scored = Query(shopper.shared, candidates)
    # A dry run draws from a generator of its own, so that it leaves serving's stream alone.
    rng = np.random.default_rng() if query.dry_run else r.rng
    slate = policy.slate(r.store, scored, k, rng, shaping)
    # Explained before the commit: once the decision is logged, nothing may fail the answer.
    why = reasons(slate, r.store, [*shopper.session, *shopper.recent])
    detail = None
    if query.explain:
        detail = await asyncio.to_thread(contributions, policy, slate, r.store, scored)
    if query.dry_run:
        items = _items(r.store.catalog, _shown(slate), why, detail)
        everyone = _scored_candidates(r.store.catalog, slate)
        return Decision(
            None,
            slate.policy,
            slate.model_version,
            "none",
            items,
            experiment,
            arm,
            everyone,
            next_page=_next_page(shopper, slate, k),
        )
    record = _record(shopper, slate, experiment, arm)
    # Committed, or spooled while the database is away; the slate is served either way.
    shown, logged = await r.outage.log_decision(r.writer.submit, record)
    for slot in record.shown:
        r.store.catalog.add_impressions(slot.item_key)
    shown_keys = [slot.item_key for slot in record.shown]
    r.rotation.shown(shopper.user_id, shown_keys, shopper.state.acted, record.created_at)
    if shown is not None:  # remembered with its context, for its rewards
        context = tuple(shopper.shared.context.items())
        r.remember_decision(record.event_id, replace(shown, context=context))
    items = _items(r.store.catalog, record.shown, why, detail)
    return Decision(
        record.event_id,
        slate.policy,
        slate.model_version,
        logged,
        items,
        experiment,
        arm,
        next_page=_next_page(shopper, slate, k),
    )


async def _shopper(r: Parts, query: SlateQuery) -> Shopper:
    await r.know_items([query.item_id, *query.cart])  # an item page for a product just added
    catalog = r.store.catalog
    user_id = r.user_key(query.user_id)
    # Checked before the shopper is read: a bad placement or page token costs nothing.
    placement = placement_of(
        catalog, query.placement, query.item_id, query.cart, query.category, query.filters
    )
    seeds = placement.seeds
    chain = request_hash(user_id, placement.name, sorted(seeds), placement.category, query.filters)
    page = read_page(query.page_token, placement.name, chain)
    state, batch = await r.user(user_id)
    key_of = catalog.key_of
    # What the shopper is looking at (an item page's item, a cart) comes first in the session.
    requested = [key_of[i] for i in query.session_items if i in key_of]
    session = list(dict.fromkeys([*seeds, *requested]))
    exclude = {key_of[i] for i in query.exclude if i in key_of} | {*seeds, *page.shown}
    recent = state.recent_keys(RECENT)
    looked_at = [*seeds[:RECENT], *recent]
    categories = [catalog.category_names[catalog.category[key]] for key in looked_at]
    profile = [valued(f"tc={c}", share) for c, share in state.shares("categories", PROFILE_TOP)]
    profile += [valued(f"tb={b}", share) for b, share in state.shares("brands", PROFILE_TOP)]
    context = {**query.context, FEATURE: placement.name}
    shared = SharedFeatures.build(context, categories, profile=[*profile, *batch])
    excluded = state.excluded(r.exclusions, time.time())
    return Shopper(user_id, state, session, exclude, recent, excluded, shared, placement, page)


def _candidates(r: Parts, shopper: Shopper, allowed: Allowed | None) -> Candidates:
    """The generators' candidates, led by the placement's own, inside ``allowed`` (the
    request's filters, narrowed to a category page's prefix); a later page reaches as far past
    the earlier ones."""
    depth = len(shopper.page.shown)
    return generate(
        r.store,
        shopper.state,
        shopper.session,
        shopper.exclude,
        r.settings.candidates,
        quotas=deeper(Quotas(), depth),
        allowed=allowed,
        excluded=shopper.excluded,
        context=context_tokens(shopper.shared.context),
        lead=shopper.placement.lead(r.store, r.together, allowed, depth),
    )


def _shaped(
    r: Parts, shopper: Shopper, candidates: Candidates, allowed: Allowed | None, k: int
) -> tuple[Candidates, Shaping | None]:
    """The candidates and slate shape after the merchandising rules in force at the slate's
    placement and the shopper's rotation (``slatebandit.merchandising``)."""
    catalog = r.store.catalog

    def usable(keys: np.ndarray) -> np.ndarray:  # called only when a rule brings items
        excluded = {*shopper.exclude, *shopper.session, *shopper.excluded}
        ok = catalog.available[keys] & np.array([key not in excluded for key in keys.tolist()])
        return ok & allowed.mask[keys] if allowed is not None else ok

    placement = shopper.placement.name
    candidates, shaping = r.rules.shape(catalog, candidates, placement, k, usable)
    rotation = r.rotation.shift(shopper.user_id, candidates.keys, shopper.state.acted, time.time())
    if rotation is None:
        return candidates, shaping
    shaping = shaping or Shaping()
    shift = rotation if shaping.shift is None else shaping.shift + rotation
    return candidates, replace(shaping, shift=shift)


def _next_page(shopper: Shopper, slate: Slate, k: int) -> str | None:
    """The token of the page after this slate (``recommender.pages``)."""
    keys = [int(slate.candidates.keys[pick.index]) for pick in slate.picks]
    return shopper.page.next_token(keys, k)


def _shown(slate: Slate) -> tuple[ShownSlot, ...]:
    candidates = slate.candidates
    return tuple(
        ShownSlot(
            slot=j,
            item_key=int(candidates.keys[pick.index]),
            propensity=pick.propensity,
            kind=pick.kind,
            source=SOURCES[candidates.sources[pick.index]],
            score=float(slate.scores[pick.index]),
        )
        for j, pick in enumerate(slate.picks)
    )


def _scored_candidates(catalog: Catalog, slate: Slate) -> list[dict[str, object]]:
    """Every candidate the policy scored, best first, with the generator that proposed it."""
    candidates = slate.candidates
    order = np.argsort(-slate.scores, kind="stable")
    return [
        {
            "item_id": catalog.item_ids[int(candidates.keys[i])],
            "score": float(slate.scores[i]),
            "source": SOURCES[candidates.sources[i]],
        }
        for i in order.tolist()
    ]


def _record(
    shopper: Shopper, slate: Slate, experiment: str | None, arm: str | None
) -> DecisionRecord:
    shown = _shown(slate)
    now = time.time()
    return DecisionRecord(
        event_id=new_event_id(now),
        created_at=now,
        user_id=shopper.user_id,
        policy=slate.policy,
        model_version=slate.model_version,
        payload=slate.payload().encode(),
        shown=shown,
        experiment=experiment,
        arm=arm,
        placement=shopper.placement.name,
    )


def _items(
    catalog: Catalog,
    shown: Sequence[ShownSlot],
    why: Sequence[str],
    detail: Sequence[list[dict[str, object]]] | None,
) -> list[dict[str, object]]:
    items: list[dict[str, object]] = [
        {
            "item_id": catalog.item_ids[slot.item_key],
            "slot": slot.slot,
            "propensity": slot.propensity,
            "kind": slot.kind,
            "source": slot.source,
            "score": slot.score,
            "reason": reason,
        }
        for slot, reason in zip(shown, why, strict=True)
    ]
    if detail is not None:
        for item, features in zip(items, detail, strict=True):
            item["explanation"] = {"features": features}
    return items
