"""Merchandising: business rules (pin, boost, bury, promote, block) and rotation, applied to a
slate's candidates so that every logged propensity stays exact (``bandit.Shaping``)."""

from slatebandit.merchandising.book import RULE_SOURCE, RuleBook
from slatebandit.merchandising.rotation import Rotation
from slatebandit.merchandising.rules import ACTIONS, PLACEMENTS, Rule

__all__ = ["ACTIONS", "PLACEMENTS", "RULE_SOURCE", "Rotation", "Rule", "RuleBook"]
