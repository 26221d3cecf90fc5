"""Where a gateway's CPU goes: py-spy samples of the service processes, split into stages.

``Profiler`` runs ``py-spy record`` (from PyPI, the ``bench`` extra) on every given process for
a window (``--nonblocking``: the processes are never paused), in the raw "collapsed stacks"
format, and from those samples writes:

- ``<name>.svg``: a flame graph of all processes together (``flamegraph_svg``, self-contained);
- ``<name>.folded``: the merged samples in the collapsed-stack format (``stack count`` lines);
- ``<name>.json``: samples per stage (``STAGES``) per process and in total, and, when the run's
  CPU seconds and counts are given, a CPU budget: ms per acknowledged send and us per delivery
  for each stage (``budget``).

py-spy samples a thread only while it runs Python (idle waits in epoll are not sampled), so a
stage's share of samples is its share of the process's busy CPU; the budget spreads the CPU
seconds measured from /proc over the same window by those shares (on a box with more runnable
threads than cores, a thread waiting for a core counts as active too: the shares then say where
the processes were runnable, close to where they spent their CPU). Stacks are read leaf-first:
the stage is the first rule of ``STAGES`` whose marker appears in the stack, so a Store call made
while serving a SEND counts as "store write", not "gateway SEND". Work done in a transport's
callback (a reply parsed by asyncpg, redis or aiokafka; a client frame parsed by websockets)
has no caller on its stack: it is charged by library (aiokafka's connection, shared by the
producer and the consumer, is its own line).

    python -m loadtest.profile --pids 123 456 --seconds 20 --name profile_e2e \
        [--cpu-s 17.3 --acks 6000 --deliveries 60000]

``shardchat bench e2e|peers ... --profile`` runs it on the gateways over the send phase.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from loadtest.peers import cpu

#: (stage, markers): a stack belongs to the stage of its innermost frame of OUR code that
#: matches one of these markers (substrings of py-spy's frame labels ``function (file:line)``)...
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("store write", ("pg_store.py", "sqlite_store.py", "batcher.py")),
    ("outbox publish", ("outbox.py", "append_many (shardchat/adapters/")),
    ("decode", ("decode_event",)),
    ("fan-out", ("fanout.py", "_deliver (gateway/hub.py", "rooms.py", "outbound.py")),
    ("Kafka consume", ("gateway/consumer.py", "fetch (shardchat/adapters/")),
    (
        "session bookkeeping",
        ("_sweep_loop", "_save", "to_blob", "redis_registry.py", "gateway/session.py", "gctune"),
    ),
    ("IDENTIFY / RESUME", ("_identify", "_resume", "_subscribe", "_replay", "tokens.py")),
    ("gateway SEND", ("_send_message", "chat_core/service.py")),
)
#: ... else, work a library does on its own task or in a transport callback (a reply parsed,
#: a producer's batch sent), by library ...
LIBRARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("store write", ("asyncpg",)),
    ("outbox publish", ("aiokafka/producer",)),
    ("Kafka consume", ("aiokafka/consumer",)),
    ("session bookkeeping", ("redis/",)),
)
#: ... else the generic layer every path goes through.
GENERIC: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Kafka client I/O (both ways)", ("aiokafka",)),
    ("heartbeats and frames in", ("websockets/", "protocol/session.py", "protocol/codec.py")),
    ("metrics and logging", ("prometheus_client", "logging/")),
    ("event loop (uvloop: polling, socket reads)", ("asyncio/", "uvloop", "run (")),
)
OTHER = "other"


def _first(frames: list[str], rules: tuple[tuple[str, tuple[str, ...]], ...]) -> str | None:
    for frame in reversed(frames):
        for stage, markers in rules:
            if any(m in frame for m in markers):
                return stage
    return None


def stage_of(stack: str) -> str:
    """The stage of one collapsed stack (``root;...;leaf``), read leaf-first."""
    frames = stack.split(";")
    return _first(frames, STAGES) or _first(frames, LIBRARIES) or _first(frames, GENERIC) or OTHER


def parse_collapsed(text: str) -> Counter[str]:
    """py-spy's raw format: ``frame;frame;... count`` per line."""
    stacks: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def stages(stacks: Counter[str]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for stack, n in stacks.items():
        out[stage_of(stack)] += n
    return dict(out.most_common())


def budget(
    by_stage: dict[str, int], cpu_s: float, acks: int, deliveries: int
) -> list[dict[str, Any]]:
    """Each stage's share of ``cpu_s``: ms per acknowledged send, us per delivery."""
    total = sum(by_stage.values()) or 1
    rows = []
    for stage, n in by_stage.items():
        secs = cpu_s * n / total
        rows.append(
            {
                "stage": stage,
                "samples": n,
                "share": round(n / total, 4),
                "cpu_s": round(secs, 3),
                "cpu_ms_per_ack": round(1000 * secs / acks, 4) if acks else None,
                "cpu_us_per_delivery": round(1e6 * secs / deliveries, 2) if deliveries else None,
            }
        )
    return rows


# --- flame graph ---------------------------------------------------------------------------
def _tree(stacks: Counter[str]) -> dict[str, Any]:
    root: dict[str, Any] = {"n": 0, "kids": {}}
    for stack, n in stacks.items():
        node = root
        node["n"] += n
        for frame in stack.split(";"):
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += n
    return root


def flamegraph_svg(stacks: Counter[str], title: str, width: int = 1200) -> str:
    """A flame graph (root at the bottom) as one self-contained SVG; hover shows a frame's
    samples and share."""
    root = _tree(stacks)
    total = root["n"] or 1
    row_h = 16
    depth = max((s.count(";") + 1 for s in stacks), default=0)
    height = (depth + 1) * row_h + 30
    rects: list[str] = []

    def walk(node: dict[str, Any], x: float, level: int) -> None:
        cx = x
        for name, kid in sorted(node["kids"].items()):
            w = width * kid["n"] / total
            if w >= 0.3:  # narrower than a third of a pixel: not drawn
                y = height - (level + 1) * row_h - 5
                label = html.escape(name)
                hue = 10 + sum(map(ord, name.split(" (")[0])) % 50
                tip = f"{label} ({kid['n']} samples, {100 * kid['n'] / total:.1f}%)"
                rects.append(
                    f'<g><title>{tip}</title><rect x="{cx:.1f}" y="{y}" width="{w:.1f}" '
                    f'height="{row_h - 1}" fill="hsl({hue},85%,60%)"/>'
                    f'<text x="{cx + 2:.1f}" y="{y + row_h - 4}" font-size="11">'
                    f"{html.escape(name[: int(w / 7)])}</text></g>"
                )
                walk(kid, cx, level + 1)
            cx += w

    walk(root, 0.0, 0)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace"><rect width="100%" height="100%" fill="white"/>'
        f'<text x="4" y="16" font-size="13">{html.escape(title)} ({total} samples)</text>'
    )
    return head + "\n".join(rects) + "</svg>\n"


