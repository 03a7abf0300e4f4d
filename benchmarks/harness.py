"""What the benchmarks share: ports, server processes, /proc readings, machine facts.

``Server`` runs ``slatebandit serve`` (this checkout's, or another source tree's: pass
``root``) in a session of its own, so it and its workers stop together.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _now() -> float:
    return time.perf_counter()


def proc_mib(path: str, fields: tuple[str, ...]) -> dict[str, float]:
    """The named kB fields of a /proc file, in MiB (absent if the process is gone)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            found[name] = int(value.split()[0]) / 1024
    return found


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB (0 if it is gone)."""
    found = proc_mib(f"/proc/{pid}/status", ("VmRSS", "VmHWM"))
    return {
        "rss_mib": round(found.get("VmRSS", 0.0), 1),
        "hwm_mib": round(found.get("VmHWM", 0.0), 1),
    }


def smaps(pid: int) -> dict[str, float]:
    """RSS and PSS of ``pid`` in MiB (zeros if it is gone): PSS splits shared pages (a
    memory-mapped snapshot) between the processes that map them."""
    found = proc_mib(f"/proc/{pid}/smaps_rollup", ("Rss", "Pss"))
    return {"rss": found.get("Rss", 0.0), "pss": found.get("Pss", 0.0)}


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores, not idle or iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class OtherLoad:
    """CPU used by processes other than ours over a stretch of time, in cores.

    The benchmark wants an otherwise idle machine; this says how idle it really was.
    """

    def __init__(self, ours: Callable[[], float] = self_cpu) -> None:
        self.ours = ours
        self.start = (_now(), machine_busy(), ours())

    def cores(self) -> float:
        wall, busy, ours = _now(), machine_busy(), self.ours()
        return round(((busy - self.start[1]) - (ours - self.start[2])) / (wall - self.start[0]), 2)


IDLE = {"max_wait": 600.0, "threshold": 0.15}  # set from the command line
IDLE_WAITS: dict[str, float] = {}  # phase -> seconds spent waiting for other load to stop


def wait_idle(phase: str, ours: Callable[[], float] = self_cpu) -> None:
    """Wait (boundedly) until other processes use under ``IDLE["threshold"]`` cores for 4 s."""
    if IDLE["max_wait"] <= 0:
        return
    start, calm = _now(), 0
    while _now() - start < IDLE["max_wait"]:
        other = OtherLoad(ours)
        time.sleep(2.0)
        calm = calm + 1 if other.cores() < IDLE["threshold"] else 0
        if calm == 2:
            break
    waited = round(max(0.0, _now() - start - 4.0), 1)
    IDLE_WAITS[phase] = waited
    if waited > 1:
        gave_up = "" if calm == 2 else " (gave up)"
        say(f"waited {waited} s for other load to stop before {phase}{gave_up}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (not its children), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` (scanning /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def latency(seconds: Sequence[float]) -> dict[str, float]:
    """Percentiles in milliseconds."""
    if not seconds:
        return {"n": 0}
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p99, p999 = np.percentile(ms, [50, 90, 99, 99.9])
    return {
        "n": int(len(ms)),
        "mean": round(float(ms.mean()), 3),
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p99": round(float(p99), 3),
        "p99.9": round(float(p999), 3),
        "max": round(float(ms.max()), 3),
    }


def dir_mib(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0
    return round(total / 2**20, 1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Server:
    """``slatebandit serve`` in its own session, so it and its workers can be stopped together."""

    def __init__(
        self,
        data_dir: Path,
        workers: int,
        log_path: Path,
        *,
        root: str | None = None,
        extra: Sequence[str] = (),
        settings: dict[str, str] | None = None,
    ) -> None:
        """``root``: the source tree whose slatebandit runs (default: this process's);
        ``extra``: more ``serve`` arguments; ``settings``: SLATEBANDIT_* values by name."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.log_path = log_path
        self.command = [
            sys.executable,
            "-m",
            "slatebandit.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
            "--workers",
            str(workers),
            *extra,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLATEBANDIT_")}
        env.update({f"SLATEBANDIT_{k.upper()}": v for k, v in (settings or {}).items()})
        # The server runs the same slatebandit as this process (or root's), wherever it is.
        root = root or package_root()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> float:
        import httpx

        start = _now()
        while _now() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            ready = self.log_path.read_bytes().count(b"Application startup complete")
            if ready >= self.workers:
                try:
                    if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
                        return _now() - start
                except httpx.HTTPError:
                    pass
            time.sleep(0.25)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        if self.workers == 1:
            return [self.proc.pid]
        return [pid for pid in children_of(self.proc.pid) if "spawn_main" in cmdline(pid)]

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])

    def stop(self, timeout: float = 600.0) -> float:
        """SIGINT (graceful: the workers save the index), then SIGKILL to the group if need be."""
        start = _now()
        pids = [self.proc.pid, *children_of(self.proc.pid)]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        for pid in pids[1:]:  # workers that outlived their parent
            command = cmdline(pid)
            if "spawn_main" in command or "slatebandit" in command:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._log.close()
        return _now() - start


def package_root() -> str:
    import slatebandit

    return str(Path(slatebandit.__file__).resolve().parent.parent)


def source_info() -> dict[str, str]:
    """Where the measured slatebandit came from, and its git commit if it is a checkout."""
    root = package_root()
    info: dict[str, str] = {}  # the commit says what was measured; the path is this machine's
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", root]
        info["commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--", "slatebandit"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        info["dirty"] = "yes" if status.strip() else "no"
    return info


def machine(data_dir: Path) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    fs = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        fs = subprocess.run(
            ["df", "--output=fstype", str(data_dir)], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
    import hnswlib  # noqa: F401
    import sqlalchemy
    import starlette
    import uvicorn
    import vowpalwabbit  # noqa: F401

    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "data_fs": fs,
        "loadavg_at_start": os.getloadavg(),
        "sqlalchemy": sqlalchemy.__version__,
        "starlette": starlette.__version__,
        "uvicorn": uvicorn.__version__,
    }
