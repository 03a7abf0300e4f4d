"""Settings from the environment, the README's table, and `slatebandit items load`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from slatebandit.cli import main
from slatebandit.config import Settings, settings_table
from slatebandit.errors import ConfigError
from slatebandit.logging import open_engine
from slatebandit.logging.schema import items

ROOT = Path(__file__).resolve().parents[1]


def test_settings_from_env_and_flags() -> None:
    env = {
        "SLATEBANDIT_PORT": "9000",
        "SLATEBANDIT_EXPLORE_SLOTS": "1,3",
        "SLATEBANDIT_API_KEYS": "serve:a,admin:b",
    }
    settings = Settings.from_env(env, port=9100)
    assert settings.port == 9100 and settings.explore_slots == (1, 3)
    assert settings.keys == {"a": frozenset({"serve"}), "b": frozenset({"admin"})}
    assert Settings.from_env(settings.as_env()) == settings


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"SLATEBANDIT_PORT": "eighty"}, "SLATEBANDIT_PORT"),
        ({"SLATEBANDIT_EPSILON": "0"}, "SLATEBANDIT_EPSILON"),
        ({"SLATEBANDIT_API_KEYS": "root:x"}, "SLATEBANDIT_API_KEYS"),
        ({"SLATEBANDIT_API_KEYS": "serve"}, "SLATEBANDIT_API_KEYS"),
        ({"SLATEBANDIT_EXPLORATION": "thompson"}, "SLATEBANDIT_EXPLORATION"),
        ({"SLATEBANDIT_VW_ARGS": "--cb 3"}, "SLATEBANDIT_VW_ARGS"),
        (
            {"SLATEBANDIT_EXPLORE_SLOTS": "1", "SLATEBANDIT_DIVERSE_SLOTS": "1"},
            "SLATEBANDIT_DIVERSE_SLOTS",
        ),
    ],
)
def test_malformed_settings_fail_at_start_with_their_name(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Settings.from_env(env)


def test_readme_settings_table_matches_the_code() -> None:
    assert settings_table() in (ROOT / "README.md").read_text()


def _item_ids(db: Path) -> list[str]:
    engine = open_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        ids = sorted(conn.execute(select(items.c.item_id)).scalars())
    engine.dispose()
    return ids


def test_items_load_jsonl_and_csv(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps({"item_id": f"j{i}", "category": "a/b", "price": 3.5}) for i in range(3)
        )
    )
    assert main(["items", "load", str(jsonl), "--db", f"sqlite:///{db}"]) == 0
    csv_file = tmp_path / "items.csv"
    csv_file.write_text(
        "item_id,title,category,brand,price,available,attr.color\nc1,Shirt,men/shirts,Acme,20,true,red\nc2,Mug,home,,,,\n"
    )
    assert main(["items", "load", str(csv_file), "--db", f"sqlite:///{db}"]) == 0
    assert _item_ids(db) == ["c1", "c2", "j0", "j1", "j2"]


def test_items_load_with_a_bad_line_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "c.db"
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text('{"item_id": "ok"}\n{"item_id": "bad", "price": "cheap"}\n')
    assert main(["items", "load", str(jsonl), "--db", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert "items.jsonl:2" in err and "price" in err
    assert not db.exists() or _item_ids(db) == []
