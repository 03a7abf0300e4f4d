"""Who decides: the policies that turn candidates into slates."""

from slatebandit.policies.vw import Slate, VWPolicy

__all__ = ["Slate", "VWPolicy"]
