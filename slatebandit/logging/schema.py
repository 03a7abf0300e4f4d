"""The SQL schema: items and their revisions, decisions and shown slots, rewards, user events.

A decision keeps what replay needs to recompute any policy's propensities: the context, the
candidates as *item revisions* (so the features the scorer saw are exact even after an item
changes), each candidate's generator flags and bands, and what rules did, msgpack-encoded and
compressed in ``payload`` (see ``slatebandit.logging.records``). Shown slots are rows of their
own so rewards can join them. Items are referenced by their integer ``key`` everywhere but in
``items`` itself.

These tables are SQLite's as written. On PostgreSQL ``decisions``, ``slots``, ``rewards`` and
``events`` are partitioned by day and made by the DDL in ``logging.partitions``, with the same
columns (a test compares them) but keys the partitions allow.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()
SCHEMA_VERSION = 8  # bump on any change to the tables below (with a step in engine.MIGRATIONS)
# BIGINT on PostgreSQL; SQLite only autoincrements a column declared INTEGER.
_BigId = BigInteger().with_variant(Integer, "sqlite")

# The current state of each item. ``key`` is the item's stable integer label in the HNSW index;
# ``rev`` points at the latest revision and grows with every change, deletes included, so
# "changes since rev R" is one indexed query.
items = Table(
    "items",
    metadata,
    Column("key", Integer, primary_key=True, autoincrement=True),
    Column("item_id", String(128), nullable=False, unique=True),
    Column("title", String(512), nullable=False, default=""),
    Column("category", String(128), nullable=False, default=""),
    Column("brand", String(128), nullable=False, default=""),
    Column("price", Float, nullable=True),
    Column("attributes", JSON, nullable=False, default=dict),
    Column("available", Boolean, nullable=False, default=True),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("rev", BigInteger, nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Append-only snapshots of the fields that features are built from.
item_revisions = Table(
    "item_revisions",
    metadata,
    Column("rev", _BigId, primary_key=True, autoincrement=True),
    Column("key", Integer, ForeignKey("items.key"), nullable=False),
    Column("snapshot", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

# Decisions are referenced by an integer id inside the database: the 32-character event id the
# API speaks is stored once, here, not in every slot and reward row (it keeps a decision with
# k=10 under the 2 KB budget on PostgreSQL, where it is not unique by index: partitions).
decisions = Table(
    "decisions",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("event_id", String(32), nullable=False, unique=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("user_id", String(128), nullable=False),
    Column("policy", String(64), nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    # The A/B experiment and arm that chose the policy; NULL outside any experiment.
    Column("experiment", String(64), nullable=True),
    Column("arm", String(64), nullable=True),
    # Where the slate was shown: home, item, cart or category (``recommender.placements``).
    Column("placement", String(16), nullable=False, default="home", server_default="home"),
)
Index("ix_decisions_experiment", decisions.c.experiment, decisions.c.arm)
# The gate's held-out window reads one champion's newest decisions: without it, a champion
# young enough to have few of them made the query walk the whole log back to id 0.
Index("ix_decisions_model_version", decisions.c.model_version, decisions.c.id)

slots = Table(
    "slots",
    metadata,
    Column("decision_id", _BigId, ForeignKey("decisions.id"), nullable=False),
    Column("slot", SmallInteger, nullable=False),
    Column("item_key", Integer, ForeignKey("items.key"), nullable=False),
    Column("propensity", Float, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("source", String(8), nullable=False),
    Column("score", Float, nullable=False),
    PrimaryKeyConstraint("decision_id", "slot"),
)

rewards = Table(
    "rewards",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("decision_id", _BigId, ForeignKey("decisions.id"), nullable=False),
    Column("item_key", Integer, ForeignKey("items.key"), nullable=False),
    Column("type", String(32), nullable=False),
    Column("reward", Float, nullable=False),
    # What the action was worth in money (a purchase's amount); NULL when the reward gave none.
    Column("value", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("decision_id", "item_key", "type", name="uq_rewards_once"),
)

events = Table(
    "events",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("user_id", String(128), nullable=False),
    Column("item_key", Integer, ForeignKey("items.key"), nullable=False),
    Column("type", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    # Set by the API: an event spooled after its commit's answer was lost is not stored twice.
    Column("ref", String(32), nullable=True),
)
Index("ix_events_user", events.c.user_id, events.c.id)
Index("ux_events_ref", events.c.ref, unique=True)

# Each user's online state (recent items, acted-on items, counters, session vector), msgpack
# (``retrieval.UserState``), updated in the transaction of every event.
user_states = Table(
    "user_states",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("state", LargeBinary, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# The model registry. A version is a checkpoint of the learner: its VW arguments and bytes, and
# the decision id up to which it has learned every shown slot (``learned_through``). Writing
# the bytes and that watermark in one row is what makes learning exactly-once across crashes.
model_versions = Table(
    "model_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=True),
    Column("parent", Integer, ForeignKey("model_versions.version"), nullable=True),
    Column("vw_args", String(1024), nullable=False),
    Column("feature_spec", Integer, nullable=False),
    Column("examples", BigInteger, nullable=False),  # learned by this lineage in total
    Column("learned_through", _BigId, nullable=False),  # last decision id learned
    Column("created_at", Float, nullable=False),
    Column("model", LargeBinary, nullable=False),
    # Apprentice mode: of the decisions this checkpoint learned, how many it compared with the
    # serving policy's first slot, and how often its own top candidate was that item.
    Column("compared", BigInteger, nullable=False, default=0, server_default="0"),
    Column("agreed", BigInteger, nullable=False, default=0, server_default="0"),
)

# The promotion gate's verdict on each version it judged: promoted, or kept as a challenger
# and why (``replay.gate``).
model_gates = Table(
    "model_gates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version", Integer, ForeignKey("model_versions.version"), nullable=False, index=True),
    Column("champion", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("promoted", Boolean, nullable=False),
    Column("reason", String(512), nullable=False),
    Column("details", JSON, nullable=False),
    # Which step of a release spoke: guard (offline, before a canary), canary, watch (after a
    # promotion) or manual; and what it said: promote, reject, canary, rollback, keep, wait.
    Column("stage", String(16), nullable=False, default="guard", server_default="guard"),
    Column("outcome", String(16), nullable=False, default="", server_default=""),
)

# Each canary: a version serving ``share`` of the shoppers beside ``champion`` from decision
# ``first_decision`` on (``policies.canary``, ``replay.release``). ``stats`` holds the running
# moments of each arm's per-slot reward over the decisions counted so far (through
# ``counted_through``), so each turn reads only new decisions; after a promotion the watch
# keeps the new champion's live moments the same way (``watch_*``).
canaries = Table(
    "canaries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version", Integer, ForeignKey("model_versions.version"), nullable=False),
    Column("champion", Integer, nullable=False),
    Column("share", Float, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("first_decision", BigInteger, nullable=False),
    # running, promoted, rejected, or superseded (the champion changed under it)
    Column("status", String(16), nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("counted_through", BigInteger, nullable=False),
    Column("stats", JSON, nullable=False),
    # after a promotion: watching, kept, or rolled_back
    Column("watch", String(16), nullable=True),
    Column("watch_from", BigInteger, nullable=True),
    Column("watch_through", BigInteger, nullable=True),
    Column("watch_stats", JSON, nullable=True),
)
Index("ix_canaries_status", canaries.c.status)

# Which version serves: the latest row wins. Rollback promotes the one before again.
promotions = Table(
    "promotions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version", Integer, ForeignKey("model_versions.version"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("reason", String(256), nullable=False),
)

# At most one learner at a time, across processes: a lease that its holder renews.
leases = Table(
    "leases",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Each user's batch features (purchase count, category affinities, price band), written by the
# embedding job as VW tokens (msgpack list), read beside ``user_states`` by every slate.
user_profiles = Table(
    "user_profiles",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("features", LargeBinary, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Collaborative item vectors (``retrieval.collab``): one row per training run, and each item's
# vector and interaction count in that run. Serving blends them with content vectors.
embedding_versions = Table(
    "embedding_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=True),
    Column("created_at", Float, nullable=False),
    Column("method", String(16), nullable=False),
    Column("interactions", BigInteger, nullable=False),
    Column("items", Integer, nullable=False),
    Column("seconds", Float, nullable=False),
)

item_factors = Table(
    "item_factors",
    metadata,
    Column("version", Integer, ForeignKey("embedding_versions.version"), nullable=False),
    Column("key", Integer, nullable=False),
    Column("count", Float, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    PrimaryKeyConstraint("version", "key"),
)

# Replay runs requested over HTTP: the request, progress while it runs (``updated_at`` is the
# heartbeat of the worker running it), then the report or the error.
evaluations = Table(
    "evaluations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("status", String(16), nullable=False),  # running | done | failed
    Column("phase", String(32), nullable=False, default=""),
    Column("done", BigInteger, nullable=False, default=0),
    Column("total", BigInteger, nullable=False, default=0),
    Column("request", JSON, nullable=False),
    Column("result", JSON, nullable=True),
    Column("error", String(2048), nullable=True),
)

# A/B experiments. Users are hashed with the experiment's salt into BUCKETS buckets and
# ``allocation`` holds one arm index per bucket (``policies.experiments``): changing the shares
# moves only the buckets an arm must give up or take.
experiments = Table(
    "experiments",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("salt", String(32), nullable=False),
    Column("arms", JSON, nullable=False),  # [{"name", "policy", "share"}]
    Column("control", String(64), nullable=False),
    Column("allocation", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),  # running | stopped
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Personalizer-compatible loops (``slatebandit.personalizer``). The caller supplies each
# event's actions with their features, so these are not catalog items: an event keeps the
# context and every action as the VW text the scorer saw (msgpack ``payload``: see
# ``personalizer.events``), which is what learning and evaluation replay.
pz_loops = Table(
    "pz_loops",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("service", JSON, nullable=False),
    Column("policy", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

pz_events = Table(
    "pz_events",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("loop", String(64), nullable=False),
    Column("event_id", String(256), nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    Column("activated", Boolean, nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    UniqueConstraint("loop", "event_id", name="uq_pz_events_id"),
    # A learner's progress is an event id: SQLite must never hand out an id again after the
    # newest events are deleted (DELETE logs, retention), or new events would look learned.
    sqlite_autoincrement=True,
)
Index("ix_pz_events_loop", pz_events.c.loop, pz_events.c.id)

# Rewards add up (or the earliest counts: the loop's rewardAggregation), so none is unique.
pz_rewards = Table(
    "pz_rewards",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("event", _BigId, ForeignKey("pz_events.id", ondelete="CASCADE"), nullable=False),
    Column("slot", SmallInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    sqlite_autoincrement=True,  # ids order rewards by arrival ("earliest"), even after deletes
)
Index("ix_pz_rewards_event", pz_rewards.c.event)

# Each loop's model versions: checkpoints of its learner, imports and resets. The newest row
# serves; ``learned_through`` is the last event id its lineage has learned (exactly once, as
# ``model_versions``).
pz_models = Table(
    "pz_models",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=True),
    Column("loop", String(64), nullable=False, index=True),
    Column("parent", Integer, nullable=True),
    Column("origin", String(16), nullable=False),  # learned | imported | reset
    Column("vw_args", String(1024), nullable=False),
    Column("examples", BigInteger, nullable=False),
    Column("learned_through", _BigId, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("model", LargeBinary, nullable=False),
    # Apprentice mode, over the events this version learned: how many it compared with the
    # baseline, how often its first choice was the baseline, and the baseline's rewards in all
    # of them and in those it agreed on.
    Column("compared", BigInteger, nullable=False, default=0),
    Column("agreed", BigInteger, nullable=False, default=0),
    Column("rewards", Float, nullable=False, default=0.0),
    Column("agreed_rewards", Float, nullable=False, default=0.0),
)

# Personalizer evaluations: the request, then the result (policy estimates) or the error.
pz_evaluations = Table(
    "pz_evaluations",
    metadata,
    Column("loop", String(64), nullable=False),
    Column("id", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("status", String(16), nullable=False),  # running | succeeded | failed
    Column("request", JSON, nullable=False),
    Column("result", JSON, nullable=True),
    Column("error", String(2048), nullable=True),
    PrimaryKeyConstraint("loop", "id"),
)

# How far each spool segment (``logging.spool``) has been shipped into this database, written in
# the transaction that ships its records: a crash mid-shipping never ships a record twice.
# Decisions and the rest ship in two passes (see ``recommender.outage``), each with its own offset.
spool_progress = Table(
    "spool_progress",
    metadata,
    Column("segment", String(128), primary_key=True),
    Column("decisions", BigInteger, nullable=False),
    Column("others", BigInteger, nullable=False),
)

# Rewards shipped from a spool before their decision: they wait here, and move into
# ``rewards`` in the transaction that ships the decision (another machine's spool may hold it).
spool_orphans = Table(
    "spool_orphans",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("event_id", String(32), nullable=False, index=True),
    Column("item_key", Integer, nullable=False),
    Column("type", String(32), nullable=False),
    Column("reward", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("parked_at", Float, nullable=False),
    Column("value", Float, nullable=True),
)

# Shoppers erased by DELETE /v1/users, as a SHA-256 of the stored user id: a record of theirs
# made before the erasure and shipped from a spool afterwards is dropped, not stored again.
erased_users = Table(
    "erased_users",
    metadata,
    Column("user_hash", String(64), primary_key=True),
    Column("erased_at", Float, nullable=False),
)

# Merchandising rules, append-only: every PUT and DELETE adds a version (a DELETE's body is
# NULL). The active rules are each name's latest version with a body; workers poll the largest
# id to notice a change (``merchandising``). A decision logs the versions it applied.
rule_versions = Table(
    "rule_versions",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("body", JSON(none_as_null=True), nullable=True),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("name", "version", name="uq_rule_versions"),
)

# The machines that serve from this database and what their spools hold (``logging.machines``):
# a reward for a decision the database does not know is parked, not refused, while some
# machine may still ship it. ``spooling_since``: when its oldest unshipped segment was started.
machines = Table(
    "machines",
    metadata,
    Column("machine_id", String(32), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("spool_dir", String(1024), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("seen_at", Float, nullable=False),
    Column("spooling_since", Float, nullable=True),
    Column("spool_bytes", BigInteger, nullable=False, default=0),
    Column("recovered_at", Float, nullable=True),
    Column("stopped_at", Float, nullable=True),
)

schema_info = Table(
    "schema_info",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", Integer, nullable=False),
)
