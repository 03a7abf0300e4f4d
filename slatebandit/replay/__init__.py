"""Off-policy replay: logged decisions -> value estimates with intervals; OBD import; reports.

from slatebandit.replay import IPS, Bootstrap, ReplayOptions, replay
"""

from slatebandit.replay.bootstrap import Bootstrap
from slatebandit.replay.context_model import ContextRewardModel
from slatebandit.replay.estimators import (
    DEFAULT_ESTIMATORS,
    DM,
    DR,
    ESTIMATORS,
    IPS,
    SNIPS,
    CascadeDR,
    CascadeIPS,
    Estimate,
    Estimator,
    make_estimator,
)
from slatebandit.replay.evaluate import NOTE, ItemRewardModel, ReplayOptions, Report, replay
from slatebandit.replay.release import Release
from slatebandit.replay.reward_model import RewardModel
from slatebandit.replay.targets import Target, parse_target

__all__ = [
    "DEFAULT_ESTIMATORS",
    "DM",
    "DR",
    "ESTIMATORS",
    "IPS",
    "NOTE",
    "SNIPS",
    "Bootstrap",
    "CascadeDR",
    "CascadeIPS",
    "ContextRewardModel",
    "Estimate",
    "Estimator",
    "ItemRewardModel",
    "Release",
    "Report",
    "ReplayOptions",
    "RewardModel",
    "Target",
    "make_estimator",
    "parse_target",
    "replay",
]
