"""Options and settings shared by the subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from slatebandit.config import Settings


def add_db_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", dest="db_url", help="SQLAlchemy URL (default SQLite in the data dir)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="directory for the database and index (default ./var)"
    )


def settings_from(args: argparse.Namespace) -> Settings:
    names = ("host", "port", "workers", "db_url", "data_dir")
    return Settings.from_env(**{name: getattr(args, name, None) for name in names})
