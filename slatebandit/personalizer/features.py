"""Personalizer's JSON features as Vowpal Wabbit text.

Personalizer takes features as a list of JSON objects, for the context and for each action:
``[{"user": {"tier": "gold", "visits": 3}}, {"device": "mobile"}]``. We write them the way
VW's own JSON reader does, so a policy's ``-q`` letters mean what they meant on Azure:

- an object value opens a namespace named by its key (``|user tier=gold visits:3``); VW keys
  interactions on its first letter, so ``-q ua`` crosses ``user`` with ``action...``;
- a scalar at the top level goes to the default namespace (``| device=mobile``);
- a string becomes an indicator ``name=value``; a number ``name:value``; ``true`` the
  indicator ``name``; ``false`` and ``null`` nothing;
- a list of numbers becomes ``name_0:v0 name_1:v1 ...``, a list of strings one indicator per
  string; objects nested deeper are flattened into their namespace as ``outer_inner``;
- a name that starts with ``_`` is ignored, with everything under it, as Personalizer does
  (callers keep ids and URLs there).

Malformed input raises ``InvalidInput`` naming the offending path, e.g.
``actions[2].features[0].price``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from slatebandit.errors import InvalidInput
from slatebandit.personalizer.configuration import finite

MAX_DEPTH = 8  # nesting below a namespace; deeper JSON is refused
_UNSAFE = re.compile(r"[\s|:]+")  # VW's separators may not appear inside a name or value


def namespaces(features: Any, where: str) -> str:
    """VW text for a Personalizer feature list: ``|ns a=b c:1 |other ...``."""
    if features is None:
        return ""
    if not isinstance(features, list):
        raise InvalidInput(f"{where}: must be a list of objects", field=where)
    default: list[str] = []
    named: dict[str, list[str]] = {}
    for i, group in enumerate(features):
        at = f"{where}[{i}]"
        if not isinstance(group, dict):
            raise InvalidInput(f"{at}: must be an object", field=at)
        for name, value in group.items():
            if _ignored(name):
                continue
            if isinstance(value, dict):
                tokens = named.setdefault(_safe(name), [])
                tokens.extend(_flatten(value, "", f"{at}.{name}", 0))
            else:
                default.extend(_tokens(_safe(name), value, f"{at}.{name}", 0))
    parts = [f"| {' '.join(default)}"] if default else []
    parts.extend(f"|{ns} {' '.join(tokens)}" for ns, tokens in named.items() if tokens)
    return " ".join(parts)


def _ignored(name: object) -> bool:
    return not isinstance(name, str) or name.startswith("_") or not name.strip()


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text.strip())


def _flatten(group: dict[str, Any], prefix: str, where: str, depth: int) -> Iterator[str]:
    if depth > MAX_DEPTH:
        raise InvalidInput(f"{where}: nested deeper than {MAX_DEPTH} levels", field=where)
    for name, value in group.items():
        if _ignored(name):
            continue
        full = f"{prefix}{_safe(name)}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{full}_", f"{where}.{name}", depth + 1)
        else:
            yield from _tokens(full, value, f"{where}.{name}", depth)


def _tokens(name: str, value: Any, where: str, depth: int) -> Iterator[str]:
    if depth > MAX_DEPTH:
        raise InvalidInput(f"{where}: nested deeper than {MAX_DEPTH} levels", field=where)
    if value is None or value is False:
        return
    if value is True:
        yield name
    elif isinstance(value, int | float):
        if not finite(value):
            raise InvalidInput(f"{where}: must be a finite number", field=where)
        yield f"{name}:{value:.9g}"
    elif isinstance(value, str):
        yield f"{name}={_safe(value)[:256]}" if value.strip() else name
    elif isinstance(value, list):
        for i, element in enumerate(value):
            at = f"{where}[{i}]"
            if isinstance(element, dict):
                yield from _flatten(element, f"{name}_", at, depth + 1)
            elif isinstance(element, int | float) and not isinstance(element, bool):
                yield from _tokens(f"{name}_{i}", element, at, depth + 1)
            else:
                yield from _tokens(name, element, at, depth + 1)
    else:
        raise InvalidInput(f"{where}: unsupported value", field=where)
