"""Process CPU time and memory from /proc, for the gateway processes a benchmark starts.

Reading /proc (not psutil) keeps the harness dependency-free; both figures are what the kernel
charges the process, so the clients' own work is never counted against the gateway.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def parse_stat(text: str) -> tuple[int, float]:
    """(ppid, utime + stime in seconds) from the text of /proc/PID/stat (fields 4, 14, 15)."""
    # The command name (field 2) is in parentheses and may contain spaces or ')'.
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid``."""
    return parse_stat(Path(f"/proc/{pid}/stat").read_text())[1]


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def total_rss_kib(pids: list[int]) -> int:
    return sum(rss_kib(p) for p in pids if Path(f"/proc/{p}").exists())


def total_cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids if Path(f"/proc/{p}").exists())


def per_session_kib(rss_before_kib: int, rss_after_kib: int, sessions: int) -> float:
    """Idle memory per identified session: the gateways' RSS growth over the session count."""
    if sessions <= 0:
        return 0.0
    return round((rss_after_kib - rss_before_kib) / sessions, 2)
