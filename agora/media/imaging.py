"""The image pipeline: untrusted bytes in, clean re-encoded renditions and a blurhash out.

``process(data, max_pixels=...)`` is synchronous and CPU-bound; the caller runs it in a bounded
worker pool (threads or processes: everything here is importable and picklable at module level and
keeps no state between calls).

What it guarantees, in order:

1. **The bytes decide the type.** :func:`sniff` reads the magic number (JPEG, PNG, GIF, WebP);
   a name or a declared type is never consulted. Only that format's decoder is then used (Pillow's
   ``formats=[...]``, libvips' ``jpegload_buffer`` etc.), so no other loader ever sees the bytes.
2. **Decompression bombs are refused before decoding.** The dimensions are read by a small parser
   of our own from the header (JPEG SOF, PNG IHDR, GIF logical screen and every frame descriptor,
   WebP VP8/VP8L/VP8X and its ANMF frames) and ``width x height x frames`` over ``max_pixels``
   raises :class:`TooManyPixels` without a pixel decoded. The library's own reading of the header
   is checked against the same budget, libvips loads with ``access="sequential"`` and
   ``fail_on="error"``, and Pillow's ``DecompressionBombError`` is answered as TooManyPixels too.
3. **The image is really decoded**, every frame: a truncated file or one whose body is not what
   its magic says raises :class:`Refused`; no decoder error escapes as anything else.
4. **Polyglots are refused** (:class:`Refused`): a file that is also a web page, a script or an
   archive (an HTML, SVG, PHP or script tag anywhere in it, or a ZIP's central directory at its
   end) is what a polyglot is for; the rest of a file is not checked that way, so phones'
   JPEGs, which append secondary images after the first, are taken. Whatever is accepted is
   re-encoded from decoded pixels anyway, so nothing of the input but the pixels and the ICC
   profile reaches the output (HTML inside EXIF/XMP/comments is dropped with them). The ICC
   profile is kept only when littlecms parses it as a profile.
5. **Orientation is applied** (EXIF orientation 2-8), then **all metadata is dropped** (EXIF with
   GPS and camera make/model, XMP, IPTC, comments) except the ICC colour profile, which both
   renditions keep. CMYK JPEGs become sRGB and lose their (CMYK) profile.
6. **Renditions.** ``original``: same format as sent, fitting 3840x2160 for landscape or 2160x3840
   for portrait (aspect kept, never upscaled); an animated GIF or WebP stays animated with its
   frame delays and loop count. ``small``: about 640x360 in area (230,400 pixels, aspect kept,
   never upscaled), a still: JPEG when opaque (an alpha channel that is all opaque counts as
   opaque), WebP when any pixel is transparent; for an animation, its first frame. ``blurhash``:
   4x4 components of the small rendition (transparency flattened onto white). An APNG gives its
   default image, a still PNG; GIF outputs carry no ICC profile (the small rendition of a GIF
   does, when the GIF had one).

Both libraries give the same renditions (same sizes, formats, quality settings: JPEG q85
progressive, WebP q80, PNG zlib level 6 with adaptive filters, GIF without dithering).

``DEFAULT = "vips"``, by ``python -m bench.imaging`` (libvips 8.18 from pyvips-binary, Pillow 13,
2 cores; CPU ms per call, libvips / Pillow): 1 MB 3000x2000 JPEG 146 / 173, 6000x4000 JPEG 292 /
570, 1920x1080 PNG with alpha 516 / 1119, 3000x2000 WebP 653 / 628, 30-frame 480x270 GIF 592 /
109; the five together 2.2 s / 2.6 s of CPU. libvips' weak spot is GIF encoding (cgif quantises
every frame); its peak RSS is higher (303 / 204 MiB at most, one call at a time) because glibc
gives its worker threads their own malloc arenas: ``MALLOC_ARENA_MAX=2`` brings it to 200 MiB.
The vips path sets libvips' operation cache to 0 and blocks its untrusted loaders, process-wide.
"""

from __future__ import annotations

import io
import math
import operator
import re
import struct
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

import pyvips
from PIL import (
    GifImagePlugin,  # noqa: F401  (the four plugins register themselves: no lazy Image.init())
    Image,
    ImageCms,
    JpegImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    WebPImagePlugin,  # noqa: F401
)

