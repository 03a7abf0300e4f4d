"""``ContentEmbedder.embed_many`` (the snapshot build's, column by column) against ``embed`` (the
serving path's, token by token): the same bytes, row for row."""

from __future__ import annotations

import numpy as np
import pytest

from slatebandit.retrieval import content
from slatebandit.retrieval.content import ContentEmbedder, item_tokens, title_words
from slatebandit.retrieval.demo import demo_items


def _rows(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    return [
        (item_tokens(i.category, i.brand, i.price, i.attributes), title_words(i.title))
        for i in demo_items(n, seed=seed)
    ]


def _one_by_one(rows: list[tuple[list[str], list[str]]]) -> np.ndarray:
    embedder = ContentEmbedder()
    return np.stack([embedder.embed(tokens, words) for tokens, words in rows])


def test_embed_many_is_embed_byte_for_byte_on_catalog_items() -> None:
    rows = _rows(3000, seed=4)
    rows[7] = (rows[7][0], [])  # no title words
    rows[8] = ([], rows[8][1])  # no tokens
    rows[9] = ([], [])  # nothing at all: a zero vector, as ``embed`` gives
    rows[10] = (rows[10][0], title_words("a " + " ".join(f"word{i}" for i in range(40))))
    embedder = ContentEmbedder()
    many = np.vstack([embedder.embed_many(rows[:1000]), embedder.embed_many(rows[1000:])])
    one = _one_by_one(rows)
    assert many.dtype == one.dtype == np.float32
    assert many.tobytes() == one.tobytes()
    assert not many[9].any()
    np.testing.assert_allclose(np.linalg.norm(many[np.arange(len(many)) != 9], axis=1), 1, 1e-6)


def test_embed_many_of_nothing() -> None:
    assert ContentEmbedder().embed_many([]).shape == (0, content.DIM)


def test_embed_many_keeps_its_bytes_when_the_directions_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(content, "_CACHE_LIMIT", 50)  # forgotten between calls, never within
    rows = _rows(600, seed=9)
    embedder = ContentEmbedder()
    many = np.vstack([embedder.embed_many(rows[i : i + 100]) for i in range(0, 600, 100)])
    assert many.tobytes() == _one_by_one(rows).tobytes()


def test_a_token_of_no_known_kind_fails_as_embed_fails() -> None:
    rows = [(["c=shoes", "x=odd"], ["w=red"])]
    with pytest.raises(KeyError):
        ContentEmbedder().embed(*rows[0])
    with pytest.raises(KeyError):
        ContentEmbedder().embed_many(rows)
