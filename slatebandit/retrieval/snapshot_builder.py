"""``python -m slatebandit.retrieval.snapshot_builder MANIFEST VERSION [MAX_BEHIND]``: build the
machine snapshot (``retrieval.snapshot``) for collaborative-vector version VERSION from the
database in ``SLATEBANDIT_DATABASE_URL``, unless a current one is published meanwhile.

How a serving worker gets a snapshot built without holding the whole catalog in its own memory:
this process ends when it is written, and its memory goes back to the system. It runs at a lower
CPU priority, so serving keeps the cores it needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from slatebandit.logging import open_engine
from slatebandit.retrieval.snapshot import ensure, factors_at


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    manifest_path, version = Path(argv[0]), int(argv[1])
    max_behind = int(argv[2]) if len(argv) > 2 else None
    with contextlib.suppress(OSError):
        os.nice(10)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    engine = open_engine(os.environ["SLATEBANDIT_DATABASE_URL"])
    try:
        ensure(engine, manifest_path, factors_at(engine, version), max_behind=max_behind)
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
