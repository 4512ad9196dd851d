"""CPU time and resident memory of a process and all its descendants, from /proc.

Some gateways fork workers (uvicorn, gunicorn, our own `--workers`), so a figure for the
launched pid alone would miss most of the work. CPU time is the sum over every thread of
`/proc/<pid>/task/<tid>/schedstat`'s first field (nanoseconds on CPU); `/proc/<pid>/stat`
would do too but counts in 10 ms ticks, coarse next to a 0.2 ms request. Threads that exit
between two samples take their time with them; the gateways measured here keep theirs.

The benchmarks start every gateway, router and sim in its own session (`spawn`), so it
leads a process group: stopping the group (`stop_group`) takes whatever it forked too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process now alive."""
    out: dict[int, list[int]] = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            stat = (PROC / entry.name / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces; the fields after it are plain.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def tree(root: int) -> list[int]:
    """`root` and its descendants, alive now."""
    children = children_map()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_ns(pid: int) -> int:
    total = 0
    try:
        tasks = os.listdir(PROC / str(pid) / "task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            total += int((PROC / str(pid) / "task" / tid / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def rss_kib(pid: int) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def system_busy_s() -> float:
    """Busy time of all CPUs together since boot (/proc/stat, 10 ms ticks): a noise gauge."""
    fields = [int(v) for v in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root: int) -> float:
    return sum(cpu_ns(pid) for pid in tree(root)) / 1e9


def pss_kib(pid: int) -> int:
    """Proportional set size: a page shared by N processes counts 1/N in each."""
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mib(root: int) -> float:
    """Summed VmRSS: pages shared between forked workers count once per worker."""
    return sum(rss_kib(pid) for pid in tree(root)) / 1024


def tree_pss_mib(root: int) -> float:
    """Summed PSS: what the tree really holds when its workers share pages."""
    return sum(pss_kib(pid) for pid in tree(root)) / 1024


def pinned(cpus: str | None, argv: Sequence[str]) -> list[str]:
    """`argv` under `taskset -c cpus`, or as it is when `cpus` is empty."""
    return ["taskset", "-c", cpus, *argv] if cpus else list(argv)


def spawn(
    argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` as the leader of a new process group, its output (both streams) into `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            env={**os.environ, **env} if env else None,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )


def signal_group(proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
    """Signal the process group `proc` leads, if `proc` still runs."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


def stop_group(proc: subprocess.Popen[Any], grace_s: float) -> None:
    """SIGTERM the group; SIGKILL it if its leader has not exited after `grace_s`."""
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        proc.wait(5)