ContentType = Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
Library = Literal["vips", "pillow"]

DEFAULT: Final[Library] = "vips"

ORIGINAL_LONG_SIDE: Final = 3840
ORIGINAL_SHORT_SIDE: Final = 2160
SMALL_AREA: Final = 640 * 360
BLURHASH_COMPONENTS: Final = 4
JPEG_QUALITY: Final = 85
WEBP_QUALITY: Final = 80
PNG_COMPRESSION: Final = 6
DEFAULT_FRAME_MS: Final = 100

NOT_AN_IMAGE: Final = "the file is not a JPEG, PNG, GIF or WebP image"

_NAMES: Final[dict[ContentType, str]] = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WebP",
}


class Refused(Exception):
    """The bytes are not an image Agora accepts; ``str(exc)`` is a message for a person."""


class TooManyPixels(Refused):
    """width x height (x frames) over the limit, found from the header before decoding."""


@dataclass(frozen=True)
class Rendition:
    data: bytes
    content_type: ContentType
    width: int
    height: int


@dataclass(frozen=True)
class Processed:
    original: Rendition
    small: Rendition
    blurhash: str
    animated: bool


def sniff(head: bytes) -> ContentType | None:
    """The type the first bytes (at least 16) announce by magic number, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


POLYGLOT = "the file is also something else than an image (markup, a script or an archive)"
# Markup a browser or a server would run, anywhere in the file (7+ bytes each: compressed image
# data holds them by chance about once in 2**56 positions), and the end of a ZIP archive.
_SMUGGLED = re.compile(
    rb"<(?:script|html|!doctype html|svg|iframe|body|\?php)[\s>/]", re.IGNORECASE
)
_ZIP_END = b"PK\x05\x06"


def smuggled(data: bytes) -> bool:
    """Whether the file carries a page, a script or an archive besides the image."""
    return _SMUGGLED.search(data) is not None or _ZIP_END in data[-65_557:]


def process(data: bytes, *, max_pixels: int, library: Library = DEFAULT) -> Processed:
    """Decode, check, orient, strip, downscale and re-encode an uploaded image.

    Raises :class:`Refused` (or its subclass :class:`TooManyPixels`) for any input that is not an
    acceptable image; never anything else for bad input.
    """
    if library not in ("vips", "pillow"):
        raise ValueError(f"unknown imaging library {library!r}")
    content_type = sniff(data[:16])
    if content_type is None:
        raise Refused(NOT_AN_IMAGE)
    if smuggled(data):
        raise Refused(POLYGLOT)
    header = _read_header(content_type, data)
    _check_budget(header.width, header.height, header.frames, max_pixels)
    try:
        if library == "vips":
            return _vips_process(data, content_type, header, max_pixels)
        return _pillow_process(data, content_type, header, max_pixels)
    except (Refused, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"the image has more than {max_pixels:,} pixels") from exc
    except Exception as exc:  # any decoder's error on hostile input is the input's fault
        raise Refused(_damaged(content_type)) from exc


# ---------------------------------------------------------------------------------------------
# Headers: dimensions and frame count, read without decoding.


class _Header(NamedTuple):
    width: int
    height: int
    frames: int


def _damaged(content_type: ContentType) -> str:
    return f"the {_NAMES[content_type]} file is truncated or damaged"


def _check_budget(width: int, height: int, frames: int, max_pixels: int) -> None:
    if width * height * frames > max_pixels:
        in_frames = f" in {frames} frames" if frames > 1 else ""
        raise TooManyPixels(
            f"the image is {width}x{height} pixels{in_frames}, "
            f"more than the {max_pixels:,} pixels allowed"
        )


def _read_header(content_type: ContentType, data: bytes) -> _Header:
    reader = {
        "image/jpeg": _jpeg_header,
        "image/png": _png_header,
        "image/gif": _gif_header,
        "image/webp": _webp_header,
    }[content_type]
    try:
        header = reader(data)
    except (IndexError, struct.error, ValueError):
        header = None
    if header is None or header.width <= 0 or header.height <= 0 or header.frames <= 0:
        raise Refused(_damaged(content_type))
    return header


def _png_header(data: bytes) -> _Header | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    # An APNG's extra frames are ignored by both decoders: only the default image is decoded.
    return _Header(width, height, 1)


# Start-of-frame markers (not DHT C4, JPG C8, DAC CC).
_SOF: Final = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)


def _jpeg_header(data: bytes) -> _Header | None:
    i, end = 2, len(data)
    while i < end:
        if data[i] != 0xFF:  # stray bytes between segments: libjpeg skips them too
            i += 1
            continue
        while i < end and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= end:
            return None
        marker = data[i]
        i += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            continue
        if marker in (0xD9, 0xDA):  # end of image or a scan before any frame header
            return None
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            return None
        if marker in _SOF:
            if i + 7 > end:
                return None
            height, width = struct.unpack_from(">HH", data, i + 3)
            return _Header(width, height, 1)
        i += length
    return None


def _skip_sub_blocks(data: bytes, i: int) -> int:
    """The index after a chain of data sub-blocks; past the end if the file stops inside it."""
    end = len(data)
    while i < end:
        size = data[i]
        i += 1
        if size == 0:
            return i
        i += size
    return end + 1


def _gif_header(data: bytes) -> _Header | None:
    """The canvas (logical screen, grown to hold every frame, as Pillow does) and the frames."""
    if len(data) < 13:
        return None
    width, height = struct.unpack_from("<HH", data, 6)
    flags = data[10]
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames, end = 0, len(data)
    while i < end:
        block = data[i]
        i += 1
        if block == 0x21:  # extension: label, then sub-blocks
            i = _skip_sub_blocks(data, i + 1)
        elif block == 0x2C:  # image descriptor
            if i + 9 > end:
                break
            left, top, frame_width, frame_height = struct.unpack_from("<HHHH", data, i)
            local = data[i + 8]
            i += 9 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            i = _skip_sub_blocks(data, i + 1)  # after the LZW minimum code size
            if i > end:  # a frame cut short: libvips would show what is there, Pillow refuses
                return None
            frames += 1
            width = max(width, left + frame_width)
            height = max(height, top + frame_height)
        else:  # trailer (0x3B) or junk: decoders stop here too
            break
    return _Header(width, height, frames) if frames else None


def _webp_header(data: bytes) -> _Header | None:
    if len(data) < 30:
        return None
    fourcc = data[12:16]
    size = int.from_bytes(data[16:20], "little")
    payload = 20
    if fourcc == b"VP8 ":
        if data[payload + 3 : payload + 6] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", data, payload + 6)
        return _Header(width & 0x3FFF, height & 0x3FFF, 1)
    if fourcc == b"VP8L":
        if data[payload] != 0x2F:
            return None
        bits = int.from_bytes(data[payload + 1 : payload + 5], "little")
        return _Header((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 1)
    if fourcc == b"VP8X":
        flags = data[payload]
        width = int.from_bytes(data[payload + 4 : payload + 7], "little") + 1
        height = int.from_bytes(data[payload + 7 : payload + 10], "little") + 1
        if not flags & 0x02:  # not animated
            return _Header(width, height, 1)
        frames, i, end = 0, payload + size + (size & 1), len(data)
        while i + 8 <= end:
            chunk_size = int.from_bytes(data[i + 4 : i + 8], "little")
            frames += data[i : i + 4] == b"ANMF"
            i += 8 + chunk_size + (chunk_size & 1)
        return _Header(width, height, frames) if frames else None
    return None


# ---------------------------------------------------------------------------------------------
# Geometry, colour profile, blurhash: shared by both libraries.

# EXIF orientations other than 1 (as stored): flips, half and quarter turns.
_ORIENTATIONS: Final = frozenset(range(2, 9))


def _fit_original(width: int, height: int) -> tuple[int, int]:
    """Fit 3840x2160 (landscape) or 2160x3840 (portrait), aspect kept, never upscaled.

    The box turns with the image, so fitting before or after applying an EXIF quarter turn gives
    the same pixels, turned: both libraries resize the stored image, then turn the smaller one.
    """
    box_w, box_h = (
        (ORIGINAL_LONG_SIDE, ORIGINAL_SHORT_SIDE)
        if width >= height
        else (ORIGINAL_SHORT_SIDE, ORIGINAL_LONG_SIDE)
    )
    scale = min(1.0, box_w / width, box_h / height)
    if scale >= 1.0:
        return width, height
    return min(box_w, max(1, round(width * scale))), min(box_h, max(1, round(height * scale)))


def _fit_area(width: int, height: int, area: int) -> tuple[int, int]:
    """Scale to about ``area`` pixels, aspect kept, never upscaled."""
    if width * height <= area:
        return width, height
    scale = math.sqrt(area / (width * height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _valid_icc(icc: object) -> bytes | None:
    """The ICC profile if littlecms reads it as one (anything else is dropped like metadata)."""
    if not isinstance(icc, bytes | bytearray) or not icc:
        return None
    try:
        ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except Exception:
        return None
    return bytes(icc)


_BASE83: Final = (
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
)
_TO_LINEAR: Final = [
    v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4
    for v in (i / 255 for i in range(256))
]


def _base83(value: int, length: int) -> str:
    return "".join(_BASE83[value // 83 ** (length - i) % 83] for i in range(1, length + 1))


def _to_srgb(value: float) -> int:
    v = max(0.0, min(1.0, value))
    return int((v * 12.92 if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055) * 255 + 0.5)


def _blurhash(rgb: Image.Image) -> str:
    """4x4 blurhash of an RGB image, as the reference encoder (github.com/woltapp/blurhash).

    Computed here rather than through a binding: the image is first shrunk to 32x32 at most (the
    hash keeps 16 colours), so the sums cost about 2 ms in Python.
    """
    rgb.thumbnail((32, 32), Image.Resampling.BOX)
    width, height = rgb.size
    n = BLURHASH_COMPONENTS
    cos_x = [[math.cos(math.pi * i * x / width) for x in range(width)] for i in range(n)]
    cos_y = [[math.cos(math.pi * j * y / height) for y in range(height)] for j in range(n)]
    sums = [[0.0, 0.0, 0.0] for _ in range(n * n)]  # component j * n + i: (r, g, b)
    pixels = rgb.tobytes()
    for y in range(height):
        row = [_TO_LINEAR[v] for v in pixels[y * width * 3 : (y + 1) * width * 3]]
        channels = (row[0::3], row[1::3], row[2::3])
        for i in range(n):
            along = [sum(map(operator.mul, channel, cos_x[i])) for channel in channels]
            for j in range(n):
                weight = cos_y[j][y]
                total = sums[j * n + i]
                for c in range(3):
                    total[c] += along[c] * weight
    scale = 1 / (width * height)
    dc = [value * scale for value in sums[0]]
    ac = [[value * 2 * scale for value in total] for total in sums[1:]]
    largest = max(abs(value) for total in ac for value in total)
    quantised_max = max(0, min(82, math.floor(largest * 166 - 0.5)))
    max_value = (quantised_max + 1) / 166
    out = [
        _base83((n - 1) + (n - 1) * 9, 1),
        _base83(quantised_max, 1),
        _base83((_to_srgb(dc[0]) << 16) + (_to_srgb(dc[1]) << 8) + _to_srgb(dc[2]), 4),
    ]
    for total in ac:
        r, g, b = (
            max(0, min(18, math.floor(math.copysign(abs(v / max_value) ** 0.5, v) * 9 + 9.5)))
            for v in total
        )
        out.append(_base83(r * 19 * 19 + g * 19 + b, 2))
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# libvips

pyvips.cache_set_max(0)  # no operation cache: it would keep the last uploads' buffers alive
pyvips.block_untrusted_set(True)  # belt and braces: we only call the four loaders by name

# Header fields every vips image has; all other fields (exif-*, xmp-data, iptc-data, comments,
# gif-comment, orientation, ...) are metadata and removed before saving.
_VIPS_BASIC: Final = frozenset(
    {
        "width",
        "height",
        "bands",
        "format",
        "coding",
        "interpretation",
        "xoffset",
        "yoffset",
        "xres",
        "yres",
        "filename",
    }
)


def _vips_load(data: bytes, content_type: ContentType, frames: int, shrink: int) -> pyvips.Image:
    options: dict[str, object] = {"access": "sequential", "fail_on": "error"}
    if content_type == "image/jpeg":
        return pyvips.Image.jpegload_buffer(data, shrink=shrink, **options)
    if content_type == "image/png":
        return pyvips.Image.pngload_buffer(data, **options)
    if content_type == "image/gif":
        return pyvips.Image.gifload_buffer(data, n=-1 if frames > 1 else 1, **options)
    return pyvips.Image.webpload_buffer(data, n=-1 if frames > 1 else 1, **options)


def _vips_field(image: pyvips.Image, name: str) -> object:
    return image.get(name) if image.get_typeof(name) != 0 else None


def _vips_8bit(image: pyvips.Image) -> tuple[pyvips.Image, bool]:
    """8-bit sRGB or grey (alpha kept); True when the colour space changed (profile invalid)."""
    if image.interpretation == "cmyk":
        return image.colourspace("srgb"), True
    if image.format != "uchar":
        space = "srgb" if image.bands - int(image.hasalpha()) >= 3 else "b-w"
        return image.colourspace(space).cast("uchar"), False
    return image, False


def _vips_resize(image: pyvips.Image, width: int, height: int) -> pyvips.Image:
    if (image.width, image.height) == (width, height):
        return image
    hscale, vscale = width / image.width, height / image.height
    if image.hasalpha():  # premultiplied, or transparent pixels' colours bleed into the edges
        out = image.premultiply().resize(hscale, vscale=vscale).unpremultiply().cast("uchar")
    else:
        out = image.resize(hscale, vscale=vscale)
    if (out.width, out.height) != (width, height):  # rounding: at most a pixel
        out = out.gravity("centre", width, height, extend="copy")
    return out


def _vips_clean(image: pyvips.Image, icc: bytes | None) -> pyvips.Image:
    out = image.copy()
    for name in out.get_fields():
        if name not in _VIPS_BASIC:
            out.remove(name)
    if icc is not None:
        out.set_type(pyvips.GValue.blob_type, "icc-profile-data", icc)
    return out


def _vips_opaque(image: pyvips.Image) -> pyvips.Image | None:
    """The image without its alpha band if every pixel is opaque, else None."""
    if not image.hasalpha():
        return image
    if image[image.bands - 1].min() < 255:
        return None
    return image.extract_band(0, n=image.bands - 1)


def _vips_save(image: pyvips.Image, content_type: ContentType, icc: bytes | None) -> bytes:
    keep = "icc" if icc is not None else "none"
    if content_type == "image/jpeg":
        data = image.jpegsave_buffer(
            Q=JPEG_QUALITY, optimize_coding=True, interlace=True, keep=keep
        )
    elif content_type == "image/png":
        # Adaptive filtering per row, as Pillow does: libvips' default (none) doubles the size.
        data = image.pngsave_buffer(compression=PNG_COMPRESSION, filter="all", keep=keep)
    elif content_type == "image/webp":
        data = image.webpsave_buffer(Q=WEBP_QUALITY, keep=keep)
    else:
        # No dithering and the quickest palette search, like Pillow's median cut: with libvips'
        # defaults a 30-frame 480x270 GIF took 1.1 s instead of 0.44 s, and came out larger.
        data = image.gifsave_buffer(effort=1, dither=0, keep="none")
    return bytes(data)


def _vips_process(
    data: bytes, content_type: ContentType, header: _Header, max_pixels: int
) -> Processed:
    if header.frames > 1:
        return _vips_animated(data, content_type, header, max_pixels)
    shrink = 1
    if content_type == "image/jpeg":  # decode at 1/2, 1/4 or 1/8 when that still covers the box
        fit_w, fit_h = _fit_original(header.width, header.height)
        shrink = next(
            (f for f in (8, 4, 2) if header.width // f >= fit_w and header.height // f >= fit_h), 1
        )
    image = _vips_load(data, content_type, 1, shrink)
    _check_budget(image.width * shrink, image.height * shrink, 1, max_pixels)
    orientation = _vips_field(image, "orientation")
    orientation = orientation if isinstance(orientation, int) else 1
    icc = _valid_icc(_vips_field(image, "icc-profile-data"))
    image, converted = _vips_8bit(image)
    if converted:
        icc = None
    # Resized before it is turned: a quarter turn needs the whole image, the resize streams.
    pixels = _vips_resize(image, *_fit_original(image.width, image.height)).copy_memory()
    if orientation in _ORIENTATIONS:
        pixels = pixels.autorot()
    original = _vips_clean(pixels, icc)
    return _vips_finish(original, original, content_type, icc, animated=False)


def _vips_animated(
    data: bytes, content_type: ContentType, header: _Header, max_pixels: int
) -> Processed:
    strip = _vips_load(data, content_type, header.frames, 1)  # frames stacked top to bottom
    page_height = _vips_field(strip, "page-height")
    page_height = page_height if isinstance(page_height, int) and page_height > 0 else strip.height
    count = strip.height // page_height
    _check_budget(strip.width, page_height, count, max_pixels)
    delays = _vips_field(strip, "delay")
    loop = _vips_field(strip, "loop")
    icc = _valid_icc(_vips_field(strip, "icc-profile-data"))
    strip, converted = _vips_8bit(strip)
    if converted:
        icc = None
    width, height = _fit_original(strip.width, page_height)
    frames = [
        _vips_resize(strip.crop(0, i * page_height, strip.width, page_height), width, height)
        for i in range(count)
    ]
    joined = pyvips.Image.arrayjoin(frames, across=1).copy_memory()
    original = _vips_clean(joined, icc if content_type != "image/gif" else None)
    original.set_type(pyvips.GValue.gint_type, "page-height", height)
    if not isinstance(delays, list) or len(delays) != count:
        delays = [DEFAULT_FRAME_MS] * count
    original.set_type(pyvips.GValue.array_int_type, "delay", [int(d) for d in delays])
    original.set_type(pyvips.GValue.gint_type, "loop", loop if isinstance(loop, int) else 0)
    first = _vips_clean(joined.crop(0, 0, width, height), icc)
    return _vips_finish(original, first, content_type, icc, animated=True)


def _vips_finish(
    original: pyvips.Image,
    first: pyvips.Image,
    content_type: ContentType,
    icc: bytes | None,
    *,
    animated: bool,
) -> Processed:
    original_data = _vips_save(original, content_type, icc)
    # first: the still the small rendition comes from (an animation's first frame)
    small_w, small_h = _fit_area(first.width, first.height, SMALL_AREA)
    small = _vips_resize(first, small_w, small_h).copy_memory()
    opaque = _vips_opaque(small)
    small_type: ContentType = "image/jpeg" if opaque is not None else "image/webp"
    small_data = _vips_save(opaque if opaque is not None else small, small_type, icc)
    rgb = small.flatten(background=255) if small.hasalpha() else small
    if rgb.bands == 1:
        rgb = rgb.bandjoin([rgb, rgb])
    hash_source = Image.frombytes("RGB", (rgb.width, rgb.height), rgb.write_to_memory())
    return Processed(
        original=Rendition(
            original_data,
            content_type,
            first.width,
            first.height,
        ),
        small=Rendition(small_data, small_type, small_w, small_h),
        blurhash=_blurhash(hash_source),
        animated=animated,
    )


# ---------------------------------------------------------------------------------------------
# Pillow

_PIL_FORMATS: Final[dict[ContentType, str]] = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}

# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_PIL_TRANSPOSE: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _pillow_process(
    data: bytes, content_type: ContentType, header: _Header, max_pixels: int
) -> Processed:
    with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[content_type]]) as image:
        _check_budget(image.width, image.height, header.frames, max_pixels)
        icc = _valid_icc(image.info.get("icc_profile"))
        if image.mode == "CMYK":
            icc = None  # converted to RGB below: a CMYK profile no longer describes the pixels
        frame_count = int(getattr(image, "n_frames", 1)) if header.frames > 1 else 1
        if frame_count > 1:
            _check_budget(image.width, image.height, frame_count, max_pixels)
            return _pillow_animated(image, content_type, frame_count, icc)
        orientation = image.getexif().get(0x0112, 1)
        width, height = _fit_original(image.width, image.height)
        if content_type == "image/jpeg":  # DCT scaling: decode at 1/2, 1/4, 1/8 when enough
            image.draft(image.mode, (width, height))
        image.load()
        pixels = _pillow_resize(_pillow_8bit(image), width, height)
        if orientation in _PIL_TRANSPOSE:
            pixels = pixels.transpose(_PIL_TRANSPOSE[orientation])
        pixels.info = {}
        original = _pillow_save([pixels], content_type, icc)
        return _pillow_finish(original, pixels, content_type, icc, animated=False)


def _pillow_animated(
    image: Image.Image, content_type: ContentType, frame_count: int, icc: bytes | None
) -> Processed:
    width, height = _fit_original(image.width, image.height)
    frames: list[Image.Image] = []
    durations: list[int] = []
    loop = image.info.get("loop")
    for index in range(frame_count):
        image.seek(index)
        rgba = image.convert("RGBA")  # loads the frame: WebP sets its duration only then
        duration = image.info.get("duration")
        durations.append(int(duration) if isinstance(duration, int | float) else DEFAULT_FRAME_MS)
        frame = _pillow_resize(rgba, width, height)
        frame.info = {}
        frames.append(frame)
    original = _pillow_save(
        frames,
        content_type,
        icc if content_type != "image/gif" else None,
        durations=durations,
        loop=loop if isinstance(loop, int) else None,
    )
    return _pillow_finish(original, frames[0], content_type, icc, animated=True)


def _pillow_8bit(image: Image.Image) -> Image.Image:
    """L, LA, RGB or RGBA, with palette transparency as alpha."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if mode == "P" or mode == "PA":
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    if mode.startswith("I"):  # 16-bit grey PNG: keep the high byte
        return image.convert("I").point(lambda value: value / 256).convert("L")
    if mode == "1":
        return image.convert("L")
    return image.convert("RGBA" if "A" in mode or "a" in mode else "RGB")


