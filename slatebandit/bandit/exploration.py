"""Exploit-slot pmfs over the candidates still allowed for a slot.

Each function maps scores (expected reward, higher is better) to a probability vector in which
every entry is strictly positive, so every allowed candidate can be shown and logged
propensities never hit zero. Ties go to the first candidate, which is retrieval order: an
untrained model therefore serves the retrieval ranking plus exploration.
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

    def to_log(self) -> dict[str, float | str]:
        param = {"epsilon": self.epsilon, "squarecb": self.gamma, "softmax": self.temperature}
        return {"kind": self.kind, "param": param[self.kind]}


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
