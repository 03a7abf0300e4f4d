"""Exploit-slot pmfs over the candidates still allowed for a slot.

Each function maps scores (expected reward, higher is better) to a probability vector in which
every entry is strictly positive, so every allowed candidate can be shown and logged
propensities never hit zero. Ties go to the first candidate, which is retrieval order: an
untrained model therefore serves the retrieval ranking plus exploration.

Each pmf comes in two forms: over a vector of the allowed candidates' scores (serving builds
one slot at a time: about 0.3 ms for 10 slots over 200 candidates) and row-wise over a boolean
mask of allowed candidates (``*_rows``: replay recomputes thousands of logged slots at once;
called one row at a time it costs 1 ms a slate). A test keeps the two forms equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MIN_LOGIT = -30.0  # softmax floor: keeps every probability above ~1e-13 / A


@dataclass(frozen=True)
class Exploration:
    kind: str = "epsilon"  # epsilon | squarecb | softmax
    epsilon: float = 0.05
    gamma: float = 50.0
    temperature: float = 0.1

    def pmf(self, scores: np.ndarray) -> np.ndarray:
        if self.kind == "epsilon":
            return epsilon_greedy(scores, self.epsilon)
        if self.kind == "squarecb":
            return squarecb(scores, self.gamma)
        if self.kind == "softmax":
            return softmax(scores, self.temperature)
        raise ValueError(f"unknown exploration kind {self.kind!r}")

    def pmf_rows(self, scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """One pmf per row over that row's ``allowed`` candidates (zero elsewhere).

        Every row must allow at least one candidate.
        """
        if self.kind == "epsilon":
            return epsilon_greedy_rows(scores, self.epsilon, allowed)
        if self.kind == "squarecb":
            return squarecb_rows(scores, self.gamma, allowed)
        if self.kind == "softmax":
            return softmax_rows(scores, self.temperature, allowed)
        raise ValueError(f"unknown exploration kind {self.kind!r}")

    def to_log(self) -> dict[str, float | str]:
        param = {"epsilon": self.epsilon, "squarecb": self.gamma, "softmax": self.temperature}
        return {"kind": self.kind, "param": param[self.kind]}

    @classmethod
    def from_log(cls, logged: dict[str, float | str]) -> Exploration | None:
        """The exploration a decision logged; None for a logger we do not know (imported logs)."""
        kind, param = logged.get("kind"), logged.get("param")
        if not isinstance(param, int | float):
            return None
        if kind == "epsilon":
            return cls(kind, epsilon=float(param))
        if kind == "squarecb":
            return cls(kind, gamma=float(param))
        if kind == "softmax":
            return cls(kind, temperature=float(param))
        return None


def epsilon_greedy(scores: np.ndarray, epsilon: float) -> np.ndarray:
    n = len(scores)
    pmf = np.full(n, epsilon / n)
    pmf[int(np.argmax(scores))] += 1.0 - epsilon
    return pmf


def squarecb(scores: np.ndarray, gamma: float) -> np.ndarray:
    """Inverse-gap weighting (Foster & Rakhlin): p(a) = 1 / (A + gamma * gap(a)), rest on best."""
    n = len(scores)
    best = int(np.argmax(scores))
    pmf = 1.0 / (n + gamma * (scores[best] - scores))
    pmf[best] = 0.0
    pmf[best] = 1.0 - pmf.sum()
    return pmf


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.maximum((scores - scores.max()) / temperature, _MIN_LOGIT)
    weights = np.exp(logits)
    return weights / weights.sum()


def _best(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    return np.where(allowed, scores, -np.inf).argmax(axis=1)  # the first of equal maxima


def epsilon_greedy_rows(scores: np.ndarray, epsilon: float, allowed: np.ndarray) -> np.ndarray:
    n = allowed.sum(axis=1, keepdims=True)
    pmf = allowed * (epsilon / np.maximum(n, 1))  # as np.where(allowed, ..., 0.0), faster
    pmf[np.arange(len(scores)), _best(scores, allowed)] += 1.0 - epsilon
    return pmf


def squarecb_rows(scores: np.ndarray, gamma: float, allowed: np.ndarray) -> np.ndarray:
    n = allowed.sum(axis=1, keepdims=True)
    every, best = np.arange(len(scores)), _best(scores, allowed)
    gap = np.where(allowed, scores[every, best][:, None] - scores, 0.0)
    pmf = np.where(allowed, 1.0 / (n + gamma * gap), 0.0)
    pmf[every, best] = 0.0
    pmf[every, best] = 1.0 - pmf.sum(axis=1)
    return pmf


def softmax_rows(scores: np.ndarray, temperature: float, allowed: np.ndarray) -> np.ndarray:
    top = np.where(allowed, scores, -np.inf).max(axis=1, keepdims=True)
    logits = np.maximum((np.where(allowed, scores, top) - top) / temperature, _MIN_LOGIT)
    weights = np.where(allowed, np.exp(logits), 0.0)
    return weights / weights.sum(axis=1, keepdims=True)
