"""A PostgreSQL server of one's own, for the tests and benchmarks that stop and start it.

It is made with the machine's ``initdb`` in a temporary directory and listens on a free
loopback port, so stopping it disturbs no other database. Run as root, it runs as the
``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import free_port


def initdb() -> Path | None:
    """The newest installed PostgreSQL's ``initdb``, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1] if found else None


@dataclass
class Cluster:
    bindir: Path
    root: Path
    port: int
    run_as: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(self.bindir / tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        data, log = str(self.root / "data"), str(self.root / "log")
        self.run("pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        """Stop it as a crash would: connections are cut, nothing is shut down politely."""
        self.run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")


@contextlib.contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A started cluster, stopped and deleted afterwards."""
    tool = initdb()
    if tool is None:
        raise FileNotFoundError("PostgreSQL's server binaries (initdb) are not installed")
    root = Path(tempfile.mkdtemp(prefix="slatebandit-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    cluster = Cluster(tool.parent, root, free_port(), run_as)
    try:
        data = str(root / "data")
        cluster.run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync")
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
