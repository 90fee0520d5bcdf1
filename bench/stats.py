"""Latency recording: every sample kept, percentiles exact.

Recording is one ``array.append`` of a float (8 bytes, no object per sample), the cheapest thing
the client can do per request on a 2-core box where it competes with the server for CPU. A
30-second run at 20,000 requests/s is 600,000 samples, under 5 MiB; sorting them once at the end
takes well under a second. Percentiles use the nearest-rank definition (the smallest sample with
at least ``q`` of the samples at or below it), as HdrHistogram and wrk report them.
"""

from __future__ import annotations

import math
from array import array


class Recorder:
    """Latency samples in seconds."""

    __slots__ = ("samples",)

    def __init__(self) -> None:
        self.samples = array("d")

    def record(self, seconds: float) -> None:
        """Add one sample (seconds)."""
        self.samples.append(seconds)

    def __len__(self) -> int:
        return len(self.samples)

    def summary_ms(self) -> dict[str, float | None]:
        """``p50``, ``p90``, ``p99``, ``p999``, ``max``, ``mean`` in ms (``None`` when empty)."""
        ordered = sorted(self.samples)
        n = len(ordered)
        out: dict[str, float | None] = {}
        for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)):
            out[name] = _ms(ordered[max(0, math.ceil(q * n) - 1)]) if n else None
        out["max"] = _ms(ordered[-1]) if n else None
        out["mean"] = _ms(math.fsum(ordered) / n) if n else None
        return out


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def per_second(count: int, seconds: float) -> float:
    """``count / seconds`` rounded for the report (0 when no time passed)."""
    return round(count / seconds, 1) if seconds > 0 else 0.0
