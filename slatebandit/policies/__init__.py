"""Who decides: the policies that turn candidates into slates, the registry, experiments."""

from slatebandit.policies.base import Policy, Query, Slate
from slatebandit.policies.blend import Blend
from slatebandit.policies.registry import follow_champion, load_champion
from slatebandit.policies.simple import Content, Popular, Random
from slatebandit.policies.specs import PolicySet, exploration_of, load_policy, parse_spec
from slatebandit.policies.vw import VWPolicy

__all__ = [
    "exploration_of",
    "Blend",
    "Content",
    "Policy",
    "PolicySet",
    "Popular",
    "Query",
    "Random",
    "Slate",
    "VWPolicy",
    "follow_champion",
    "load_champion",
    "load_policy",
    "parse_spec",
]
