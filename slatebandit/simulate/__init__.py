"""A storefront with a hidden click model that talks to the HTTP API."""

from slatebandit.simulate.run import (
    POLICIES,
    Simulation,
    Tally,
    Window,
    merchandiser_rules,
    plot,
    windows_of,
)
from slatebandit.simulate.storefront import Storefront

__all__ = [
    "POLICIES",
    "Simulation",
    "Storefront",
    "Tally",
    "Window",
    "merchandiser_rules",
    "plot",
    "windows_of",
]
