"""Items -> vectors -> candidates: content embeddings, the hnswlib index, generators, user state."""

from slatebandit.retrieval.candidates import (
    FRESH,
    POPULAR,
    SESSION,
    SIMILAR,
    SOURCES,
    Candidates,
    Quotas,
    context_tokens,
    generate,
    session_vector,
)
from slatebandit.retrieval.catalog import Catalog, age_band, popularity_band
from slatebandit.retrieval.content import (
    DIM,
    ContentEmbedder,
    item_tokens,
    price_bucket,
    scorer_features,
    snapshot_features,
    title_words,
)
from slatebandit.retrieval.filters import Allowed, FilterMasks, Filters
from slatebandit.retrieval.index import ItemIndex
from slatebandit.retrieval.store import ItemStore
from slatebandit.retrieval.user_state import EVENT_WEIGHTS, UserState, UserStates

__all__ = [
    "DIM",
    "Allowed",
    "FilterMasks",
    "Filters",
    "EVENT_WEIGHTS",
    "FRESH",
    "POPULAR",
    "SESSION",
    "SIMILAR",
    "SOURCES",
    "Candidates",
    "Catalog",
    "ContentEmbedder",
    "ItemIndex",
    "ItemStore",
    "Quotas",
    "UserState",
    "UserStates",
    "age_band",
    "context_tokens",
    "generate",
    "item_tokens",
    "popularity_band",
    "price_bucket",
    "scorer_features",
    "snapshot_features",
    "session_vector",
    "title_words",
]
