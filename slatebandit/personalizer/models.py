"""Checks on what an operator gives a Personalizer loop: VW arguments, and imported models."""

from __future__ import annotations

from slatebandit.bandit import VWScorer
from slatebandit.errors import ConfigError, InvalidInput
from slatebandit.personalizer.configuration import PolicyConfiguration


def check_arguments(policy: PolicyConfiguration) -> None:
    try:
        VWScorer(policy.vw_args).finish()
    except ConfigError as exc:
        raise InvalidInput(exc.message.replace("vw_args", "arguments"), field="arguments") from None


class InvalidModel(InvalidInput):
    personalizer_code = "InvalidModelImportFormat"


# Options VW reports for a loaded model that say how it was loaded, not what it is.
_LOADING = {"--initial_regressor": 1, "--no_stdin": 0, "--quiet": 0}


def check_model(vw_args: str, data: bytes) -> str:
    """A model must load in VW, be a ``--cb_adf`` scorer and score an example; returns the
    options it was trained with. A ``--cb_explore_adf`` model (Azure's, or VW's own explorer)
    answers probabilities, not scores, and would serve its least likely action: refused."""
    try:
        scorer = VWScorer(vw_args, model_bytes=data)
    except ConfigError:
        raise InvalidModel(
            "body: not a Vowpal Wabbit model this loop can load", field="body"
        ) from None
    try:
        words = scorer.arguments()
        if "--cb_adf" not in words or any("explore" in w for w in words):
            raise InvalidModel(
                "body: the model must be a --cb_adf scorer without exploration "
                f"(it was trained with {' '.join(words)})",
                field="body",
            )
        scorer.score_lines("shared |", ["|", "|"])
    except InvalidInput:
        raise
    except Exception:
        raise InvalidModel("body: the model cannot score --cb_adf examples", field="body") from None
    finally:
        scorer.finish()
    kept, skip = [], 0
    for word in words:
        if skip:
            skip -= 1
        elif word in _LOADING:
            skip = _LOADING[word]
        else:
            kept.append(word)
    return " ".join(kept)
