"""Vowpal Wabbit examples in text format, built from the context and the candidates.

Namespaces (VW keys interactions on the first letter):
    u  shared: what we know of the user: the categories of their recent items (``rc=``) and
       their profile from the online state: top categories (``tc=``) and brands (``tb=``),
       each valued by its share of the user's weighted events (``tc=men/shoes:0.6``)
    c  shared: request context (device, page, hour, ...)
    p  shared: slot position, learning only; never interacted, so item scores stay free of
       position bias while one predict per slate scores every slot
    i  action: the item's id and content tokens (category path, brand, price band, attributes)
    d  action: its popularity and age bands at decision time (logged per candidate); never
       interacted: crossed with the user, today's popularity (itself an outcome of what was
       shown) added noise and cost the simulator's learned CTR a tenth (README, Measured)

With ``-q ui -q ci`` the model learns which kinds of item suit which users and contexts, so an
item that was never rewarded is still scored by what it shares with items that were. A
category's share, not just its presence among the top ones, tells the model which taste comes
first: a shopper who clicked shoes eight times and shirts once is mostly a shoe shopper.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slatebandit.retrieval.catalog import age_band, popularity_band
from slatebandit.retrieval.content import clean

# Bump when this module changes what a model sees; every decision logs the spec it was scored
# with. 4: profile tokens carry their share; the bands moved to namespace d.
FEATURE_SPEC_VERSION = 4

Scalar = str | int | float | bool


@dataclass(frozen=True)
class SharedFeatures:
    """What the scorer knows of one request; logged with the decision exactly as used."""

    context: dict[str, Scalar]  # request context plus the hour of day
    user: tuple[str, ...] = ()  # categories of the user's recent items, most recent first
    profile: tuple[str, ...] = ()  # tokens such as "tc=men/shoes:0.6", "tb=acme:0.25"

    @classmethod
    def build(
        cls,
        context: Mapping[str, Scalar],
        recent_categories: Sequence[str] = (),
        at: float | None = None,
        profile: Sequence[str] = (),
    ) -> SharedFeatures:
        hour = time.gmtime(time.time() if at is None else at).tm_hour
        recent = tuple(dict.fromkeys(recent_categories))
        return cls({"hour": hour, **context}, recent, tuple(profile))

    @classmethod
    def from_log(cls, logged: Mapping[str, Any]) -> SharedFeatures:
        """The features a decision logged (``to_log``), for the learner and replay."""
        return cls(dict(logged["c"]), tuple(logged["u"]), tuple(logged.get("p", ())))

    def line(self, slot: int | None = None) -> str:
        """``shared |u ... |c ...``: every value becomes an indicator token (numbers binned)."""
        user, context = self.namespaces()
        line = f"shared |u {' '.join(user)} |c {' '.join(context)}"
        return line if slot is None else f"{line} |p s{slot}"

    def namespaces(self) -> tuple[list[str], list[str]]:
        """The tokens of namespaces u and c, as ``line`` writes them (``name`` or
        ``name:value``)."""
        user = [*("rc=" + clean(c) for c in self.user if c), *(_valued(t) for t in self.profile)]
        context = [f"{clean(name)}={_token(value)}" for name, value in self.context.items()]
        return user, context

    def to_log(self) -> dict[str, object]:
        return {"c": self.context, "u": list(self.user), "p": list(self.profile)}


def valued(name: str, value: float) -> str:
    """A profile token carrying a value: ``name:value`` (VW's feature value)."""
    return f"{name}:{value:.3g}"


def _valued(token: str) -> str:
    """A profile token as VW reads it: the name cleaned, a trailing ``:value`` kept."""
    name, colon, value = token.rpartition(":")
    if colon and name:
        try:
            number = float(value)
        except ValueError:
            number = math.nan  # a colon inside a name (batch features): clean it away
        if math.isfinite(number):
            return f"{clean(name)}:{number:g}"
    return clean(token)


def _token(value: Scalar) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return clean(str(value))
    return f"b{int(value)}"  # numbers as bins: hour 13 and hour 14 are different contexts


ACTION_SEPARATOR = "\n|i "  # joins the shared line and item features into one example


# The bands of every packed byte, formatted once: a slate formats about 200 of them.
_DYNAMIC = tuple(f"pop={popularity_band(code)} age={age_band(code)}" for code in range(256))
_BANDS = tuple(f" |d {tokens}" for tokens in _DYNAMIC)  # as the current spec appends them
BAND_TOKENS = tuple(tuple(tokens.split()) for tokens in _DYNAMIC)  # namespace d of each byte


def dynamic_tokens(code: int) -> str:
    """Popularity and age bands from their packed byte (``Catalog.dynamic_codes``)."""
    return _DYNAMIC[code]


BANDS_OWN_NAMESPACE = 4  # the feature spec from which the bands are namespace d, not i


def action_features(static: str, code: int, spec: int = FEATURE_SPEC_VERSION) -> str:
    """All of a candidate's features: its static ones (``Catalog.features``) and its bands,
    as feature spec ``spec`` wrote them (a logged decision's own, so replay and the learner
    see what its scorer saw)."""
    if spec >= BANDS_OWN_NAMESPACE:
        return static + _BANDS[code]
    return f"{static} {_DYNAMIC[code]}"


def static_features(features: Sequence[str], keys: Sequence[int]) -> list[str]:
    """The static features (``Catalog.features``) of the items ``keys``."""
    take = getattr(features, "take", None)  # a catalog column reads many strings at once
    return take(keys) if take is not None else [features[key] for key in keys]


def with_bands(static: Sequence[str], codes: Sequence[int]) -> list[str]:
    """``action_features`` at the current spec of candidates with these static features and
    band ``codes``."""
    return [text + _BANDS[code] for text, code in zip(static, codes, strict=True)]


def candidate_features(
    features: Sequence[str], keys: Sequence[int], codes: Sequence[int]
) -> list[str]:
    """``action_features`` at the current spec of every candidate (item ``keys``, band
    ``codes``), in one pass: what VW's text scores."""
    return with_bands(static_features(features, keys), codes)


def action_line(features: str) -> str:
    """An action line from an item's features (``Catalog.features``)."""
    return "|i " + features
