"""Candidates -> scored, slotted slate with exact propensities; the VW model."""

from slatebandit.bandit.exploration import Exploration, epsilon_greedy, softmax, squarecb
from slatebandit.bandit.features import (
    FEATURE_SPEC_VERSION,
    SharedFeatures,
    action_features,
    action_line,
    candidate_features,
    dynamic_tokens,
    valued,
)
from slatebandit.bandit.learning import slot_example
from slatebandit.bandit.model import VWScorer, return_freed_memory, trim_freed_memory
from slatebandit.bandit.slate import (
    DIVERSE,
    EXPLOIT,
    EXPLORE,
    LAYOUT_CODES,
    PINNED,
    PROMOTED,
    Pick,
    Shaping,
    build_slate,
    layout,
    shaped_layout,
    shifted_rows,
    slot_pmf,
    slot_pmfs,
    slot_pools,
)

__all__ = [
    "DIVERSE",
    "EXPLOIT",
    "EXPLORE",
    "FEATURE_SPEC_VERSION",
    "LAYOUT_CODES",
    "PINNED",
    "PROMOTED",
    "Exploration",
    "Pick",
    "Shaping",
    "SharedFeatures",
    "VWScorer",
    "action_features",
    "candidate_features",
    "action_line",
    "build_slate",
    "dynamic_tokens",
    "valued",
    "epsilon_greedy",
    "layout",
    "shaped_layout",
    "shifted_rows",
    "return_freed_memory",
    "trim_freed_memory",
    "slot_example",
    "slot_pmf",
    "slot_pmfs",
    "slot_pools",
    "softmax",
    "squarecb",
]
