"""Who decides: the policies that turn candidates into slates."""

from slatebandit.policies.registry import follow_champion, load_champion
from slatebandit.policies.vw import Slate, VWPolicy

__all__ = ["Slate", "VWPolicy", "follow_champion", "load_champion"]