def _pillow_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    # Pillow premultiplies RGBA and LA itself; reducing_gap: a box reduce first, then Lanczos.
    return image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)


def _pillow_save(
    frames: list[Image.Image],
    content_type: ContentType,
    icc: bytes | None,
    *,
    durations: list[int] | None = None,
    loop: int | None = None,
) -> Rendition:
    first = frames[0]
    out = io.BytesIO()
    options: dict[str, object] = {}
    if len(frames) > 1:
        options = {"save_all": True, "append_images": frames[1:], "duration": durations}
        if loop is not None:
            options["loop"] = loop
    if content_type == "image/jpeg":
        first.save(
            out, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True, icc_profile=icc
        )
    elif content_type == "image/png":
        first.save(out, "PNG", compress_level=PNG_COMPRESSION, icc_profile=icc)
    elif content_type == "image/webp":
        first.save(out, "WEBP", quality=WEBP_QUALITY, icc_profile=icc or "", **options)
    else:
        # Frames are whole composites: each replaces the last (disposal 2), transparency too.
        first.save(out, "GIF", disposal=2 if len(frames) > 1 else 0, **options)
    return Rendition(out.getvalue(), content_type, first.width, first.height)


def _pillow_finish(
    original: Rendition,
    first: Image.Image,
    content_type: ContentType,
    icc: bytes | None,
    *,
    animated: bool,
) -> Processed:
    small_w, small_h = _fit_area(first.width, first.height, SMALL_AREA)
    small = _pillow_resize(first, small_w, small_h)
    small.info = {}
    lowest_alpha = small.getchannel("A").getextrema()[0] if small.mode in ("LA", "RGBA") else 255
    transparent = isinstance(lowest_alpha, int | float) and lowest_alpha < 255
    if transparent:
        small_rendition = _pillow_save([small], "image/webp", icc)
        flat = Image.new("RGBA", small.size, (255, 255, 255, 255))
        flat.alpha_composite(small.convert("RGBA"))
        rgb = flat.convert("RGB")
    else:
        opaque = small.convert("RGB" if small.mode in ("RGB", "RGBA") else "L")
        small_rendition = _pillow_save([opaque], "image/jpeg", icc)
        rgb = opaque.convert("RGB")
    return Processed(
        original=original, small=small_rendition, blurhash=_blurhash(rgb), animated=animated
    )
