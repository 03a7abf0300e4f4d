"""The decision pipeline between the API and the parts.

``Recommender`` holds what a serving worker needs and answers the verbs: ``decide`` (a slate
for a ``SlateQuery``), ``reward``, ``event``, ``erase``. ``slatebandit.server`` only parses,
authorises, calls one of them and encodes the answer; ``docs/architecture.md`` follows a
request and a reward through it file by file.
"""

from slatebandit.recommender.core import Recommender
from slatebandit.recommender.decide import Decision, SlateQuery
from slatebandit.recommender.state import index_path
from slatebandit.retrieval import Filters

__all__ = ["Decision", "Filters", "Recommender", "SlateQuery", "index_path"]
