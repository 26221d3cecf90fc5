"""CPU seconds of process groups from /proc, between two snapshots (Linux only).

A group is a set of root pids plus all their descendants (PostgreSQL's backends are children
of the postmaster, for example). ``snapshot`` reads utime + stime of every process of every
group; ``used`` subtracts two snapshots: a process born between them counts all its CPU, one
that died between them counts nothing after the first snapshot. Only the processes that live
through a benchmark's send phase matter here (servers, gateways, client workers, engines), so
that is exact enough.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from loadtest.memory import parse_stat, rss_kib

_PROC = Path("/proc")

Selector = Callable[["ProcTable"], Iterable[int]]


class ProcTable:
    """One scan of /proc: pid -> (ppid, cpu seconds); cmdlines read on demand."""

    def __init__(self) -> None:
        self.stat: dict[int, tuple[int, float]] = {}
        for entry in _PROC.iterdir() if _PROC.is_dir() else ():
            if entry.name.isdigit():
                parsed = read_stat(int(entry.name))
                if parsed is not None:
                    self.stat[int(entry.name)] = parsed

    def children_of(self, pid: int) -> list[int]:
        return [p for p, (ppid, _) in self.stat.items() if ppid == pid]

    def tree(self, roots: Iterable[int]) -> set[int]:
        """The roots that exist and all their descendants."""
        kids: dict[int, list[int]] = {}
        for p, (ppid, _) in self.stat.items():
            kids.setdefault(ppid, []).append(p)
        out: set[int] = set()
        todo = [r for r in roots if r in self.stat]
        while todo:
            p = todo.pop()
            if p not in out:
                out.add(p)
                todo.extend(kids.get(p, ()))
        return out


def read_stat(pid: int) -> tuple[int, float] | None:
    try:
        return parse_stat((_PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> str:
    try:
        return (
            (_PROC / str(pid) / "cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode(errors="replace")
        )
    except OSError:
        return ""


def children_matching(parent: int, *needles: str) -> Selector:
    """Direct children of ``parent`` whose command line holds every needle."""

    def select(table: ProcTable) -> list[int]:
        return [p for p in table.children_of(parent) if all(n in cmdline(p) for n in needles)]

    return select


def pids(*fixed: int) -> Selector:
    def select(table: ProcTable) -> list[int]:
        return [p for p in fixed if p in table.stat]

    return select


def pid_files(*paths: Path) -> Selector:
    """Pids from pid files (first line), read at snapshot time: PostgreSQL's postmaster.pid,
    the Kafka and Redis pid files of deploy/local."""

    def select(table: ProcTable) -> list[int]:
        out = []
        for path in paths:
            try:
                first = path.read_text().split("\n", 1)[0].strip()
            except OSError:
                continue
            if first.isdigit() and int(first) in table.stat:
                out.append(int(first))
        return out

    return select


Snapshot = dict[str, dict[int, float]]


def snapshot(groups: Mapping[str, Selector]) -> Snapshot:
    """group -> {pid: cpu seconds} over each group's process trees."""
    table = ProcTable()
    return {
        name: {p: table.stat[p][1] for p in table.tree(select(table))}
        for name, select in groups.items()
    }


def used(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds each group used between two snapshots."""
    out: dict[str, float] = {}
    for name, now in after.items():
        then = before.get(name, {})
        out[name] = round(sum(max(0.0, cpu - then.get(p, 0.0)) for p, cpu in now.items()), 2)
    return out


def loadavg() -> list[float]:
    try:
        return [float(x) for x in (_PROC / "loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def rss_mib(pid_list: Iterable[int]) -> float:
    """Resident memory of processes, MiB (VmRSS); a process gone meanwhile counts 0."""
    total = 0
    for pid in pid_list:
        with contextlib.suppress(OSError, ValueError):
            total += rss_kib(pid)
    return round(total / 1024, 1)
