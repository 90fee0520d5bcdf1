"""Smoke tests of ``python -m bench mixed`` at tiny scale, in the style of tests/test_bench.py:
the command runs as its own process and must print exactly one JSON object on stdout. Nothing
here asserts on speed."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bench.mixed import KINDS, _Targets, _User, crossing, parse_mix, parse_sweep
from bench.procs import BenchError
from tests.support.bench import (
    bench,
    bench_env_fixture,  # noqa: F401 (the fixture "bench_env")
    report,
)
from tests.test_bench import query

# 30 users, 4 friends each, groups of 3, 40 actions/s for 1 + 3 s. The kinds weigh the same
# here (the default mix gives `post` 5%: about 6 actions in 3 s, sometimes none).
TINY = [
    "--users",
    "30",
    "--friends",
    "4",
    "--group-size",
    "3",
    "--rate",
    "40",
    "--duration",
    "3",
    "--warmup",
    "1",
    "--mix",
    ",".join(f"{k}=1" for k in KINDS),
]
NO_USERS_LEFT = r"SELECT 1 FROM accounts.users WHERE username LIKE 'bmixed\_%'"


def test_the_mix_and_the_sweep_are_parsed() -> None:
    mix = parse_mix("feed=35,chat=20.5")
    assert mix == {**dict.fromkeys(KINDS, 0.0), "feed": 35.0, "chat": 20.5}
    for bad in ("feed=1,dance=2", "feed=x", "feed=-1", "feed=0"):
        with pytest.raises(BenchError):
            parse_mix(bad)
    assert parse_sweep("100:500:100") == [100, 200, 300, 400, 500]
    assert parse_sweep("100:550:200") == [100, 300, 500]
    assert parse_sweep("300,100,200") == [100, 200, 300]
    for bad in ("100:50:10", "1:2:0", "0,100", "a:b:c", ""):
        with pytest.raises(BenchError):
            parse_sweep(bad)


def test_the_crossing_is_interpolated_between_the_last_step_under_and_the_first_over() -> None:
    steps: list[tuple[float, float | None]] = [(100, 50.0), (200, 150.0), (300, 250.0)]
    assert crossing(steps, 200) == (250.0, None)
    assert crossing(steps, 150) == (200.0, None)  # at the threshold counts as over
    at, reason = crossing(steps, 1000)
    assert at is None and reason is not None and "never crossed up to 300" in reason
    at, reason = crossing(steps, 10)
    assert at is None and reason is not None and "first step" in reason
    assert crossing([(100, 50.0), (200, None)], 200) == (200, None)  # no p99: over


def test_targets_are_posts_the_acting_user_may_see() -> None:
    targets = _Targets(6)
    user = _User(0, 1, 1, "http://x", {}, friends=[1, 5])
    for author in range(6):
        for k in range(15):
            targets.add(author, f"{author}-{k}", public=k % 2 == 0)
    rng = random.Random(1)
    hot = {f"{a}-{k}" for a in range(6) for k in range(15) if k % 2 == 0}
    friends = {f"{a}-{k}" for a in (1, 5) for k in range(15)}
    picks = [targets.pick(rng, user, 0.8) for _ in range(2000)]
    assert all(p in hot or p in friends for p in picks)
    assert set(targets.hot) <= hot and len(targets.hot) == 20
    # hot = 0: only the friends' recent posts (the last 10 of each), uniformly
    picks = [targets.pick(rng, user, 0.0) for _ in range(2000)]
    assert set(picks) == {f"{a}-{k}" for a in (1, 5) for k in range(5, 15)}
    assert _Targets(3).pick(rng, _User(0, 1, 1, "x", {}, friends=[1]), 0.5) is None


def test_impossible_options_fail_before_anything_starts() -> None:
    for args in (
        ["--group-size", "7", "--friends", "10"],  # more than the friends on one side + 1
        ["--sweep", "10,20", "--rounds", "2"],
        ["--hot", "1.5"],
        ["--mix", "feed=1,fly=2"],
    ):
        proc = bench("mixed", *args, ok=False, timeout=30)
        assert proc.returncode == 1 and proc.stdout == "", args
        assert "error:" in proc.stderr


def check_round(run: dict[str, Any], nodes: int) -> None:
    """Every kind got actions and none failed; CPU, lag and frames are there and sane."""
    assert set(run["kinds"]) == set(KINDS)
    for kind, figures in run["kinds"].items():
        assert figures["count"] > 0 and figures["errors"] == 0, (kind, figures)
        assert figures["errors_by"] == {} and figures["error_samples"] == []
        p50, p99, top = figures["p50_ms"], figures["p99_ms"], figures["max_ms"]
        assert 0 < p50 <= p99 <= top, (kind, figures)
    assert run["errors"] == 0 and run["sockets_lost"] == 0 and run["warmup"]["errors"] == 0, run
    assert run["actions"] == sum(f["count"] for f in run["kinds"].values())
    assert run["actions_per_s"] > 0 and run["offered_per_s"] >= run["actions_per_s"]
    worst = max(run["kinds"].items(), key=lambda kv: kv[1]["p99_ms"])
    assert (run["worst_p99_kind"], run["worst_p99_ms"]) == (worst[0], worst[1]["p99_ms"])
    assert len(run["node_cpu_pct"]) == nodes
    for pct in (*run["node_cpu_pct"], run["postgres_cpu_pct"], run["bench_cpu_pct"]):
        assert 0 < pct < 100 * run["cpu_pct"]["cores"] + 20, run
    lag = run["loop_lag_ms"]
    assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"], lag
    assert run["schedule_lag_ms"]["p99"] is not None
    # Chat sends were acked and delivered to the other members; new posts reached friends'
    # sockets; reactions and comments notified their authors.
    frames = run["frames"]
    assert frames.get("ack", 0) > 0 and frames.get("message", 0) > 0, frames
    assert frames.get("post", 0) > 0 and frames.get("notification", 0) > 0, frames


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [1, 2])
def test_mixed_drives_every_kind_without_errors(
    nodes: int, bench_env: dict[str, str], database_url: str
) -> None:
    out = report(
        bench("mixed", "--nodes", str(nodes), *TINY, "--seed", "7", env=bench_env, timeout=180)
    )
    assert out["target"] == "agora-mixed" and out["nodes"] == nodes
    params = out["parameters"]
    assert params["users"] == 30 and params["rate"] == 40 and params["seed"] == 7
    assert params["sweep"] is None and params["threshold_ms"] == 200
    setup = out["setup"]
    assert setup["users"] == setup["sockets"] == setup["groups"] == 30
    assert setup["friendship_rows"] == 30 * 4 and setup["posts"] == 60
    assert len(out["runs"]) == 1
    check_round(out["runs"][0], nodes)
    assert out["goal"] == {"p99_ms_max": 200, "errors": 0}
    assert out["goal_met"] == out["runs"][0]["goal_met"]
    assert "crossing_actions_per_s" not in out
    # Every user connected, so every user saw its friends come online.
    assert out["frames"]["presence"] >= 30 and out["sockets_lost"] == 0
    assert len(out["node_rss_mib"]) == nodes
    # The run's users are gone afterwards, and what they made with them.
    assert query(database_url, NO_USERS_LEFT) == []


@pytest.mark.slow
def test_a_sweep_steps_up_and_stops_after_two_steps_over(
    bench_env: dict[str, str], database_url: str
) -> None:
    # A threshold no request can meet: both steps are over it, so the third never runs.
    args = [*TINY, "--duration", "2", "--sweep", "20,40,60", "--threshold-ms", "0.001"]
    out = report(bench("mixed", *args, env=bench_env, timeout=180))
    assert out["parameters"]["sweep"] == [20, 40, 60] and out["parameters"]["rate"] is None
    assert [run["rate"] for run in out["runs"]] == [20, 40]
    assert out["sweep_stopped_early"] is True
    for run in out["runs"]:
        check_round(run, 1)
        assert run["goal_met"] is False  # over the threshold
    assert out["goal_met"] is False
    assert out["crossing_actions_per_s"] is None
    assert "first step" in out["crossing_reason"]
    assert query(database_url, NO_USERS_LEFT) == []