# --- recording -------------------------------------------------------------------------------
def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy not found: pip install -e '.[bench]'")
    return found


class Profiler:
    """``py-spy record`` on each pid from ``start`` until ``finish`` (or for ``seconds``)."""

    def __init__(self, pids: list[int], seconds: float | None = None, rate: int = 100) -> None:
        self.pids = pids
        self.seconds = seconds
        self.rate = rate
        self._dir = tempfile.TemporaryDirectory(prefix="shardchat-profile-")
        self._procs: list[tuple[int, Path, subprocess.Popen[bytes]]] = []

    def start(self) -> None:
        exe = py_spy()
        limit = 24 * 3600 if self.seconds is None else max(1, round(self.seconds))
        for pid in self.pids:
            out = Path(self._dir.name) / f"{pid}.txt"
            cmd = [exe, "record", "-p", str(pid), "-d", str(limit), "-r", str(self.rate)]
            cmd += ["-f", "raw", "-o", str(out), "--nonblocking"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self._procs.append((pid, out, proc))

    def finish(self, timeout_s: float = 60.0) -> dict[int, Counter[str]]:
        """Stop recording (py-spy writes its file on SIGINT; with ``seconds`` it is waited
        for instead); samples per pid (a process py-spy could not read gives none)."""
        out: dict[int, Counter[str]] = {}
        for pid, path, proc in self._procs:
            if self.seconds is None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait((self.seconds or 0) + timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if path.exists():
                out[pid] = parse_collapsed(path.read_text(errors="replace"))
            else:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                print(f"profile: no samples from pid {pid}: {err[-500:]}", file=sys.stderr)
        self._dir.cleanup()
        return out


def write_profile(
    samples: dict[int, Counter[str]],
    out_dir: str | Path,
    name: str,
    *,
    cpu_s: float | None = None,
    acks: int = 0,
    deliveries: int = 0,
    note: str = "",
) -> dict[str, Any]:
    """``<name>.svg`` and ``<name>.json`` in ``out_dir``; returns the JSON body."""
    merged: Counter[str] = Counter()
    for stacks in samples.values():
        merged.update(stacks)
    by_stage = stages(merged)
    body: dict[str, Any] = {
        "benchmark": "profile",
        "method": (
            "py-spy record --nonblocking -f raw on each process over the window; a stack's "
            "stage is the first rule of loadtest.profile.STAGES matched leaf-first; budget = "
            "the processes' CPU seconds (/proc) spread by stage share"
        ),
        "note": note,
        "pids": sorted(samples),
        "samples": sum(merged.values()),
        "stages": by_stage,
        "per_process": {str(pid): stages(st) for pid, st in samples.items()},
    }
    if cpu_s is not None:
        body |= {"cpu_s": cpu_s, "acks": acks, "deliveries": deliveries}
        body["budget"] = budget(by_stage, cpu_s, acks, deliveries)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.svg").write_text(flamegraph_svg(merged, name))
    # the samples themselves, for another cut by stage or another flame graph tool
    folded = "".join(f"{stack} {n}\n" for stack, n in merged.most_common())
    (out / f"{name}.folded").write_text(folded)
    (out / f"{name}.json").write_text(json.dumps(body, indent=2) + "\n")
    return body


class ProfileWindow:
    """``with ProfileWindow(pids, on):`` py-spy and /proc CPU over the block (nothing when
    ``on`` is false); ``write`` then stores the flame graph and the budget."""

    def __init__(self, pids: list[int], on: bool = True) -> None:
        self.pids = pids
        self.on = on
        self.samples: dict[int, Counter[str]] = {}
        self.cpu_s = 0.0
        self._prof: Profiler | None = None
        self._before: cpu.Snapshot = {}

    def __enter__(self) -> ProfileWindow:
        if self.on:
            self._prof = Profiler(self.pids)
            self._before = cpu.snapshot({"p": cpu.pids(*self.pids)})
            self._prof.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._prof is not None:
            self.samples = self._prof.finish()
            self.cpu_s = cpu.used(self._before, cpu.snapshot({"p": cpu.pids(*self.pids)}))["p"]

    def write(self, out_dir: str | Path, name: str, acks: int, deliveries: int, note: str) -> None:
        if self._prof is None:
            return
        body = write_profile(
            self.samples,
            out_dir,
            name,
            cpu_s=self.cpu_s,
            acks=acks,
            deliveries=deliveries,
            note=note,
        )
        print(f"profile: wrote {Path(out_dir) / name}.svg/.json", file=sys.stderr)
        print_budget(body)


def print_budget(body: dict[str, Any]) -> None:
    for row in body.get("budget", []):
        print(
            f"  {row['stage']:<26} {100 * row['share']:5.1f}%  {row['cpu_ms_per_ack']} ms/ack"
            f"  {row['cpu_us_per_delivery']} us/delivery",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.profile", description=__doc__)
    p.add_argument("--pids", type=int, nargs="+", required=True)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rate", type=int, default=100, help="samples per second")
    p.add_argument("--name", default="profile")
    p.add_argument("--out", default="loadtest/results")
    p.add_argument("--cpu-s", type=float, default=None, help="CPU seconds of the window")
    p.add_argument("--acks", type=int, default=0)
    p.add_argument("--deliveries", type=int, default=0)
    args = p.parse_args(argv)
    prof = Profiler(args.pids, args.seconds, args.rate)
    prof.start()
    body = write_profile(
        prof.finish(),
        args.out,
        args.name,
        cpu_s=args.cpu_s,
        acks=args.acks,
        deliveries=args.deliveries,
    )
    print(json.dumps(body["stages"]))
    print_budget(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
