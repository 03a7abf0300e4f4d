"""Settings: read once, from ``SLATEBANDIT_*`` environment variables and CLI flags.

Every setting is declared once in ``Settings`` with its type, default and a one-line doc in the
field metadata; the README's configuration table is generated from the same declarations
(``slatebandit config --markdown``), and a test keeps the two in step. A malformed value fails at
start with the variable's name.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slatebandit.errors import ConfigError

ENV_PREFIX = "SLATEBANDIT_"
SCOPES = ("serve", "catalog", "analyst", "admin")
EXPLORATION_KINDS = ("epsilon", "squarecb", "softmax")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata=_doc("address to bind"))
    port: int = field(default=8000, metadata=_doc("port to bind"))
    workers: int = field(default=1, metadata=_doc("uvicorn worker processes"))
    data_dir: Path = field(
        default=Path("var"), metadata=_doc("directory for the SQLite database and index files")
    )
    db_url: str = field(
        default="",
        metadata=_doc("SQLAlchemy URL; empty means SQLite at DATA_DIR/slatebandit.db"),
    )
    api_keys: str = field(
        default="",
        metadata=_doc(
            "comma-separated `scope:key` (scopes serve, catalog, analyst, admin); "
            "empty runs open, loopback only"
        ),
    )
    user_id_key: str = field(
        default="",
        metadata=_doc(
            "secret for pseudonymising user ids (HMAC-SHA256) before anything is stored; "
            "empty stores them as given"
        ),
    )
    retention_days: float = field(
        default=0.0,
        metadata=_doc(
            "days decisions, rewards and events are kept (purged at start and hourly); "
            "0 keeps them for ever"
        ),
    )
    rate_limit: float = field(
        default=0.0,
        metadata=_doc("requests a second each API key may make, per worker; 0: no limit"),
    )
    rate_burst: int = field(
        default=0,
        metadata=_doc("requests a key may make at once above its rate; 0: one second's worth"),
    )
    spool_dir: str = field(
        default="",
        metadata=_doc(
            "where records go while the database is unreachable, until shipped; "
            "empty means DATA_DIR/spool (one directory per machine, shared by its workers)"
        ),
    )
    spool_max_mb: float = field(
        default=1024.0,
        metadata=_doc(
            "most the spool may hold; past it slates are served unlogged, and rewards and "
            "events get 503"
        ),
    )
    db_probe_seconds: float = field(
        default=1.0,
        metadata=_doc("how often each worker checks that the database answers"),
    )
    db_timeout_seconds: float = field(
        default=5.0,
        metadata=_doc(
            "a slate, reward or event whose write or read takes longer is spooled instead"
        ),
    )
    candidates: int = field(default=200, metadata=_doc("candidates per slate (N)"))
    default_k: int = field(default=10, metadata=_doc("slate size when the request omits k"))
    max_k: int = field(default=50, metadata=_doc("largest k a request may ask for"))
    policy: str = field(
        default="vw",
        metadata=_doc(
            "what serves shoppers outside an experiment: a policy SPEC (README, Policies)"
        ),
    )
    exploration: str = field(
        default="epsilon", metadata=_doc("exploit-slot pmf: epsilon, squarecb or softmax")
    )
    epsilon: float = field(default=0.05, metadata=_doc("epsilon-greedy exploration rate, (0, 1]"))
    gamma: float = field(default=50.0, metadata=_doc("SquareCB learning-rate parameter, > 0"))
    temperature: float = field(default=0.1, metadata=_doc("softmax temperature, > 0"))
    explore_slots: tuple[int, ...] = field(
        default=(4, 9), metadata=_doc("slots reserved for exploration (0-based, comma-separated)")
    )
    diverse_slots: tuple[int, ...] = field(
        default=(2, 7), metadata=_doc("slots reserved for a category not yet in the slate")
    )
    hnsw_ef: int = field(
        default=64,
        metadata=_doc("HNSW search breadth; higher is slower and closer to exact"),
    )
    taste_half_life: float = field(
        default=10.0,
        metadata=_doc(
            "a shopper's actions after which their earlier category and brand counts weigh "
            "half (0: never fade)"
        ),
    )
    fresh_impressions: int = field(
        default=50, metadata=_doc("items shown fewer times than this count as fresh")
    )
    rotation_rate: float = field(
        default=0.1,
        metadata=_doc(
            "score an item loses per impression to a shopper who did not act on it, as a "
            "share of the slate's spread (0: no rotation)"
        ),
    )
    rotation_time: float = field(
        default=3600.0,
        metadata=_doc("seconds after which an impression counts half towards rotation"),
    )
    vw_args: str = field(
        default="--cb_adf --cb_type dm -q ui -q ci -b 20 --power_t 0 -l 0.05",
        metadata=_doc("Vowpal Wabbit arguments of the scoring model"),
    )
    commit_batch: int = field(
        default=512, metadata=_doc("most requests that share one group commit")
    )
    max_body_bytes: int = field(default=1_048_576, metadata=_doc("largest request body accepted"))
    body_timeout_seconds: float = field(
        default=30.0, metadata=_doc("a request body must arrive within this time, else 408")
    )
    catalog_poll_seconds: float = field(
        default=1.0, metadata=_doc("how often catalog changes made elsewhere are picked up")
    )
    learner: str = field(
        default="embedded",
        metadata=_doc(
            "embedded: `serve` learns beside serving, in a child process at low priority; "
            "off: run `slatebandit learn`"
        ),
    )
    reward_wait: float = field(
        default=600.0, metadata=_doc("seconds a decision waits for rewards before it is learned")
    )
    reward_table: str = field(
        default="click:1,add_to_cart:1,purchase:1",
        metadata=_doc("reward of each event type when a reward omits its value (`type:value`)"),
    )
    reward_aggregation: str = field(
        default="sum", metadata=_doc("rewards of one slot: sum, or the earliest only")
    )
    default_reward: float = field(
        default=0.0, metadata=_doc("reward of a shown slot that got none")
    )
    objective: str = field(
        default="clicks",
        metadata=_doc(
            "what the learner maximises: clicks (each reward's `reward`) or revenue (each "
            "reward's `reward` plus its money `value` divided by REVENUE_SCALE)"
        ),
    )
    revenue_scale: float = field(
        default=0.0,
        metadata=_doc(
            "with OBJECTIVE=revenue, the money a reward of 1 stands for; 0: the median price "
            "of the available items, read as each learner or replay starts"
        ),
    )
    exclude_events: str = field(
        default="purchase",
        metadata=_doc(
            "keep items out of a user's slates after these events (`type` for ever, "
            "`type:30d` for a window in s, m, h or d)"
        ),
    )
    embedding_interval: float = field(
        default=3600.0,
        metadata=_doc("seconds between collaborative-embedding trainings inside serve (0: off)"),
    )
    embedding_method: str = field(
        default="svd", metadata=_doc("collaborative embeddings: svd (co-occurrence) or als")
    )
    embedding_weights: str = field(
        default="view:0.25,click:1,add_to_cart:2,purchase:4",
        metadata=_doc("weight of each event type in the embedding job (`type:weight`)"),
    )
    learner_lease_seconds: float = field(
        default=30.0,
        metadata=_doc(
            "how long the learner's database lease lasts unrenewed: after a crash, another "
            "process takes over learning this much later"
        ),
    )
    learn_batch: int = field(default=500, metadata=_doc("decisions the learner reads at a time"))
    checkpoint_every: int = field(
        default=10_000, metadata=_doc("learned examples between model checkpoints")
    )
    checkpoint_seconds: float = field(
        default=60.0, metadata=_doc("seconds between checkpoints while there is anything new")
    )
    keep_models: int = field(
        default=20,
        metadata=_doc(
            "checkpoints whose model is kept, with as many latest champions and what canaries "
            "and experiments serve; older ones keep their row (0: keep every model)"
        ),
    )
    promotion: str = field(
        default="gated",
        metadata=_doc(
            "how a checkpoint becomes champion: gated (an offline guard, then a canary "
            "judged live by a confidence sequence, then a watch), always, or manual"
        ),
    )
    canary_share: float = field(
        default=0.25,
        metadata=_doc(
            "with gated promotion, share of shoppers (outside experiments) the newest "
            "checkpoint serves beside the champion while it is judged, in (0, 0.5]"
        ),
    )
    canary_slates: int = field(
        default=300,
        metadata=_doc(
            "canary slates after which a canary with no evidence of harm is promoted "
            "(the most a verdict waits for)"
        ),
    )
    gate_holdout_every: int = field(
        default=10,
        metadata=_doc(
            "with gated promotion, every Nth decision (by id) is never learned: the gate "
            "replays them"
        ),
    )
    gate_decisions: int = field(
        default=2000, metadata=_doc("most recent held-out decisions the gate replays")
    )
    gate_min_decisions: int = field(
        default=200, metadata=_doc("fewer held-out decisions than this: the gate waits")
    )
    gate_estimator: str = field(
        default="dr", metadata=_doc("the replay estimator the gate compares with: dr, snips or ips")
    )
    gate_min_coverage: float = field(
        default=0.8,
        metadata=_doc(
            "the gate judges a version only if its mean importance weight on the champion's "
            "decisions is within [C, 1/C] (1: the champion's logs show all it would do)"
        ),
    )
    gate_margin: float = field(
        default=0.05,
        metadata=_doc(
            "how much worse than the champion (a share of its value) still counts as no "
            "worse: for the guard, the canary and the watch"
        ),
    )
    learning_mode: str = field(
        default="online",
        metadata=_doc(
            "online, or apprentice: learn from the serving policy's logs, report agreement "
            "with it, never promote"
        ),
    )
    popular_refresh_seconds: float = field(
        default=2.0, metadata=_doc("how often the popular-items ranking is recomputed")
    )
    model_poll_seconds: float = field(
        default=2.0, metadata=_doc("how often serving checks the registry for a new champion")
    )
    seed: int | None = field(
        default=None, metadata=_doc("seed of the slate sampler (empty: from the OS)")
    )
    log_level: str = field(default="info", metadata=_doc("debug, info, warning or error"))
    access_log: bool = field(
        default=False,
        metadata=_doc("log a line per request (uvicorn's access log; 2% of a slate's CPU)"),
    )
    keepalive_requests: int = field(
        default=100,
        metadata=_doc(
            "requests a keep-alive connection serves before its answer says `Connection: "
            "close`, so clients reconnect to the idler worker; 0 keeps connections open"
        ),
    )
    personalizer_loops: str = field(
        default="default",
        metadata=_doc(
            "comma-separated Personalizer loops; `default` answers at /personalizer, "
            "the others at /loops/NAME/personalizer"
        ),
    )
    personalizer_max_actions: int = field(
        default=500, metadata=_doc("most actions a Personalizer rank may carry")
    )

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'slatebandit.db'}"

    @property
    def spool_path(self) -> Path:
        return Path(self.spool_dir) if self.spool_dir else self.data_dir / "spool"

    @property
    def spool_max_bytes(self) -> int:
        return int(self.spool_max_mb * 1024 * 1024)

    @property
    def loops(self) -> tuple[str, ...]:
        """The Personalizer loops, from ``personalizer_loops``."""
        return tuple(
            dict.fromkeys(n.strip() for n in self.personalizer_loops.split(",") if n.strip())
        )

    @property
    def rewards(self) -> dict[str, float]:
        """Event type -> reward, from ``reward_table``."""
        table = {}
        for entry in filter(None, (e.strip() for e in self.reward_table.split(","))):
            name, sep, value = entry.partition(":")
            try:
                table[name.strip()] = float(value)
            except ValueError:
                sep = ""
            if not sep or not name.strip():
                raise ConfigError(
                    f"{ENV_PREFIX}REWARD_TABLE entry {entry!r} must look like type:number",
                    field="reward_table",
                )
        return table

    @property
    def interaction_weights(self) -> dict[str, float]:
        """Event type -> weight in the embedding job, from ``embedding_weights``."""
        weights = {}
        for entry in filter(None, (e.strip() for e in self.embedding_weights.split(","))):
            kind, _, value = entry.partition(":")
            try:
                weight = float(value)
            except ValueError:
                weight = -1.0
            if kind.strip() not in ("view", "click", "add_to_cart", "purchase") or weight < 0:
                raise ConfigError(
                    f"{ENV_PREFIX}EMBEDDING_WEIGHTS entry {entry!r} must look like click:1 "
                    "(types view, click, add_to_cart, purchase; weights >= 0)",
                    field="embedding_weights",
                )
            weights[kind.strip()] = weight
        return weights

    @property
    def exclusions(self) -> dict[str, float | None]:
        """Event type -> seconds an item stays out of the user's slates (None: for ever)."""
        units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
        rules: dict[str, float | None] = {}
        for entry in filter(None, (e.strip() for e in self.exclude_events.split(","))):
            kind, sep, window = entry.partition(":")
            window = window.strip()
            seconds: float | None = None
            ok = kind.strip() in ("view", "click", "add_to_cart", "purchase")
            if ok and sep:
                try:
                    seconds = float(window[:-1]) * units[window[-1]]
                except (ValueError, KeyError, IndexError):
                    ok = False
            if not ok:
                raise ConfigError(
                    f"{ENV_PREFIX}EXCLUDE_EVENTS entry {entry!r} must look like purchase or "
                    "purchase:30d (types view, click, add_to_cart, purchase)",
                    field="exclude_events",
                )
            rules[kind.strip()] = seconds
        return rules

    @property
    def keys(self) -> dict[str, frozenset[str]]:
        """API key -> scopes it grants."""
        return parse_api_keys(self.api_keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``SLATEBANDIT_*`` variables; non-None ``overrides`` (CLI flags) win."""
        environ = os.environ if environ is None else environ
        if ENV_PREFIX + "AUTO_PROMOTE" in environ:  # replaced in schema 3; never ignore it
            raise ConfigError(
                f"{ENV_PREFIX}AUTO_PROMOTE was replaced by {ENV_PREFIX}PROMOTION: gated "
                "(the default), always (AUTO_PROMOTE=true) or manual (AUTO_PROMOTE=false)",
                field="promotion",
            )
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if overrides.get(f.name) is not None:
                values[f.name] = _cast(f, overrides[f.name], f"--{f.name.replace('_', '-')}")
            elif name in environ:
                values[f.name] = _cast(f, environ[name], name)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} {what}", field=name)

        need(1 <= self.port <= 65535, "port", "must be a port number")
        need(self.workers >= 1, "workers", "must be at least 1")
        need(self.keepalive_requests >= 0, "keepalive_requests", "must be >= 0 (0: never close)")
        need(self.candidates >= 1, "candidates", "must be at least 1")
        need(self.hnsw_ef >= 1, "hnsw_ef", "must be at least 1")
        need(self.taste_half_life >= 0, "taste_half_life", "must be >= 0 (0: never fade)")
        need(1 <= self.default_k <= self.max_k, "default_k", "must be in 1..MAX_K")
        need(
            self.exploration in EXPLORATION_KINDS,
            "exploration",
            f"must be one of {EXPLORATION_KINDS}",
        )
        need(0 < self.epsilon <= 1, "epsilon", "must be in (0, 1]: every candidate needs p > 0")
        need(self.gamma > 0, "gamma", "must be > 0")
        need(self.temperature > 0, "temperature", "must be > 0")
        need(all(s >= 0 for s in self.explore_slots), "explore_slots", "must be >= 0")
        need(all(s >= 0 for s in self.diverse_slots), "diverse_slots", "must be >= 0")
        need(
            not set(self.explore_slots) & set(self.diverse_slots),
            "diverse_slots",
            "must not share a slot with EXPLORE_SLOTS",
        )
        need("--cb_adf" in self.vw_args.split(), "vw_args", "must contain --cb_adf")
        need(self.commit_batch >= 1, "commit_batch", "must be at least 1")
        need(self.max_body_bytes >= 1024, "max_body_bytes", "must be at least 1024")
        need(self.catalog_poll_seconds > 0, "catalog_poll_seconds", "must be > 0")
        need(0 <= self.rotation_rate < 1, "rotation_rate", "must be >= 0 and < 1")
        need(0 < self.rotation_time < float("inf"), "rotation_time", "must be > 0")
        need(self.model_poll_seconds > 0, "model_poll_seconds", "must be > 0")
        need(self.popular_refresh_seconds > 0, "popular_refresh_seconds", "must be > 0")
        need(self.learner in ("embedded", "off"), "learner", "must be embedded or off")
        need(
            all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", n) for n in self.loops),
            "personalizer_loops",
            "must be names of 1 to 64 letters, digits, '-' or '_'",
        )
        need(self.personalizer_max_actions >= 1, "personalizer_max_actions", "must be at least 1")
        need(
            0 <= self.rate_limit < float("inf"), "rate_limit", "must be a number >= 0 (0: no limit)"
        )
        need(self.rate_burst >= 0, "rate_burst", "must be >= 0")
        need(0 < self.body_timeout_seconds < float("inf"), "body_timeout_seconds", "must be > 0")
        need(
            2 <= self.learner_lease_seconds < float("inf"),
            "learner_lease_seconds",
            "must be at least 2 (the embedded learner renews it every second)",
        )
        need(
            0 <= self.retention_days < float("inf"),
            "retention_days",
            "must be a number of days >= 0 (0: keep for ever)",
        )
        need(self.reward_wait >= 0, "reward_wait", "must be >= 0")
        need(0 < self.spool_max_mb < float("inf"), "spool_max_mb", "must be > 0")
        need(0 < self.db_probe_seconds < float("inf"), "db_probe_seconds", "must be > 0")
        need(0 < self.db_timeout_seconds < float("inf"), "db_timeout_seconds", "must be > 0")
        need(
            self.reward_aggregation in ("sum", "earliest"),
            "reward_aggregation",
            "must be sum or earliest",
        )
        need(self.objective in ("clicks", "revenue"), "objective", "must be clicks or revenue")
        need(
            0 <= self.revenue_scale < float("inf"),
            "revenue_scale",
            "must be a number >= 0 (0: the catalog's median price)",
        )
        need(self.checkpoint_every >= 1, "checkpoint_every", "must be at least 1")
        need(self.learn_batch >= 1, "learn_batch", "must be at least 1")
        need(self.checkpoint_seconds > 0, "checkpoint_seconds", "must be > 0")
        need(self.keep_models >= 0, "keep_models", "must be >= 0 (0: keep every model)")
        need(
            self.promotion in ("gated", "always", "manual"),
            "promotion",
            "must be gated, always or manual",
        )
        need(self.gate_holdout_every >= 2, "gate_holdout_every", "must be at least 2")
        need(self.gate_decisions >= 1, "gate_decisions", "must be at least 1")
        need(self.gate_min_decisions >= 2, "gate_min_decisions", "must be at least 2")
        need(
            self.gate_estimator in ("ips", "snips", "dr"),
            "gate_estimator",
            "must be ips, snips or dr",
        )
        need(0 <= self.gate_margin < 1, "gate_margin", "must be in [0, 1)")
        need(0 < self.gate_min_coverage <= 1, "gate_min_coverage", "must be in (0, 1]")
        need(0 < self.canary_share <= 0.5, "canary_share", "must be in (0, 0.5]")
        need(self.canary_slates >= 50, "canary_slates", "must be at least 50")
        need(
            self.learning_mode in ("online", "apprentice"),
            "learning_mode",
            "must be online or apprentice",
        )
        self.rewards  # noqa: B018 - parse now so a malformed table fails at start
        self.exclusions  # noqa: B018
        self.interaction_weights  # noqa: B018
        need(self.embedding_interval >= 0, "embedding_interval", "must be >= 0 (0: off)")
        need(self.embedding_method in ("svd", "als"), "embedding_method", "must be svd or als")
        need(
            self.log_level in ("debug", "info", "warning", "error"),
            "log_level",
            "must be debug, info, warning or error",
        )
        self.keys  # noqa: B018 - parse now so a malformed key list fails at start

    def as_env(self) -> dict[str, str]:
        """The settings as environment variables, for worker processes that re-read them."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(str(v) for v in value)
            env[ENV_PREFIX + f.name.upper()] = str(value)
        return env


def parse_api_keys(text: str) -> dict[str, frozenset[str]]:
    keys: dict[str, set[str]] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        scope, sep, key = entry.partition(":")
        if not sep or not key:
            raise ConfigError(
                f"{ENV_PREFIX}API_KEYS entry {entry!r} must look like scope:key", field="api_keys"
            )
        if scope not in SCOPES:
            raise ConfigError(
                f"{ENV_PREFIX}API_KEYS scope {scope!r} must be one of {SCOPES}", field="api_keys"
            )
        keys.setdefault(key, set()).add(scope)
    return {key: frozenset(scopes) for key, scopes in keys.items()}


def _cast(f: dataclasses.Field[Any], raw: Any, name: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if isinstance(raw, str):
            raw = raw.strip()
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "int | None":
            return None if raw in ("", None) else int(raw)
        if kind == "Path":
            return Path(raw)
        if kind == "tuple[int, ...]":
            if isinstance(raw, tuple | list):
                return tuple(int(v) for v in raw)
            return tuple(int(v) for v in raw.split(",") if v.strip())
        return str(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be {kind}, got {raw!r}", field=f.name) from exc


def settings_table() -> str:
    """The configuration table of the README, generated from the declarations."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        shown = "" if default in (None, "") else f"`{default}`"
        rows.append(f"| `{ENV_PREFIX}{f.name.upper()}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(rows)
