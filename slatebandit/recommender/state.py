"""What a serving worker holds (``Parts``): its parts, what it remembers between requests, and
the small steps that the verbs (``recommender.core``, ``decide``, ``feedback``) share.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Connection, Engine

from slatebandit.config import Settings
from slatebandit.errors import DatabaseUnavailable, InvalidInput
from slatebandit.learning import LearnerProcess
from slatebandit.logging import (
    GroupCommitWriter,
    ShownDecision,
    impression_counts,
    shown_decision,
)
from slatebandit.logging.engine import is_unavailable, point_reader, read_retrying
from slatebandit.logging.user_reads import SqliteUserReader, UserReader
from slatebandit.logging.users import read_user, update_user_state
from slatebandit.memory import Held, held
from slatebandit.merchandising import Rotation, RuleBook
from slatebandit.personalizer.loops import Loops
from slatebandit.policies import Policy, PolicySet, VWPolicy
from slatebandit.policies.canary import ARM as CANARY_ARM
from slatebandit.policies.canary import CanaryBook
from slatebandit.policies.experiment_book import ExperimentBook
from slatebandit.recommender.evaluations import Evaluations
from slatebandit.recommender.outage import SPOOLED, Outage
from slatebandit.retrieval import (
    Allowed,
    FilterMasks,
    Filters,
    ItemStore,
    UserState,
    UserStates,
    context_tokens,
)
from slatebandit.retrieval.together import Together

log = logging.getLogger(__name__)
T = TypeVar("T")
# Event ids whose shown items are kept for reward validation; older ones are read from the
# database. An entry takes about 1.1 KB: at 200,000 a worker grew by up to 220 MB as it filled
# (half an hour at 110 slates/s), most of the RSS growth the soak measured.
RECENT_DECISIONS = 20_000


@dataclass
class Effects:
    """What committed feedback changed that the serving process keeps in memory (applied by
    ``Parts.apply`` once the transaction that stored it has committed)."""

    ids: dict[str, int] = field(default_factory=dict)  # event id -> decision id, once shipped
    states: list[tuple[str, tuple[int, bytes]]] = field(default_factory=list)  # user, stored
    popularity: list[tuple[int, float, float]] = field(default_factory=list)  # key, weight, at
    context: list[tuple[dict[str, Any], int, float]] = field(default_factory=list)
    records: int = 0
    dropped: int = 0


def index_path(settings: Settings) -> Path:
    """Where ``serve`` saves the item index between runs."""
    return settings.data_dir / "index" / "items.json"


class Parts:
    """Every part a serving worker holds and what it remembers between requests, with the
    reads and small steps the verbs (``Recommender``, ``recommender.decide``,
    ``recommender.feedback``) share."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        store: ItemStore,
        policy: VWPolicy,
        policies: PolicySet,
        experiments: ExperimentBook,
        canaries: CanaryBook,
        loops: Loops,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.point_engine = point_reader(engine)
        # The slate's read of its shopper runs on the event loop, through a connection of its
        # own (``logging.user_reads``); a memory database is read through the engine.
        self.user_reader: UserReader | SqliteUserReader | None = None
        if engine.dialect.name == "postgresql":
            self.user_reader = UserReader(engine, timeout=settings.db_timeout_seconds)
        elif SqliteUserReader.serves(engine):
            self.user_reader = SqliteUserReader(engine)
        self.store = store
        self.policy = policy  # the champion follower: ``vw`` wherever it serves
        self.policies = policies
        self.experiments = experiments
        self.canaries = canaries
        self.loops = loops  # the Personalizer loops
        self.rng = np.random.default_rng(settings.seed)
        self.writer = GroupCommitWriter(engine, max_batch=settings.commit_batch)
        # Database reachability and the spool: commit-or-spool (``recommender.outage``).
        self.outage = Outage(
            engine,
            settings.spool_path,
            max_bytes=settings.spool_max_bytes,
            timeout=settings.db_timeout_seconds,
        )
        self.evaluations = Evaluations(engine, settings)  # replays started over HTTP
        self.holder = f"serve-{socket.gethostname()}-{os.getpid()}"  # for the leases
        self.learning = LearnerProcess(engine, settings, self.holder)
        # What this worker keeps in memory between requests.
        self.users = UserStates()
        self.decisions: OrderedDict[str, ShownDecision] = OrderedDict()
        self.filter_masks = FilterMasks()
        self.together = Together()  # bought-together lists (extended by a background job)
        self.rules = RuleBook()  # merchandising rules, compiled (refreshed by a job)
        self.rotation = Rotation(settings.rotation_rate, settings.rotation_time)
        # Parsed once: the settings hold them as strings, and every request reads them.
        self.canary_serves = settings.promotion == "gated" and settings.policy == "vw"
        self.exclusions = settings.exclusions
        self.rewards = settings.rewards
        self._user_id_key = settings.user_id_key.encode()

    # What a decision reads ------------------------------------------------------------------

    def slate_size(self, k: int | None) -> int:
        """The request's ``k``, or the default; a 400 past ``SLATEBANDIT_MAX_K``."""
        k = self.settings.default_k if k is None else k
        if k > self.settings.max_k:
            raise InvalidInput(f"k: must be at most {self.settings.max_k}", field="k")
        return k

    async def allowed(self, filters: Filters) -> Allowed:
        """The items a request's filters allow; built on a worker thread when not cached (an
        attribute filter reads every item's features)."""
        catalog, index = self.store.catalog, self.store.index
        found = self.filter_masks.cached(filters, catalog)
        if found is None:
            found = await asyncio.to_thread(self.filter_masks.allowed, filters, catalog, index)
        return found

    async def user(self, user_id: str) -> tuple[UserState, list[str]]:
        """The user's online state and batch features, read together (one statement)."""
        if not self.outage.degraded:
            try:
                found, profile = await self.outage.in_time(
                    self.point_read(partial(read_user, user_id=user_id))
                    if self.user_reader is None
                    else self.user_reader.read(user_id)
                )
                return self._decoded(user_id, found), profile
            except DatabaseUnavailable:
                self.outage.failed()
        # The database is away: the state this worker saw last, without batch features.
        return self.users.latest(user_id) or UserState(), []

    def _decoded(self, user_id: str, found: tuple[int, bytes] | None) -> UserState:
        if found is None:
            return UserState()
        version, data = found
        return self.users.get(user_id, version) or self.users.put(
            user_id, version, UserState.from_bytes(data), len(data)
        )

    async def policy_for(self, user_id: str) -> tuple[Policy, str | None, str | None]:
        """The policy that serves ``user_id``, with the experiment and arm that chose it."""
        assigned = self.experiments.assign(user_id)
        if assigned is None:
            canary = self.canaries.running  # one read: a refresh mid-request cannot mix
            if canary is not None and self.canary_serves and canary.serves(user_id):
                policy = self.policies.built(f"vw@{canary.version}")  # loaded by the book
                if policy is not None:
                    return policy, None, CANARY_ARM
            return self.policies.default, None, None
        experiment, arm = assigned
        try:
            if self.policies.is_ready(arm.policy):
                policy = self.policies.get(arm.policy)
            else:  # vw@V reads the registry once
                policy = await asyncio.to_thread(self.policies.get, arm.policy)
        except Exception:  # noqa: BLE001 - the shopper still gets a slate
            log.exception(
                "experiment %s arm %s: policy %s failed", experiment, arm.name, arm.policy
            )
            return self.policies.default, None, None
        return policy, experiment, arm.name

    def user_key(self, user_id: str) -> str:
        """The id ``user_id`` is stored under: its keyed hash when ``SLATEBANDIT_USER_ID_KEY``
        is set (the same on every worker and restart), else itself."""
        if not self._user_id_key:
            return user_id
        return hmac.new(self._user_id_key, user_id.encode(), hashlib.sha256).hexdigest()[:32]

    # What this worker remembers -------------------------------------------------------------

    async def know_items(self, item_ids: Iterable[str | None]) -> None:
        """Sync the catalog now if this worker does not know one of ``item_ids``. An item
        another worker added is otherwise unknown here until the next catalog poll
        (``SLATEBANDIT_CATALOG_POLL_SECONDS``), while the client, its PUT answered, may send
        its next request here. If the database does not answer, the catalog stays as it is
        and the caller answers for an unknown item as before."""
        key_of = self.store.catalog.key_of
        if self.outage.degraded or all(i is None or i in key_of for i in item_ids):
            return
        try:
            await self.store.sync(self.engine)
        except Exception as exc:
            if not is_unavailable(exc):
                raise

    def remember_decision(self, event_id: str, decision: ShownDecision) -> None:
        self.decisions[event_id] = decision
        while len(self.decisions) > RECENT_DECISIONS:
            self.decisions.popitem(last=False)

    def memory(self) -> dict[str, Held]:
        """What each of this worker's caches holds (``slatebandit.memory``); every one is
        bounded, its limit beside it."""
        catalog = self.store.catalog
        columns = (catalog.item_ids, catalog.titles, catalog.features)
        return {
            "shoppers": self.users.memory(),
            "decisions": held(self.decisions),
            "neighbours": self.store.index.memory(),
            "strings": Held.total(column.memory() for column in columns),
            "rotation": self.rotation.memory(),
            "bought_together": self.together.memory(),
            "filter_masks": self.filter_masks.memory(),
        }

    async def shown_decision(self, event_id: str) -> ShownDecision | None:
        """The decision behind ``event_id``; read from the database if another process made it
        (unless the database is away: then only this worker's recent decisions are known)."""
        decision = self.decisions.get(event_id)
        stale = decision is None or decision.decision_id == SPOOLED  # it may have shipped
        if stale and not self.outage.degraded:
            found = await self.outage.in_time(
                self.point_read(lambda conn: shown_decision(conn, event_id))
            )
            if found is not None:
                self.remember_decision(event_id, found)
                decision = found
        return decision

    async def read(self, query: Callable[[Connection], T], *, point: bool = False) -> T:
        """Run a read-only ``query`` on a worker thread, off the event loop (with ``point``,
        outside a transaction)."""
        try:
            return await asyncio.to_thread(self._run, query, point)
        except Exception as exc:
            if is_unavailable(exc):
                raise _unreachable(exc) from exc
            raise

    async def point_read(self, query: Callable[[Connection], T]) -> T:
        """A read of a row or two by key (a shopper's state, a decision). On SQLite it runs
        here, on the event loop: in WAL mode a reader never waits for the writer, and the hop
        to a thread and back cost several times the read itself (a slate's state read took
        330 µs through a thread, 21 µs of it SQL). Elsewhere it is ``read``, outside a
        transaction and from a pool without the ping (``engine.point_reader``). A shopper's
        state is read by ``user_reader`` instead, where there is one."""
        if self.engine.dialect.name != "sqlite":
            return await self.read(query, point=True)
        try:
            return self._run(query)
        except Exception as exc:
            if is_unavailable(exc):
                raise _unreachable(exc) from exc
            raise

    def _run(self, query: Callable[[Connection], T], point: bool = False) -> T:
        if point:
            return read_retrying(self.point_engine, query)
        with self.engine.connect() as conn:
            return query(conn)

    def observation(
        self, user_id: str, key: int, kind: str, now: float
    ) -> Callable[[Connection], tuple[int, bytes]]:
        """A unit of work that folds one user action into the user's stored state."""
        catalog, index = self.store.catalog, self.store.index
        live, vectors = index.live_vectors([key])
        vector = vectors[0] if len(live) else None
        category = catalog.category_names[catalog.category[key]]
        brand = catalog.brand_names[catalog.brand[key]]
        half_life = self.settings.taste_half_life

        def observed(old: bytes | None) -> bytes:
            state = UserState() if old is None else UserState.from_bytes(old)
            state.observe(key, kind, vector, now, category, brand, half_life)
            return state.to_bytes()

        return lambda conn: update_user_state(conn, user_id, observed)

    def remember_state(self, user_id: str, stored: tuple[int, bytes]) -> None:
        """Cache the state an observation stored (its version and bytes)."""
        self.users.put(user_id, stored[0], UserState.from_bytes(stored[1]), len(stored[1]))

    def apply(self, effects: Effects) -> None:
        """Bring this worker's memory in step with feedback just committed (live or shipped)."""
        for event_id, decision_id in effects.ids.items():
            cached = self.decisions.get(event_id)
            if cached is not None and cached.decision_id == SPOOLED:
                self.decisions[event_id] = ShownDecision(
                    decision_id, cached.item_keys, cached.user_id, cached.context
                )
        for user_id, state in effects.states:
            self.remember_state(user_id, state)
        catalog = self.store.catalog
        for key, weight, at in effects.popularity:
            catalog.bump_popularity(key, weight, at)
        for context, key, reward in effects.context:
            catalog.bump_context(context_tokens(context), key, reward)

    def load_impressions(self) -> None:
        with self.engine.connect() as conn:
            counts = impression_counts(conn)
        catalog = self.store.catalog
        for key, n in counts.items():
            if key < len(catalog.impressions):
                catalog.add_impressions(key, n)


def _unreachable(exc: Exception) -> DatabaseUnavailable:
    return DatabaseUnavailable(f"database: unreachable ({type(exc).__name__})", field="database")
