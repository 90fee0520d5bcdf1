"""``python -m bench.imaging``: the image pipeline on each library, to choose ``imaging.DEFAULT``.

The same images (made here with Pillow from noise and gradients) go through
``agora.media.imaging.process`` once per library, each (library, image) pair in a fresh child
process so that its peak RSS is its own:

- ``median_ms``: one call at a time, the median of ``--repeat`` calls after one warm-up, and
  ``median_cpu_ms``, the CPU time of the same calls (every thread of the process: libvips runs
  its own), which other work on the machine disturbs less than the wall clock;
- ``images_per_s_2_threads``: ``--jobs`` calls through a pool of 2 threads (as the node's worker
  pool runs them), wall clock;
- ``peak_rss_mib`` and ``rss_growth_mib``: the child's peak RSS (VmHWM) over the single calls and
  how far it rose above its RSS after importing both libraries and reading the image;
  ``peak_rss_mib_2_threads``: the peak again while the 2-thread pool ran.

``vips-1`` is libvips again with ``VIPS_CONCURRENCY=1`` (one libvips worker thread per pipeline,
instead of one per core), for a pool that already runs a pipeline per core; ``vips-arena2`` is
libvips with ``MALLOC_ARENA_MAX=2``: glibc gives each thread that allocates its own arena, and
with libvips' worker threads a process's RSS settles far above what one call needs.

Prints one JSON object on stdout (progress on stderr). ``summary`` takes the images as one batch
(one upload of each); ``choice`` is the library whose batch costs less CPU time (the sum of the
per-image CPU medians): CPU time is what the node's worker pool runs out of, and it is the figure
that other work on the machine disturbs least (the 2-thread rates move by tens of percent from one
run to the next on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

MAX_PIXELS = 33_177_600  # the default AGORA_MEDIA_MAX_PIXELS
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "vips": ("vips", {}),
    "pillow": ("pillow", {}),
    "vips-1": ("vips", {"VIPS_CONCURRENCY": "1"}),
    "vips-arena2": ("vips", {"MALLOC_ARENA_MAX": "2"}),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _photo(width: int, height: int, sigma: float) -> Any:
    from PIL import Image, ImageFilter

    gradient = Image.linear_gradient("L").resize((width, height))
    grain = [
        Image.effect_noise((width, height), sigma).filter(ImageFilter.GaussianBlur(1))
        for _ in range(2)
    ]
    return Image.merge(
        "RGB",
        (
            Image.blend(gradient, grain[0], 0.5),
            grain[1],
            Image.blend(gradient.transpose(Image.Transpose.ROTATE_180), grain[0], 0.3),
        ),
    )


def make_images() -> dict[str, bytes]:
    """The bench's inputs: what phones and browsers upload, and one animation."""
    from PIL import Image

    def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
        out = io.BytesIO()
        image.save(out, fmt, **options)
        return out.getvalue()

    photo = _photo(3000, 2000, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone held upright: rotated on the way through
    alpha = _photo(1920, 1080, 20).convert("RGBA")
    alpha.putalpha(Image.radial_gradient("L").resize((1920, 1080)))
    frames = [
        _photo(480, 270, 10).rotate(angle).convert("P", palette=Image.Palette.ADAPTIVE)
        for angle in range(0, 360, 12)
    ]
    return {
        "jpeg_3000x2000": encode(photo, "JPEG", quality=85),
        "jpeg_6000x4000_rotated": encode(
            _photo(6000, 4000, 30), "JPEG", quality=80, exif=exif.tobytes()
        ),
        "png_alpha_1920x1080": encode(alpha, "PNG"),
        "webp_3000x2000": encode(photo, "WEBP", quality=85),
        "gif_animated_480x270x30": encode(
            frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0
        ),
    }


def _status_mib(field: str) -> float:
    """VmRSS or VmHWM (this process's own peak: getrusage's ru_maxrss can carry the parent's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux 4.0+), so each phase has its own peak."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def child(library: str, path: Path, repeat: int, jobs: int) -> dict[str, Any]:
    """One (library, image) pair, in this process alone."""
    from agora.media import imaging

    data = path.read_bytes()
    chosen = cast("imaging.Library", library)

    def one(_: int = 0) -> imaging.Processed:
        return imaging.process(data, max_pixels=MAX_PIXELS, library=chosen)

    baseline = _status_mib("VmRSS")
    result = one()  # warm-up
    times, cpu = [], []
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        one()
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    peak_1 = _status_mib("VmHWM")
    _reset_peak()
    with ThreadPoolExecutor(2) as pool:
        started = time.perf_counter()
        list(pool.map(one, range(jobs)))
        elapsed = time.perf_counter() - started
    peak = _status_mib("VmHWM")
    return {
        "median_ms": round(statistics.median(times) * 1000, 1),
        "median_cpu_ms": round(statistics.median(cpu) * 1000, 1),
        "images_per_s_2_threads": round(jobs / elapsed, 2),
        "peak_rss_mib": round(peak_1, 1),
        "rss_growth_mib": round(peak_1 - baseline, 1),
        "peak_rss_mib_2_threads": round(peak, 1),
        "original": [result.original.width, result.original.height, len(result.original.data)],
        "small": [result.small.width, result.small.height, len(result.small.data)],
    }


def _versions() -> dict[str, str]:
    import PIL
    import pyvips

    return {
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "libvips": f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}",
        "cpus": str(os.cpu_count()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.imaging", description=__doc__)
    parser.add_argument("--repeat", type=int, default=7, help="single calls timed per image")
    parser.add_argument("--jobs", type=int, default=12, help="calls through the 2-thread pool")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--child", nargs=2, metavar=("LIBRARY", "IMAGE"), help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], Path(a.child[1]), a.repeat, a.jobs)))
        return 0
    variants = [name.strip() for name in a.variants.split(",") if name.strip()]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        print(
            f"unknown variants: {', '.join(unknown)} (known: {', '.join(VARIANTS)})",
            file=sys.stderr,
        )
        return 1
    log("making the images")
    images = make_images()
    results: dict[str, dict[str, Any]] = {name: {} for name in variants}
    with tempfile.TemporaryDirectory(prefix="bench-imaging-") as folder:
        for image_name, data in images.items():
            path = Path(folder) / image_name
            path.write_bytes(data)
            for variant in variants:
                library, env = VARIANTS[variant]
                log(f"{variant}: {image_name}")
                done = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.imaging",
                        "--child",
                        library,
                        str(path),
                        "--repeat",
                        str(a.repeat),
                        "--jobs",
                        str(a.jobs),
                    ],
                    capture_output=True,
                    text=True,
                    env={**os.environ, **env},
                    check=False,
                )
                if done.returncode != 0:
                    print(
                        f"{variant} on {image_name} failed: {done.stderr.strip()[-500:]}",
                        file=sys.stderr,
                    )
                    return 1
                results[variant][image_name] = json.loads(done.stdout)
    # The set as one batch (one upload of each image): what it costs the worker pool in CPU, how
    # long one worker takes, and how fast 2 threads get through it.
    summary = {
        variant: {
            "set_cpu_ms": round(sum(r["median_cpu_ms"] for r in per.values()), 1),
            "set_ms": round(sum(r["median_ms"] for r in per.values()), 1),
            "set_images_per_s_2_threads": round(
                len(per) / sum(1 / r["images_per_s_2_threads"] for r in per.values()), 2
            ),
            "max_peak_rss_mib": max(r["peak_rss_mib"] for r in per.values()),
            "max_peak_rss_mib_2_threads": max(r["peak_rss_mib_2_threads"] for r in per.values()),
        }
        for variant, per in results.items()
    }
    libraries: list[str] = [v for v in ("vips", "pillow") if v in summary]
    choice = min(libraries, key=lambda v: summary[v]["set_cpu_ms"]) if libraries else None
    print(
        json.dumps(
            {
                "command": "imaging",
                "machine": _versions(),
                "repeat": a.repeat,
                "jobs_2_threads": a.jobs,
                "images": {name: len(data) for name, data in images.items()},
                "results": results,
                "summary": summary,
                "choice": choice,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
