"""VW arguments that arrive over HTTP (a loop's policy, an evaluation's policies), checked
against an allowlist before VW sees them.

The arguments are Personalizer's (``--cb_explore_adf --epsilon 0.2 -q ::``). Exploration is
ours, not VW's (the logged probabilities must be exact), so ``--cb_explore_adf`` runs as
``--cb_adf`` and VW's exploration options are dropped; the loop explores by its
``explorationPercentage``. Everything else must be a learning option we know, with the number
of values it takes: VW reads data, writes predictions and dumps weights through options too,
and none of those may name a path on the server. A word no option consumes is refused (VW would
read it as a data file).
"""

from __future__ import annotations

import re

from slatebandit.errors import InvalidInput

# Learning options a loop may use -> how many values each takes.
ALLOWED = {
    "--cb_adf": 0,
    "--cb_type": 1,
    "--quadratic": 1,
    "--cubic": 1,
    "--interactions": 1,
    "--learning_rate": 1,
    "--power_t": 1,
    "--initial_t": 1,
    "--decay_learning_rate": 1,
    "--l1": 1,
    "--l2": 1,
    "--bit_precision": 1,
    "--ignore": 1,
    "--ignore_linear": 1,
    "--keep": 1,
    "--noconstant": 0,
    "--adaptive": 0,
    "--normalized": 0,
    "--invariant": 0,
    "--sgd": 0,
    "--loss_function": 1,
    "--random_seed": 1,
    "--hash_seed": 1,
    "--holdout_off": 0,
}
# VW's exploration options -> how many values each takes; dropped.
EXPLORATION = {
    "--cb_explore_adf": 0,  # becomes --cb_adf
    "--epsilon": 1,
    "--first": 1,
    "--bag": 1,
    "--cover": 1,
    "--softmax": 0,
    "--lambda": 1,
    "--squarecb": 0,
    "--gamma_scale": 1,
    "--gamma_exponent": 1,
    "--rnd": 1,
    "--regcb": 0,
    "--regcbopt": 0,
    "--synthcover": 0,
    "--psi": 1,
    "--nounif": 0,
}
SHORT = {"-q": "--quadratic", "-l": "--learning_rate", "-b": "--bit_precision"}
CB_TYPES = ("mtr", "ips", "dr", "dm", "sm")
MAX_BITS = 24  # 2^24 weights: about 130 MB per model with -q
_NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_NUMERIC = {
    "--learning_rate",
    "--power_t",
    "--initial_t",
    "--decay_learning_rate",
    "--l1",
    "--l2",
    "--bit_precision",
    "--random_seed",
    "--hash_seed",
}


def parse(arguments: str, field: str) -> list[tuple[str, str | None]]:
    """``[(option, value or None)]`` with long option names, exploration included."""
    words, out, i = arguments.split(), [], 0
    while i < len(words):
        word = words[i]
        value: str | None = None
        if word.startswith("--"):
            option, eq, glued = word.partition("=")
            value = glued if eq else None
        elif word[:2] in SHORT:
            option, value = SHORT[word[:2]], word[2:] or None
        else:
            raise InvalidInput(f"{field}: {word!r} is not an option a loop may use", field=field)
        arity = ALLOWED.get(option, EXPLORATION.get(option))
        if arity is None:
            raise InvalidInput(f"{field}: {option} is not an option a loop may use", field=field)
        if arity and value is None:
            if i + 1 >= len(words):
                raise InvalidInput(f"{field}: {option} needs a value", field=field)
            i += 1
            value = words[i]
        elif not arity and value is not None:
            raise InvalidInput(f"{field}: {option} takes no value", field=field)
        _check_value(option, value, field)
        out.append((option, value))
        i += 1
    return out


def _check_value(option: str, value: str | None, field: str) -> None:
    if option in _NUMERIC and not (value and _NUMBER.match(value)):
        raise InvalidInput(f"{field}: {option} needs a number", field=field)
    if option == "--bit_precision" and not 1 <= float(value or 0) <= MAX_BITS:
        raise InvalidInput(f"{field}: --bit_precision must be 1 to {MAX_BITS}", field=field)
    if option == "--cb_type" and value not in CB_TYPES:
        raise InvalidInput(f"{field}: --cb_type must be one of {', '.join(CB_TYPES)}", field=field)


def scorer_arguments(arguments: str, field: str) -> str:
    """The arguments our scorer runs: ``--cb_adf``, VW's exploration dropped."""
    options = parse(arguments, field)
    if not any(o in ("--cb_adf", "--cb_explore_adf") for o, _ in options):
        raise InvalidInput(f"{field}: must use --cb_explore_adf or --cb_adf", field=field)
    kept = [(o, v) for o, v in options if o not in EXPLORATION]
    return " ".join(["--cb_adf", *(_join(o, v) for o, v in kept if o != "--cb_adf")])


def with_learning_rate(arguments: str, rate: float) -> str:
    """``arguments`` with its learning rate, in any spelling, replaced by ``rate``."""
    options = [(o, v) for o, v in parse(arguments, "arguments") if o != "--learning_rate"]
    return " ".join([*(_join(o, v) for o, v in options), "-l", f"{rate:g}"])


def _join(option: str, value: str | None) -> str:
    return option if value is None else f"{option} {value}"
