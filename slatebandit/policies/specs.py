"""Policy SPECs: how operators, experiments and the decision log name a policy.

    vw                    the learned policy, following the registry's champion
    vw@V                  model version V, pinned (an A/B arm for a challenger)
    popular               the popularity band at decision time
    random                uniform over the candidates still allowed
    content               similarity to the shopper's session
    blend:P=W,P=W,...     a weighted mix of the scores of the policies P (any of the above)

Every policy but ``random`` explores with the configured exploration and slot layout.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any

from sqlalchemy import Engine

from slatebandit.bandit import Exploration, VWScorer
from slatebandit.config import Settings
from slatebandit.errors import InvalidInput
from slatebandit.logging.records import unpack
from slatebandit.policies.base import Policy
from slatebandit.policies.blend import Blend
from slatebandit.policies.registry import load_version
from slatebandit.policies.simple import Content, Popular, Random
from slatebandit.policies.vw import VWPolicy

SIMPLE: dict[str, type[Policy]] = {"popular": Popular, "random": Random, "content": Content}
MAX_SPEC = 64  # the decision log's policy column
MAX_WEIGHT = 1000.0  # blend weights: the logged float16 scores stay finite
VERSION = re.compile(r"vw@[1-9][0-9]{0,8}")  # one spelling per version, within the column
EXPECTED = "vw, vw@VERSION, popular, random, content or blend:P=W,P=W,..."


def parse_spec(spec: str, field: str = "policy") -> list[tuple[str, float]]:
    """A SPEC checked and split: ``[(spec, 1.0)]`` for a single policy, its parts for a blend.

    Raises ``InvalidInput`` naming ``field`` for anything else.
    """
    spec = spec.strip() if isinstance(spec, str) else spec
    if not isinstance(spec, str) or not spec:
        raise InvalidInput(f"{field}: expected a policy ({EXPECTED})", field=field)
    if len(spec) > MAX_SPEC:
        raise InvalidInput(f"{field}: at most {MAX_SPEC} characters", field=field)
    if not spec.startswith("blend:"):
        _check_single(spec, field)
        return [(spec, 1.0)]
    parts: list[tuple[str, float]] = []
    for part in spec[len("blend:") :].split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        try:
            value = float(weight)
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and 0 < value <= MAX_WEIGHT):
            raise InvalidInput(
                f"{field}: blend part {part!r} needs a weight in (0, {MAX_WEIGHT:g}], as in "
                "popular=0.3",
                field=field,
            )
        _check_single(name, field)
        if name in dict(parts):
            raise InvalidInput(f"{field}: {name} appears twice in the blend", field=field)
        parts.append((name, value))
    if len(parts) < 2:
        raise InvalidInput(f"{field}: a blend mixes at least two policies", field=field)
    return parts


def _check_single(spec: str, field: str) -> None:
    if spec == "vw" or spec in SIMPLE or VERSION.fullmatch(spec):
        return
    raise InvalidInput(f"{field}: unknown policy {spec!r}; expected {EXPECTED}", field=field)


class PolicySet:
    """The policies one server can serve, built once per SPEC and shared by its requests.

    ``vw`` and the ``vw`` part of a blend are the champion follower itself, so a promotion
    reaches them all with one swap.
    """

    def __init__(self, settings: Settings, engine: Engine, champion: VWPolicy) -> None:
        self.settings = settings
        self.engine = engine
        self.champion = champion
        self._built: dict[str, Policy] = {"vw": champion}
        self._lock = threading.RLock()  # a blend builds its parts under it
        # The last ended canary's model, kept until the next one ends: a promoted canary's
        # model then becomes the champion's without a second load (``loaded``).
        self._retired: VWScorer | None = None

    @property
    def default(self) -> Policy:
        return self.get(self.settings.policy)

    def get(self, spec: str, field: str = "policy") -> Policy:
        """The policy for ``spec``; loads ``vw@V`` from the registry on first use (a blocking
        read: call it off the event loop the first time, or through ``prepare``)."""
        spec = spec.strip() if isinstance(spec, str) else spec
        found = self._built.get(spec)
        if found is not None:
            return found
        parts = parse_spec(spec, field)
        with self._lock:
            if spec not in self._built:
                self._built[spec] = self._build(spec, parts, field)
            return self._built[spec]

    def is_ready(self, spec: str) -> bool:
        return spec in self._built

    def built(self, spec: str) -> Policy | None:
        """The policy for ``spec`` if it is built already (never reads the registry)."""
        return self._built.get(spec)

    def forget(self, spec: str) -> None:
        """Drop a pinned ``vw@V`` no longer served (an ended canary): each holds a VW model, and
        a canary a minute would otherwise grow every worker by one model a minute."""
        if VERSION.fullmatch(spec):
            with self._lock:
                dropped = self._built.pop(spec, None)
                if isinstance(dropped, VWPolicy):
                    self._retired = dropped.scorer

    def loaded(self, version: int) -> VWScorer | None:
        """A scorer of model ``version`` that this server holds already (a running or the last
        ended canary's), or None. Loading a model holds the GIL for tens of milliseconds, and
        every request of the worker waits that long (benchmarks/soak.py): a promotion should
        not load the model its canary loaded."""
        with self._lock:
            held = [p.scorer for p in self._built.values() if isinstance(p, VWPolicy) and p.pinned]
            if self._retired is not None:
                held.append(self._retired)
        return next((scorer for scorer in held if scorer.version == version), None)

    def _build(self, spec: str, parts: list[tuple[str, float]], field: str) -> Policy:
        s = self.settings
        layout = (exploration_of(s), s.explore_slots, s.diverse_slots)
        if spec.startswith("blend:"):
            return Blend([(self.get(name, field), w) for name, w in parts], *layout, spec=spec)
        if spec in SIMPLE:
            return SIMPLE[spec](*layout)
        with self.engine.connect() as conn:
            scorer = load_version(conn, int(spec[3:]), field)
        return VWPolicy(scorer, *layout, pinned=True)


def exploration_of(settings: Settings) -> Exploration:
    """The exploration the settings configure (serving's, and replay's fallback)."""
    return Exploration(settings.exploration, settings.epsilon, settings.gamma, settings.temperature)


def load_policy(data: bytes) -> Policy:
    """A policy from ``Policy.dump``: the same spec, exploration, layout and model."""
    return _from_config(unpack(data))


def _from_config(config: dict[str, Any]) -> Policy:
    exploration = Exploration.from_log(config["exploration"])
    if exploration is None:
        raise InvalidInput("policy: unknown exploration in the dump", field="policy")
    layout = (exploration, config["explore_slots"], config["diverse_slots"])
    spec = config["spec"]
    if "parts" in config:
        parts = [(_from_config(part), weight) for part, weight in config["parts"]]
        return Blend(parts, *layout, spec=spec)
    if spec in SIMPLE:
        return SIMPLE[spec](*layout)
    scorer = VWScorer(config["vw_args"], version=config["version"], model_bytes=config["model"])
    return VWPolicy(scorer, *layout, pinned=spec != "vw")
