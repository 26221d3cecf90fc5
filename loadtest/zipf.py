"""Room sizes drawn from a Zipf-like law, so a few rooms are big and most are small.

Real chat rooms are heavy-tailed; a benchmark with uniform rooms hides the cost of fan-out to
the big ones. ``room_sizes`` is deterministic (no RNG): the k-th room's weight is 1 / k**s, and
the sizes are those weights scaled to the total, so a run is reproducible from its parameters.
"""

from __future__ import annotations

import math


def room_sizes(
    total: int,
    mean_size: float,
    exponent: float = 1.0,
    *,
    min_size: int = 2,
    max_size: int | None = None,
) -> list[int]:
    """Sizes of ``ceil(total / mean_size)`` rooms summing exactly to ``total``.

    ``exponent`` 0 gives equal rooms; 1 the classic Zipf law. Every room has at least
    ``min_size`` members (so a room always has someone to deliver to besides the sender) and at
    most ``max_size``; sizes are sorted largest first.
    """
    if total <= 0:
        return []
    if mean_size <= 0 or exponent < 0 or min_size < 1:
        raise ValueError("mean_size > 0, exponent >= 0 and min_size >= 1 are required")
    cap = total if max_size is None else max(min_size, max_size)
    rooms = max(1, min(math.ceil(total / mean_size), total // min_size or 1))
    weights = [1.0 / (k**exponent) for k in range(1, rooms + 1)]
    scale = total / sum(weights)
    sizes = [min(cap, max(min_size, int(w * scale))) for w in weights]
    _fit(sizes, total, min_size, cap)
    return sorted(sizes, reverse=True)


def _fit(sizes: list[int], total: int, min_size: int, cap: int) -> None:
    """Nudge sizes so they sum to ``total``: rounding and the min/max clamps break the sum.
    Grows the smallest rooms first (shrinks the biggest first), which keeps the shape."""
    diff = total - sum(sizes)
    while diff > 0:
        grow = [i for i, s in enumerate(sizes) if s < cap]
        if not grow:  # every room is full: add rooms of the remainder
            sizes.append(min(cap, diff))
            diff -= sizes[-1]
            continue
        for i in sorted(grow, key=lambda i: sizes[i])[:diff]:
            sizes[i] += 1
            diff -= 1
    while diff < 0:
        shrink = [i for i, s in enumerate(sizes) if s > min_size]
        if not shrink:  # cannot keep min_size: drop the last room into the others
            diff += sizes.pop()
            continue
        for i in sorted(shrink, key=lambda i: -sizes[i])[:-diff]:
            sizes[i] -= 1
            diff += 1
