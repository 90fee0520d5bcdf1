"""``--limits on|off|both`` of ``feed`` and ``chat``: what the rate limiter costs the hot paths.

``on`` and ``off`` spawn the node(s) with ``AGORA_RATE_LIMITS=on`` or ``off`` (``on`` keeps the
bench's scale, :data:`bench.services.BENCH_RATE_LIMIT_SCALE`, so every request goes through the
limiter's Redis script and none is refused). ``both`` runs the two variants interleaved in one
invocation, a fresh node (or pair) per round, in the balanced order on, off, off, on, on, off, ...
(a drift of the machine over the run weighs on both variants alike), and reports per variant the
median over its rounds of each figure, the deltas (on against off) and whether they meet the
issue's goal: under 5% less throughput and under 1 ms added p99.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from bench.procs import BenchError

VARIANTS = ("on", "off")
CHOICES = (*VARIANTS, "both")
GOAL = {"throughput_drop_pct_max": 5.0, "p99_added_ms_max": 1.0}


def limits_env(variant: str) -> dict[str, str]:
    """The node environment of one variant (on top of ``Services.node_env``)."""
    if variant not in VARIANTS:
        raise ValueError(f"limits variant must be one of {VARIANTS}, got {variant!r}")
    return {"AGORA_RATE_LIMITS": variant}


def schedule(rounds: int) -> list[str]:
    """The variants in running order: ``rounds`` of each, on/off then off/on alternately."""
    order: list[str] = []
    for r in range(rounds):
        order += list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
    return order


def median(values: Sequence[float | None]) -> float | None:
    """Median of the values present (``None`` when there are none), rounded for the report."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def summarise(rounds: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Per figure in ``keys`` (dotted paths such as ``latency_ms.p99``), the median over the
    rounds, nested as in a round; ``errors`` are summed instead."""
    out: dict[str, Any] = {}
    for key in keys:
        values = [_get(r, key) for r in rounds]
        parts = key.split(".")
        at = out
        for part in parts[:-1]:
            at = at.setdefault(part, {})
        at[parts[-1]] = sum(v or 0 for v in values) if key == "errors" else median(values)
    return out


def _get(data: Mapping[str, Any], key: str) -> Any:
    value: Any = data
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def pct_change(on: float | None, off: float | None) -> float | None:
    """``(on - off) / off`` in percent: negative when the limiter costs throughput."""
    if on is None or not off:
        return None
    return round(100 * (on - off) / off, 2)


def diff(on: float | None, off: float | None) -> float | None:
    """``on - off`` (ms added by the limiter when positive)."""
    if on is None or off is None:
        return None
    return round(on - off, 3)


def goal_met(throughput_pct: float | None, p99_added: Sequence[float | None], errors: int) -> bool:
    """The issue's goal: less than 5% lower throughput, less than 1 ms added to each p99,
    and no errors in any round."""
    return (
        errors == 0
        and throughput_pct is not None
        and throughput_pct > -GOAL["throughput_drop_pct_max"]
        and all(d is not None and d < GOAL["p99_added_ms_max"] for d in p99_added)
    )


async def probe(url: str, token: str, path: str = "/api/v1/users/me") -> int | None:
    """One authenticated ``GET`` before a round: its ``X-RateLimit-Limit`` (``None`` when the
    node counts nothing, as with limits off), so the report shows which variant really ran."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.get(url + path, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        await resp.read()
        if resp.status != 200:
            raise BenchError(f"GET {path} answered {resp.status} before the round")
        raw = resp.headers.get("X-RateLimit-Limit")
    return int(raw) if raw else None
