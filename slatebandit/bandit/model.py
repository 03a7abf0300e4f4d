"""The VW scoring model: one ``--cb_adf`` predict per slate scores every candidate.

VW predicts a cost per action; we report ``score = -cost`` (expected reward, higher is
better). Exploration is not VW's job here: the slate builder turns scores into exact per-slot
pmfs (DESIGN.md, "Exploration and slots"), so the arguments must not ask VW to explore.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pylibvw  # VW's C++ binding, installed by the vowpalwabbit wheel
import vowpalwabbit

from slatebandit.bandit.features import (
    ACTION_SEPARATOR,
    SharedFeatures,
    candidate_features,
    with_bands,
)
from slatebandit.bandit.hashes import Items
from slatebandit.bandit.linear import LinearScorer
from slatebandit.errors import ConfigError

log = logging.getLogger(__name__)


# A made-up slate each model scores both ways before numpy serves for it: every namespace, a
# valued token, crossed pairs and the constant (whose weight every trained model has).
_CHECK_SHARED = SharedFeatures({"device": "check", "hour": 1}, ("check",), ("tc=check:0.5",))
_CHECK_ITEMS = ("k0 c=check b=check p=1", "k1 c=check/a a=size=m", "k2")


class VWScorer:
    def __init__(self, args: str, *, version: int = 0, model_bytes: bytes | None = None) -> None:
        words = args.split()
        if "--cb_adf" not in words or any(w.startswith("--cb_explore") for w in words):
            raise ConfigError(
                "VW arguments must use --cb_adf without --cb_explore*", field="vw_args"
            )
        self.args = args
        self.version = version
        try:
            if model_bytes is None:
                self._vw = vowpalwabbit.Workspace(f"{args} --quiet")
            else:  # a saved model carries its own options; VW reads models from files only
                with _scratch_file(model_bytes) as path:
                    self._vw = vowpalwabbit.Workspace(f"-i {path} --quiet")
        except Exception as exc:  # VW raises plain RuntimeErrors for bad arguments
            raise ConfigError(f"VW rejected arguments {args!r}: {exc}", field="vw_args") from exc
        self._lock = threading.Lock()  # a VW workspace is not safe to share across threads
        # The numpy scorer (bandit/linear.py) is built by ``prepare``, or on first use; None
        # once prepared means VW's text path scores.
        self._linear: LinearScorer | None = None
        self._model_bytes, self._prepared = model_bytes, False

    def prepare(self) -> VWScorer:
        """Build the numpy scorer now (10 to 30 ms): serving's loaders call this on their
        thread, so that no request waits for it. Scorers that only replay or learn never
        need it. Returns the scorer."""
        if not self._prepared:
            linear = self._numpy_scorer(self._model_bytes)
            with self._lock:  # unless ``learn`` came first: its weights moved on meanwhile
                if not self._prepared:
                    self._linear, self._model_bytes, self._prepared = linear, None, True
        return self

    def _numpy_scorer(self, model_bytes: bytes | None) -> LinearScorer | None:
        """The numpy scorer of this model (``bandit/linear.py``), if it reproduces VW's
        predict: built, then checked against VW on a made-up slate."""
        try:
            linear = LinearScorer.build(self._vw, model_bytes, self.args)
            if linear is None:
                return None
            codes = np.arange(len(_CHECK_ITEMS), dtype=np.uint8)
            ours = linear.score_statics(_CHECK_SHARED, _CHECK_ITEMS, codes)
            theirs = self.score(_CHECK_SHARED, with_bands(_CHECK_ITEMS, codes.tolist()))
            if np.allclose(ours, theirs, rtol=1e-5, atol=1e-6):
                return linear
            log.warning("scoring through VW's text: numpy scored %s where VW %s", ours, theirs)
        except Exception:  # a model this module misreads scores through VW's text, as before
            log.warning("scoring through VW's text: its weights could not be read", exc_info=True)
        return None

    def arguments(self) -> list[str]:
        """The options VW runs with, as it reports them (a loaded model's own included)."""
        return str(self._vw.get_arguments()).split()

    def to_bytes(self) -> bytes:
        """The model as VW saves it, for the registry."""
        with self._lock, _scratch_file(b"") as path:
            self._vw.save(str(path))
            return path.read_bytes()

    def score(self, shared: SharedFeatures, actions: Sequence[str]) -> np.ndarray:
        """Expected reward of each candidate; ``actions`` holds their features, in order."""
        if len(actions) == 0:
            return np.zeros(0, dtype=np.float64)
        return self.score_text(ACTION_SEPARATOR.join([shared.line(), *actions]))

    def score_items(
        self, shared: SharedFeatures, catalog: Items, keys: np.ndarray, codes: np.ndarray
    ) -> np.ndarray:
        """Expected reward of candidates ``keys`` of ``catalog`` (its ``features``, and
        ``rev`` for when they change) with packed band bytes ``codes``: the same as ``score``
        of their ``action_features``, computed from VW's weights with numpy when the model
        allows (``bandit/linear.py``)."""
        linear = self.prepare()._linear
        if linear is not None:
            return linear.score(shared, catalog, keys, codes)
        return self.score(
            shared, candidate_features(catalog.features, keys.tolist(), codes.tolist())
        )

    @property
    def fast(self) -> bool:
        """Whether ``score_items`` skips VW's text (``bandit/linear.py``)."""
        return self.prepare()._linear is not None

    def score_lines(self, shared: str, actions: Sequence[str]) -> np.ndarray:
        """Expected reward of each action line (``|ns ...``) under the ``shared |...`` line."""
        if len(actions) == 0:
            return np.zeros(0, dtype=np.float64)
        return self.score_text("\n".join([shared, *actions]))

    def score_text(self, text: str) -> np.ndarray:
        """Expected reward of each action of one multi-line example in VW text."""
        with self._lock:
            costs = self._predict(text)
        return 0.0 - np.asarray(costs, dtype=np.float64)  # 0.0 - x: no -0.0 in answers

    def _predict(self, text: str) -> list[float]:
        # pyvw's predict() wraps each of the ~200 parsed lines in a Python Example object,
        # which costs 4x the prediction itself (0.8 ms vs 0.19 ms for 200 actions). We call
        # the binding pyvw itself calls, on the raw examples; a test checks both agree.
        examples = pylibvw.vw._parse(self._vw, text)
        try:
            pylibvw.vw.predict_multi(self._vw, examples)
            return examples[0].get_action_scores()
        finally:
            pylibvw.vw._finish_example_multi_ex(self._vw, examples)

    def learn(self, example: list[str]) -> None:
        """One multi-line example, e.g. from ``slatebandit.bandit.slot_example``."""
        with self._lock:
            # The numpy scorer's weights would be a stale copy: from now on VW scores.
            self._linear, self._model_bytes, self._prepared = None, None, True
            self._vw.learn(example)

    def finish(self) -> None:
        self._vw.finish()


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt parameters (malloc.h)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def return_freed_memory() -> bool:
    """Make glibc give freed model memory back to the system (a no-op elsewhere).

    Every release loads VW models (the champion's, each canary's) on worker threads, and each
    is megabytes. glibc raises its mmap threshold after the first such block is freed, so the
    next ones come from per-thread arenas that it seldom trims: in the soak each worker grew
    by 25 MB a minute. A fixed threshold (blocks over 128 KB are mmap'd and unmapped when
    freed) and two arenas held it to the caches' own growth (benchmarks/soak.py, README).
    True if glibc took both settings.
    """
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024) and libc.mallopt(M_ARENA_MAX, 2))


def trim_freed_memory() -> None:
    """Hand the free pages inside glibc's heaps back to the system (``malloc_trim``), after a
    model is dropped: its many small blocks leave holes that the next model does not fill.
    Call it off the event loop (ctypes releases the GIL while it walks the arenas)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def _scratch_file(data: bytes) -> Iterator[Path]:
    handle, name = tempfile.mkstemp(prefix="slatebandit-vw-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        yield Path(name)
    finally:
        os.unlink(name)
