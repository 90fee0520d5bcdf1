"""Smoke tests of the benchmark suite (``python -m bench``) at tiny scale, on the real services.

Each command runs as its own process, as it does for real, and must print exactly one JSON
object on stdout. Nothing here asserts on speed: only that the figures are present, sane and
consistent, and that the seeded data is exactly what it claims to be.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from agora.config import load_config
from bench.httpclient import ProtocolError, ResponseParser, build_get
from bench.limits import limits_env, schedule
from bench.seed import remove_bench_data
from bench.services import BENCH_RATE_LIMIT_SCALE, Services
from bench.stats import Recorder
from tests.conftest import JWT_SECRET
from tests.support.bench import (
    bench,
    bench_env_fixture,  # noqa: F401 (the fixture "bench_env")
    report,
)
from tests.support.services import ServiceSet

SEED = [
    "--users",
    "40",
    "--friends",
    "6",
    "--posts",
    "300",
    "--reactions",
    "400",
    "--comments",
    "150",
]


def assert_latency(summary: dict[str, float | None]) -> None:
    p50, p99, p999, top = summary["p50"], summary["p99"], summary["p999"], summary["max"]
    assert p50 is not None and p99 is not None and p999 is not None and top is not None
    assert 0 <= p50 <= p99 <= p999 <= top


async def _query(database_url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def query(database_url: str, sql: str) -> list[asyncpg.Record]:
    return asyncio.run(_query(database_url, sql))


BENCH_USERS = r"(SELECT id FROM accounts.users WHERE username LIKE 'bench\_%')"


@pytest.fixture(scope="module")
def seeded(bench_env: dict[str, str], database_url: str) -> Iterator[dict[str, Any]]:
    """The tiny seed, once for this module; its users and content removed afterwards."""
    result = report(bench("seed", *SEED, env=bench_env))
    yield result
    asyncio.run(_remove_bench_data(database_url))


async def _remove_bench_data(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await remove_bench_data(conn)
    finally:
        await conn.close()


# -- units ------------------------------------------------------------------------------------


def test_response_parser_handles_split_responses_and_framing_errors() -> None:
    parser = ResponseParser()
    body = b'{"items":[]}'
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n" + body
    assert parser.feed(raw[:10]) is None
    assert parser.feed(raw[10:-3]) is None
    assert parser.feed(raw[-3:]) == (200, len(raw))
    no_content = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n"
    assert parser.feed(no_content) == (204, len(no_content))
    not_found = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
    assert parser.feed(not_found) == (404, len(not_found))
    with pytest.raises(ProtocolError):
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert build_get("h", 1, "/x", {"Authorization": "Bearer t"}).endswith(
        b"Authorization: Bearer t\r\n\r\n"
    )


def test_recorder_uses_nearest_rank_percentiles() -> None:
    rec = Recorder()
    for ms in range(1, 1001):
        rec.record(ms / 1000)
    summary = rec.summary_ms()
    assert summary["p50"] == 500 and summary["p99"] == 990 and summary["p999"] == 999
    assert summary["max"] == 1000
    assert Recorder().summary_ms()["p99"] is None


# -- baselines --------------------------------------------------------------------------------


def test_baseline_http_reports_sane_figures() -> None:
    out = report(bench("baseline-http", "--concurrency", "4", "--duration", "1", "--warmup", "0.5"))
    assert out["target"] == "baseline-http"
    assert out["requests"] > 0 and out["requests_per_s"] > 0
    assert out["errors"] == 0 and out["status"] == {"200": out["requests"]}
    assert out["concurrency"] == 4 and out["duration_s"] == 1
    assert out["bytes"] == out["requests"] * (out["bytes"] // out["requests"])  # same size each
    assert out["body_bytes"] > 5000  # a 20-post page
    assert out["server_rss_mib"] > 0
    assert_latency(out["latency_ms"])


def test_baseline_ws_delivers_every_message() -> None:
    out = report(
        bench(
            "baseline-ws",
            "--conversations",
            "3",
            "--members",
            "3",
            "--senders",
            "2",
            "--rate",
            "60",
            "--duration",
            "1",
            "--warmup",
            "0.5",
        )
    )
    assert out["target"] == "baseline-ws" and out["connections"] == 9 and out["senders"] == 2
    assert out["sends"] > 0 and out["deliveries_per_s"] > 0
    assert out["errors"] == 0 and out["missing_acks"] == 0 and out["missing_deliveries"] == 0
    assert out["duplicates"] == 0
    assert_latency(out["ack_ms"])
    assert_latency(out["delivery_ms"])
    assert len(out["server_rss_mib"]) == 1


# -- seed -------------------------------------------------------------------------------------


def assert_seed_consistent(database_url: str, result: dict[str, Any]) -> None:
    [row] = query(
        database_url,
        f"""
        SELECT
          (SELECT count(*) FROM accounts.users WHERE id IN {BENCH_USERS}) AS users,
          (SELECT count(*) FROM social.friendships WHERE user_id IN {BENCH_USERS}) AS friendships,
          (SELECT count(*) FROM social.friendships f WHERE f.user_id IN {BENCH_USERS}
              AND NOT EXISTS (SELECT 1 FROM social.friendships r
                              WHERE r.user_id = f.friend_id AND r.friend_id = f.user_id))
              AS one_way,
          (SELECT count(*) FROM content.posts WHERE author_id IN {BENCH_USERS}) AS posts,
          (SELECT count(*) FROM content.reactions r JOIN content.posts p ON p.id = r.post_id
              WHERE p.author_id IN {BENCH_USERS}) AS reactions,
          (SELECT count(*) FROM content.comments c JOIN content.posts p ON p.id = c.post_id
              WHERE p.author_id IN {BENCH_USERS}) AS comments,
          (SELECT count(*) FROM content.posts WHERE author_id IN {BENCH_USERS}
              AND (id >> 12) <> floor(extract(epoch FROM created_at) * 1000)::bigint
                                - 1735689600000) AS ids_not_from_created_at
    """,
    )
    assert row["users"] == result["users"] == 40
    assert row["posts"] == result["posts"] == 300
    assert sum(result["posts_by_visibility"].values()) == 300
    assert row["friendships"] == result["friendship_rows"] > 0
    assert row["one_way"] == 0
    assert row["reactions"] == result["reactions"] > 0
    assert row["comments"] == result["comments"] == 150
    assert row["ids_not_from_created_at"] == 0

    # Every bench post has exactly one post_stats row, equal to the aggregates of its rows, and
    # no pending counter deltas (the rebuild took them in).
    wrong = query(
        database_url,
        f"""
        SELECT p.id FROM content.posts p
        LEFT JOIN content.post_stats s ON s.post_id = p.id
        WHERE p.author_id IN {BENCH_USERS} AND (s.post_id IS NULL
           OR EXISTS (SELECT 1 FROM content.post_stat_deltas d WHERE d.post_id = p.id)
           OR s.comment_count <> (SELECT count(*) FROM content.comments c WHERE c.post_id = p.id)
           OR (s.like_count, s.love_count, s.haha_count, s.wow_count, s.sad_count, s.angry_count)
              <> (SELECT count(*) FILTER (WHERE type = 'like'),
                         count(*) FILTER (WHERE type = 'love'),
                         count(*) FILTER (WHERE type = 'haha'),
                         count(*) FILTER (WHERE type = 'wow'),
                         count(*) FILTER (WHERE type = 'sad'),
                         count(*) FILTER (WHERE type = 'angry')
                  FROM content.reactions r WHERE r.post_id = p.id))""",
    )
    assert wrong == []
    # Reactions and comments come from the author or their friends, after the post.
    strangers = query(
        database_url,
        f"""
        SELECT 1 FROM content.reactions r JOIN content.posts p ON p.id = r.post_id
        WHERE p.author_id IN {BENCH_USERS} AND (r.created_at < p.created_at OR NOT EXISTS (
            SELECT 1 FROM social.friendships f WHERE f.user_id = p.author_id
                                                 AND f.friend_id = r.user_id))""",
    )
    assert strangers == []


def test_seed_builds_a_consistent_graph(seeded: dict[str, Any], database_url: str) -> None:
    assert seeded["target"] == "seed"
    assert set(seeded["timings_s"]) >= {"users", "friendships", "posts", "post_stats", "total"}
    assert_seed_consistent(database_url, seeded)


def test_seed_refuses_to_run_twice_and_resets_cleanly(
    seeded: dict[str, Any], database_url: str, bench_env: dict[str, str]
) -> None:
    again = bench("seed", *SEED, env=bench_env, ok=False)
    assert again.returncode == 1 and again.stdout == ""
    assert "--reset" in again.stderr
    assert_seed_consistent(database_url, seeded)  # untouched

    redone = report(bench("seed", *SEED, "--reset", env=bench_env))
    assert "reset" in redone["timings_s"]
    assert_seed_consistent(database_url, redone)


# -- against real nodes -----------------------------------------------------------------------


@pytest.mark.slow
def test_feed_drives_a_spawned_node_as_seeded_users(
    seeded: dict[str, Any], bench_env: dict[str, str]
) -> None:
    out = report(
        bench(
            "feed",
            "--users",
            "3",
            "--concurrency",
            "3",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            "--no-baseline",
            env=bench_env,
            timeout=120,
        )
    )
    assert out["users"] == 3 and out["baseline_http"] is None and out["met"] is None
    feed = out["feed"]
    assert feed["requests"] > 0 and feed["errors"] == 0, feed
    assert_latency(feed["latency_ms"])
    assert out["node_rss_mib"] > 0


@pytest.mark.slow
def test_chat_on_two_nodes_reports_every_figure(
    bench_env: dict[str, str], database_url: str
) -> None:
    out = report(
        bench(
            "chat",
            "--nodes",
            "2",
            "--conversations",
            "2",
            "--members",
            "3",
            "--rate",
            "20",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            env=bench_env,
            timeout=120,
        )
    )
    assert out["target"] == "agora-chat" and out["nodes"] == 2 and out["sends"] > 0
    for key in (
        "sends_per_s",
        "deliveries_per_s",
        "ack_ms",
        "delivery_ms",
        "errors",
        "missing_acks",
        "missing_deliveries",
    ):
        assert key in out
    # Every send acked once, every member got it, nothing repeated: the figures count real work.
    assert out["errors"] == out["missing_acks"] == out["missing_deliveries"] == 0, out
    assert out["duplicates"] == 0, out
    assert out["deliveries_per_s"] > 0 and out["delivery_ms"]["p50"] > 0, out
    assert len(out["server_rss_mib"]) == 2
    # The run's users are gone afterwards.
    assert query(database_url, r"SELECT 1 FROM accounts.users WHERE username LIKE 'bchat\_%'") == []


@pytest.mark.slow
def test_chat_room_fan_out_from_a_few_senders_loses_and_repeats_nothing(
    bench_env: dict[str, str],
) -> None:
    # The room fan-out shape (one big room, a few senders, everyone listening), small and short.
    out = report(
        bench(
            "chat",
            "--nodes",
            "1",
            "--conversations",
            "1",
            "--members",
            "12",
            "--senders",
            "2",
            "--rate",
            "150",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            env=bench_env,
            timeout=120,
        )
    )
    assert out["connections"] == 12 and out["senders"] == 2 and out["sends"] > 0, out
    assert out["errors"] == out["missing_acks"] == out["missing_deliveries"] == 0, out
    # 75 frames/s per sender is over the default frame limit (20/s, burst 40): the bench's nodes
    # run without it, so nobody is closed or refused.
    assert out["duplicates"] == 0 and out["closes"] == 0 and out["error_frames"] == 0, out
    assert out["deliveries_per_s"] > 0, out
    assert_latency(out["ack_ms"])
    assert_latency(out["delivery_ms"])
    assert len(out["server_cpu_pct"]) == 1


def test_senders_must_fit_in_a_room() -> None:
    proc = bench("baseline-ws", "--members", "3", "--senders", "4", ok=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "--senders" in proc.stderr


@pytest.mark.slow
def test_connections_opens_and_measures(bench_env: dict[str, str]) -> None:
    out = report(bench("connections", "--count", "30", "--batch", "10", env=bench_env, timeout=120))
    assert out["count"] == 30 and out["users"] == 30
    assert out["rss_before_mib"] > 0 and out["rss_after_mib"] > 0
    assert out["rss_per_connection_kib"] is not None


@pytest.mark.slow
def test_events_measures_writes_relay_and_backlog(
    seeded: dict[str, Any], bench_env: dict[str, str], database_url: str, services: ServiceSet
) -> None:
    # Over RabbitMQ when the test services have it (the bench's own queue then measures the
    # relay lag), in-process otherwise.
    amqp = services.amqp_url is not None
    env = {**bench_env, **({"AGORA_AMQP_URL": services.amqp_url} if amqp else {})}
    out = report(
        bench(
            "events",
            *(["--amqp"] if amqp else []),
            "--rate",
            "40",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            "--users",
            "5",
            "--connections",
            "2",
            "--backlog",
            "300",
            env=env,
            timeout=180,
        )
    )
    assert out["target"] == "agora-events"
    assert out["transport"] == ("rabbitmq" if amqp else "in-process")
    assert out["parameters"]["rate"] == 40 and out["parameters"]["backlog"] == 300
    s = out["sustained"]
    assert s["writes"] == 40 and s["completed"] == 40 and s["errors"] == 0, s
    assert sum(k["writes"] for k in s["by_kind"].values()) == 40
    assert_latency(s["latency_ms"])
    # Every write commits one event (a reaction always changes type), and all were relayed.
    assert s["events_committed"] > 0 and s["outbox_sent_lag_ms"]["events"] == s["events_committed"]
    assert s["drained"] and s["events_published_per_s"] > 0
    if amqp:
        assert s["relay_lag_ms"]["events"] > 0 and s["relay_lag_ms"]["p50"] is not None
    else:
        assert s["relay_lag_ms"] is None and s["broker_events_per_s"] is None
    lag = s["consumer_lag_ms"]  # null until the app runs the notifications consumer
    assert lag is None or 0 <= lag["p50"] <= lag["p99"]
    assert len(s["node_cpu_pct"]) == 1 and s["cpu_pct"]["machine"] is not None

    t = out["throughput"]
    assert t["relay_alone"]["complete"] and t["relay_alone"]["relay"]["events"] == 300
    assert t["relay_and_consumer"]["complete"]
    assert t["relay_and_consumer"]["relay"]["events"] == 300
    if t["consumer_bound"]:
        assert t["consumer_alone"]["consumer"]["events"] == 300
    assert t["outbox_rows_removed"] == 600
    # Nothing left waiting, and the run's login sessions are gone.
    [row] = query(
        database_url,
        """SELECT (SELECT count(*) FROM events.outbox WHERE sent_at IS NULL) AS unsent,
                  (SELECT count(*) FROM accounts.login_sessions
                   WHERE user_agent = 'agora-bench-events') AS sessions""",
    )
    assert row["unsent"] == 0 and row["sessions"] == 0


# -- rate limits: spawned nodes never trip them; --limits on|off|both ---------------------------


def test_spawned_nodes_get_limits_out_of_reach_unless_the_caller_sets_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("AGORA_"):
            monkeypatch.delenv(name)
    services = Services(
        load_config(
            {"AGORA_DATABASE_URL": "postgresql://u@127.0.0.1/db", "AGORA_JWT_SECRET": JWT_SECRET}
        )
    )
    env = services.node_env("n")
    assert env["AGORA_RATE_LIMIT_SCALE"] == BENCH_RATE_LIMIT_SCALE
    limits = load_config(env).limits
    assert limits.enabled and limits["register"].limit >= 5_000_000, limits["register"]
    assert limits["login"].limit >= 25_000_000 and limits["api"].limit >= 300_000_000
    # The variants of --limits: on (still scaled), off.
    assert load_config(services.node_env("n", **limits_env("on"))).limits.enabled
    assert not load_config(services.node_env("n", **limits_env("off"))).limits.enabled
    # The caller's own limits are left alone.
    monkeypatch.setenv("AGORA_RATE_LIMIT_LOGIN", "3/60")
    env = services.node_env("n")
    assert "AGORA_RATE_LIMIT_SCALE" not in env
    assert load_config(env).limits["login"].limit == 3
    monkeypatch.delenv("AGORA_RATE_LIMIT_LOGIN")
    monkeypatch.setenv("AGORA_RATE_LIMIT_SCALE", "2")
    assert services.node_env("n")["AGORA_RATE_LIMIT_SCALE"] == "2"
    # Balanced interleaving: on off off on ...
    assert schedule(3) == ["on", "off", "off", "on", "on", "off"]


def test_limits_both_needs_a_spawned_node_and_two_rounds() -> None:
    proc = bench("feed", "--limits", "both", "--url", "http://127.0.0.1:9", ok=False)
    assert proc.returncode == 1 and proc.stdout == "" and "--url" in proc.stderr
    proc = bench("chat", "--limits", "bogus", ok=False)
    assert proc.returncode == 2 and proc.stdout == ""


def assert_limits_report(out: dict[str, Any], figures: tuple[str, ...]) -> None:
    """The shape of a ``--limits both`` report (no timing assertions)."""
    assert out["limits"] == "both" and out["parameters"]["rounds"] == 2
    assert out["rate_limit_scale"] == BENCH_RATE_LIMIT_SCALE
    assert out["order"] == ["on", "off", "off", "on"]
    assert set(out["variants"]) == {"on", "off"}
    for variant, summary in out["variants"].items():
        assert len(summary["rounds"]) == 2 and summary["errors"] == 0, summary
        for name in figures:
            group, _, key = name.partition(".")
            value = summary[group][key] if key else summary[group]
            assert value is not None and value >= 0, (variant, name, summary)
        for one in summary["rounds"]:
            # The node of each round really ran that variant: limits on answer X-RateLimit-*.
            if variant == "on":
                assert one["x_ratelimit_limit"] >= 300 * int(BENCH_RATE_LIMIT_SCALE), one
            else:
                assert one["x_ratelimit_limit"] is None, one
            assert one["cpu_pct"]["machine"] is not None
    assert out["goal"] == {"throughput_drop_pct_max": 5.0, "p99_added_ms_max": 1.0}
    assert all(v is None or isinstance(v, float | int) for v in out["delta"].values())
    assert isinstance(out["met"], bool)


@pytest.mark.slow
def test_feed_limits_both_compares_the_variants(
    seeded: dict[str, Any], bench_env: dict[str, str]
) -> None:
    out = report(
        bench(
            "feed",
            "--limits",
            "both",
            "--rounds",
            "2",
            "--users",
            "3",
            "--concurrency",
            "3",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            env=bench_env,
            timeout=180,
        )
    )
    assert out["target"] == "agora-feed-limits" and out["users"] == 3
    assert_limits_report(
        out, ("requests_per_s", "latency_ms.p50", "latency_ms.p99", "node_cpu_us_per_request")
    )
    assert set(out["delta"]) >= {"requests_per_s_pct", "p50_ms", "p99_ms"}
    assert out["delta"]["requests_per_s_pct"] is not None and out["delta"]["p99_ms"] is not None


@pytest.mark.slow
def test_chat_limits_both_compares_the_variants(
    bench_env: dict[str, str], database_url: str
) -> None:
    out = report(
        bench(
            "chat",
            "--limits",
            "both",
            "--rounds",
            "2",
            "--conversations",
            "2",
            "--members",
            "3",
            "--rate",
            "20",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            env=bench_env,
            timeout=180,
        )
    )
    assert out["target"] == "agora-chat-limits" and out["nodes"] == 1
    assert_limits_report(
        out, ("deliveries_per_s", "ack_ms.p50", "ack_ms.p99", "delivery_ms.p99", "node_cpu_pct")
    )
    assert set(out["delta"]) >= {"deliveries_per_s_pct", "ack_p99_ms", "delivery_p99_ms"}
    for variant in out["variants"].values():
        for one in variant["rounds"]:
            assert one["sends_per_s"] > 0 and one["errors"] == 0, one
    assert query(database_url, r"SELECT 1 FROM accounts.users WHERE username LIKE 'bchat\_%'") == []
