"""Smoke tests of ``python -m bench media`` at tiny scale, in the style of tests/test_bench.py:
the command runs as its own process and must print exactly one JSON object on stdout. Nothing
here asserts on speed."""

from __future__ import annotations

import email
import email.policy
import io

import pytest
from PIL import Image, ImageChops

from agora.config import load_config
from bench.media import PhotoJpeg, multipart, split_scan
from tests.support.bench import (
    bench,
    bench_env_fixture,  # noqa: F401 (the fixture "bench_env")
    report,
)
from tests.test_bench import assert_latency


def test_every_upload_is_a_different_jpeg_of_the_same_photo() -> None:
    photo = PhotoJpeg(size=(600, 400))
    _, segments = split_scan(photo.base)
    assert len(segments) == 400 // 16  # one restart interval per MCU row
    base = Image.open(io.BytesIO(photo.base)).convert("RGB")
    variants = [photo.variant(n) for n in range(50)]
    assert len(set(variants)) == 50 and photo.base not in variants
    for data in variants[:3]:
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.format == "JPEG" and image.size == (600, 400)
        # Only the middle MCU row (rows 192..207) differs from the photo, give or take the
        # decoder's chroma upsampling, which blends one pixel row on either side.
        box = ImageChops.difference(image.convert("RGB"), base).getbbox()
        assert box is not None and box[1] >= 191 and box[3] <= 209


def test_the_upload_body_is_multipart_form_data() -> None:
    body = multipart("b0undary", b"\xff\xd8jpeg\xff\xd9", "alt text")
    head = b"Content-Type: multipart/form-data; boundary=b0undary\r\n\r\n"
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
    assert list(parts) == ["file", "description"]
    assert parts["file"].get_content_type() == "image/jpeg"
    assert parts["file"].get_payload(decode=True) == b"\xff\xd8jpeg\xff\xd9"
    assert parts["description"].get_payload(decode=True) == b"alt text"


@pytest.mark.slow
def test_media_uploads_while_sockets_ping(bench_env: dict[str, str]) -> None:
    args = ["--concurrency", "2", "--duration", "1.5", "--warmup", "0.5", "--idle", "0.5"]
    out = report(bench("media", *args, "--sockets", "3", env=bench_env, timeout=180))
    assert out["target"] == "agora-media" and out["storage"] == "local"
    assert out["met"] is None  # the goal is at concurrency 8
    assert out["first_upload"]["width"] == 3000 and out["first_upload"]["thumbnail_url"]
    upload = out["upload"]
    assert upload["uploads"] > 0 and upload["errors"] == 0
    assert upload["status"] == {"201": upload["uploads"]}
    assert_latency(upload["latency_ms"] | {"p999": upload["latency_ms"]["max"]})
    for phase in (out["idle"], upload):
        assert phase["ping"]["pings"] > 0, phase
        assert_latency(phase["ping"]["rtt_ms"] | {"p999": phase["ping"]["rtt_ms"]["max"]})
        assert phase["node_cpu_pct"] >= 0 and phase["client_loop_lag_ms"]["max"] is not None
    assert upload["node_cpu_pct"] > 0  # idle, a node may use less than a clock tick in 0.5 s
    assert out["socket_closes"] == 0 and out["node_rss_mib"] > 0
    # The run's users went, with the stored objects only their uploads used.
    assert out["cleanup"]["users"] == 3 and out["cleanup"]["objects"] >= 2 * upload["uploads"]


@pytest.mark.slow
def test_media_library_needs_a_node_that_reads_it(bench_env: dict[str, str]) -> None:
    env = {**bench_env, "AGORA_MEDIA_LIBRARY": "pillow"}
    supported = "pillow" in vars(load_config(env).media).values()
    args = ["--concurrency", "1", "--duration", "0.5", "--warmup", "0", "--idle", "0.2"]
    proc = bench("media", *args, "--sockets", "1", "--library", "pillow", env=bench_env, ok=False)
    if supported:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert report(proc)["library"] == "pillow"
    else:
        assert proc.returncode == 1 and proc.stdout == ""
        assert "AGORA_MEDIA_LIBRARY" in proc.stderr
