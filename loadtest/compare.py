"""Regression guard: compare two benchmark JSONs, flag every figure more than 20 % worse.

    python -m loadtest.compare OLD.json NEW.json [--threshold 0.2] [--all] [--out report.json]

Works on every JSON of loadtest/results (a scenario's BenchResult, the peers wrapper, the
micro-benchmarks' own files): both files are flattened into figures, one per numeric leaf,
named by their path (``summary[shardchat].latency_ms.p99``). A list of objects is keyed by its
items' identity (``target``, ``scenario``, ``name``, ``stage``, or ``members`` + ``per_tick``
...), not by position, so adding a target does not shift the others. What is not a figure is
skipped: ``params``, ``machine``, ``timeline``, ``samples``, HDR blobs, strings.

Which way is worse is read off the figure's name (``direction``): latencies (``p50`` ...
``max``, ``*_ms``), CPU (``*_cpu_s``, ``*_cpu_pct``, ``*_us``, ``*_per_ack``), memory (``*_kib``,
``*_mib``, ``rss``), lost / duplicated / errors are worse when higher; rates (``*_per_s``,
``*_per_cpu_s``), ``speedup`` and ratios are worse when lower. Other numbers (counts that
follow the run's length) are listed with ``--all`` but never judged. A figure is flagged when
it is worse by more than ``--threshold`` (relative to the old value; from 0 to anything
non-zero counts as worse). Exit status: 1 when anything is flagged, 0 otherwise, 2 on bad input.
Figures present in only one file are reported, not flagged. The two runs' ``params`` are
compared too: a difference is printed first (the figures may then not be comparable).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

Direction = Literal["lower", "higher", "none"]

#: Subtrees that are not figures of the run.
SKIP_KEYS = frozenset(
    {"params", "machine", "timeline", "samples", "latency_hdr", "loadavg_before", "method"}
)
#: Fields that name a list item (first match wins); else the combination below, else its index.
NAME_KEYS = ("target", "scenario", "name", "stage", "benchmark")
IDENTITY_KEYS = ("members", "per_tick", "writers", "events", "encoding", "window_us")

_LOWER_EXACT = frozenset(
    {
        "p50",
        "p90",
        "p99",
        "p99_9",
        "max",
        "mean",
        "lost",
        "duplicated",
        "errors",
        "unacked",
        "gave_up",
        "connect_failed",
        "failed_targets",
        "drops",
        "rss",
    }
)
_LOWER_SUFFIXES = (
    "_ms",
    "_s_per_ack",
    "_cpu_s",
    "_cpu_pct",
    "_us",
    "_per_ack",
    "_per_delivery",
    "_per_session",
    "_kib",
    "_mib",
    "_bytes",
    "_instructions",
    "_pct_per_10k",
)
_HIGHER_SUFFIXES = ("_per_s", "_per_cpu_s", "speedup", "_ratio", "ratio")
#: Never judged even though their names look like figures: the window the CPU was read over.
_NEUTRAL = frozenset({"window_s", "duration_s", "connect_s", "all_resumed_s"})


def direction(path: str) -> Direction:
    """Which way is worse for the figure at ``path`` (its last name decides; the parent's
    name for a latency summary's ``count``-like leaves never makes them judged)."""
    leaf = path.rsplit(".", 1)[-1]
    leaf = leaf.split("[", 1)[0]
    if leaf in _NEUTRAL or leaf == "count":
        return "none"
    if leaf.endswith(_HIGHER_SUFFIXES):  # first: ``frames_per_cpu_s`` is a rate
        return "higher"
    if leaf in _LOWER_EXACT or leaf.endswith(_LOWER_SUFFIXES):
        return "lower"
    return "none"


def _item_key(item: Any, index: int) -> str:
    if isinstance(item, dict):
        for k in NAME_KEYS:
            if isinstance(item.get(k), str | int) and not isinstance(item.get(k), bool):
                return str(item[k])
        ident = [f"{k}={item[k]}" for k in IDENTITY_KEYS if k in item]
        if ident:
            return ",".join(ident)
    return str(index)


def flatten(tree: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves by path (booleans and strings are not figures)."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k in SKIP_KEYS:
                continue
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out |= flatten(v, f"{prefix}[{_item_key(v, i)}]")
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        out[prefix] = float(tree)
    return out


@dataclass(frozen=True)
class Change:
    figure: str
    old: float
    new: float
    direction: Direction
    worse_by: float  # relative, > 0 = worse; inf when it left 0
    flagged: bool


def _worse_by(old: float, new: float, way: Direction) -> float:
    if way == "none" or old == new:
        return 0.0
    delta = (new - old) if way == "lower" else (old - new)
    if old == 0:
        return float("inf") if delta > 0 else -1.0
    return delta / abs(old)


def compare(old: Any, new: Any, threshold: float = 0.2) -> list[Change]:
    """Every figure of both runs, in the new run's order (then the old-only ones)."""
    a, b = flatten(old), flatten(new)
    changes: list[Change] = []
    for figure, nv in b.items():
        if figure not in a:
            continue
        ov = a[figure]
        way = direction(figure)
        worse = _worse_by(ov, nv, way)
        changes.append(Change(figure, ov, nv, way, worse, worse > threshold))
    return changes


def params_diff(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """Top-level ``params`` that differ between the runs."""
    po = old.get("params", {}) if isinstance(old, dict) else {}
    pn = new.get("params", {}) if isinstance(new, dict) else {}
    keys = sorted(set(po) | set(pn))
    return {k: (po.get(k), pn.get(k)) for k in keys if po.get(k) != pn.get(k)}


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def report(changes: list[Change], old: Any, new: Any, show_all: bool = False) -> str:
    lines: list[str] = []
    diff = params_diff(old, new)
    if diff:
        lines.append("params differ (figures may not be comparable):")
        lines += [f"  {k}: {o!r} -> {n!r}" for k, (o, n) in diff.items()]
    a, b = set(flatten(old)), set(flatten(new))
    if a - b:
        lines.append(f"only in OLD: {len(a - b)} figures (e.g. {sorted(a - b)[0]})")
    if b - a:
        lines.append(f"only in NEW: {len(b - a)} figures (e.g. {sorted(b - a)[0]})")
    flagged = [c for c in changes if c.flagged]
    shown = changes if show_all else flagged
    for c in shown:
        if c.direction == "none":
            mark, how = " ", "not judged"
        else:
            mark = "!" if c.flagged else " "
            pct = "from 0" if c.worse_by == float("inf") else f"{c.worse_by:+.0%}"
            how = f"{pct} ({c.direction} is better)"
        lines.append(f"{mark} {c.figure}: {_fmt(c.old)} -> {_fmt(c.new)}  {how}")
    judged = sum(1 for c in changes if c.direction != "none")
    lines.append(f"{len(flagged)} of {judged} judged figures worse by more than the threshold")
    return "\n".join(lines)


def _load(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"compare: cannot read {path}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.compare", description=__doc__)
    p.add_argument("old", help="the previous recorded result (JSON)")
    p.add_argument("new", help="this run's result (JSON)")
    p.add_argument("--threshold", type=float, default=0.2, help="relative change flagged")
    p.add_argument("--all", action="store_true", help="list every common figure")
    p.add_argument("--out", help="also write the comparison as JSON here")
    args = p.parse_args(argv)
    try:
        old, new = _load(args.old), _load(args.new)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    changes = compare(old, new, args.threshold)
    print(report(changes, old, new, args.all))
    if args.out:
        body = {
            "old": args.old,
            "new": args.new,
            "threshold": args.threshold,
            "params_differ": {k: list(v) for k, v in params_diff(old, new).items()},
            "flagged": [
                asdict(c) | {"worse_by": None if c.worse_by == float("inf") else c.worse_by}
                for c in changes
                if c.flagged
            ],
            "judged": sum(1 for c in changes if c.direction != "none"),
        }
        Path(args.out).write_text(json.dumps(body, indent=2, default=str) + "\n")
    return 1 if any(c.flagged for c in changes) else 0


if __name__ == "__main__":
    sys.exit(main())
