"""``blend:vw=0.6,popular=0.3,content=0.1``: a weighted mix of other policies' scores.

Each part's scores are rescaled to [0, 1] over the request's candidates (``min_max``) before
they are weighed, so a part's weight is its say in the ranking whatever its score's scale
(VW's expected rewards, popularity bands, cosines). The blend explores with its own settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from slatebandit.policies.base import Policy, Query, min_max
from slatebandit.retrieval import ItemStore


class Blend(Policy):
    def __init__(
        self,
        parts: Sequence[tuple[Policy, float]],
        *args: Any,
        spec: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.parts = list(parts)
        # The SPEC as the operator wrote it (checked to fit the log's policy column).
        self.spec = spec or "blend:" + ",".join(f"{p.name}={w:g}" for p, w in self.parts)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.spec

    @property
    def model_version(self) -> int:
        return max((p.model_version for p, _ in self.parts), default=0)

    def scores(self, store: ItemStore, query: Query, dynamic: np.ndarray) -> np.ndarray:
        return sum(
            (part for _, part in self.part_scores(store, query, dynamic)),
            start=np.zeros(len(query.candidates)),
        )

    def part_scores(
        self, store: ItemStore, query: Query, dynamic: np.ndarray
    ) -> list[tuple[str, np.ndarray]]:
        """Each part's weighted contribution to the blended score (for explanations)."""
        return [
            (p.name, weight * min_max(p.scores(store, query, dynamic))) for p, weight in self.parts
        ]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "parts": [[p.config(), w] for p, w in self.parts]}
