"""The image pipeline on real files made by Pillow here, through both libraries."""

from __future__ import annotations

import io
import multiprocessing
import pickle
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import blurhash
import pytest
import pyvips
from PIL import ExifTags, Image, ImageCms, PngImagePlugin

from agora.media import imaging
from agora.media.imaging import Processed, Refused, TooManyPixels, process, sniff

pytestmark = pytest.mark.timeout(30)

LIMIT = 33_177_600  # the default AGORA_MEDIA_MAX_PIXELS (Mastodon's)
LIBRARIES = ("vips", "pillow")


@pytest.fixture(params=LIBRARIES)
def library(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(data: bytes, library: str, max_pixels: int = LIMIT) -> Processed:
    return process(data, max_pixels=max_pixels, library=library)  # type: ignore[arg-type]


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def photo(width: int, height: int) -> Image.Image:
    """Photo-like: a smooth gradient with grain (compresses like a photo, not like a flat fill)."""
    gradient = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width, height), 40)
    return Image.merge("RGB", (gradient, noise, gradient.transpose(Image.Transpose.ROTATE_180)))


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def srgb_icc() -> bytes:
    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


def frames_of(data: bytes) -> Iterator[tuple[Image.Image, int]]:
    """Each frame of an animation, loaded, with its duration."""
    image = opened(data)
    for index in range(image.n_frames):
        image.seek(index)
        image.load()
        yield image.convert("RGBA"), int(image.info.get("duration", 0))


# --- sniff ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01", "image/jpeg"),
        (b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*\x00", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
        (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00", "image/gif"),
        (b"GIF87a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),  # RIFF, but sound
        (b"BM6\x00\x00\x00\x00\x00\x00\x006\x00\x00\x00(\x00", None),  # BMP
        (b"<!DOCTYPE html><html><script>", None),
        (b"<svg xmlns='http://www.w3.org/2000/svg'>", None),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", None),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00\x00\x00\x00\x00", None),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", None),  # AVIF/HEIF: not accepted
        (b"\xff\xd8", None),  # too short to be a JPEG
        (b"", None),
    ],
)
def test_sniff_reads_the_magic_number(head: bytes, expected: str | None) -> None:
    assert sniff(head) == expected


# --- each accepted format, both libraries ---------------------------------------------------


def test_jpeg_photo(library: str) -> None:
    data = encode(photo(1200, 800), "JPEG", quality=90)
    result = run(data, library)
    assert result.animated is False
    assert (result.original.content_type, result.original.width, result.original.height) == (
        "image/jpeg",
        1200,
        800,
    )
    original = opened(result.original.data)
    assert (original.format, original.size) == ("JPEG", (1200, 800))
    small = opened(result.small.data)
    assert result.small.content_type == "image/jpeg"
    assert small.format == "JPEG"
    assert small.size == (result.small.width, result.small.height) == (588, 392)


def test_png_with_alpha_gets_a_webp_small(library: str) -> None:
    image = photo(800, 600).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((800, 600)))  # transparent at the top
    result = run(encode(image, "PNG"), library)
    original = opened(result.original.data)
    assert (original.format, original.mode, original.size) == ("PNG", "RGBA", (800, 600))
    assert result.original.content_type == "image/png"
    assert result.small.content_type == "image/webp"
    small = opened(result.small.data)
    assert small.format == "WEBP"
    assert small.mode == "RGBA"
    top, bottom = small.getpixel((10, 0)), small.getpixel((10, small.height - 1))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[3] < 20 and bottom[3] > 235


def test_png_with_an_opaque_alpha_channel_gets_a_jpeg_small(library: str) -> None:
    result = run(encode(photo(600, 400).convert("RGBA"), "PNG"), library)
    assert result.original.content_type == "image/png"
    assert result.small.content_type == "image/jpeg"


def test_palette_png_with_transparency(library: str) -> None:
    image = Image.new("P", (64, 64), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(0, (0, 0, 32, 64))
    data = encode(image, "PNG", transparency=0)
    result = run(data, library)
    small = opened(result.small.data).convert("RGBA")
    assert result.small.content_type == "image/webp"
    left, right = small.getpixel((5, 32)), small.getpixel((60, 32))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert left[3] == 0
    assert right[3] == 255 and right[2] > 200


def test_16_bit_grey_png(library: str) -> None:
    grey = Image.linear_gradient("L").resize((300, 200)).convert("I").point(lambda v: v * 257)
    result = run(encode(grey.convert("I;16"), "PNG"), library)
    original = opened(result.original.data)
    assert original.size == (300, 200)
    low, high = original.convert("L").getextrema()  # type: ignore[misc]
    assert low < 5 and high > 250  # scaled to 8 bits, not clipped


def test_still_gif(library: str) -> None:
    result = run(encode(photo(320, 240).convert("P"), "GIF"), library)
    assert result.animated is False
    original = opened(result.original.data)
    assert (original.format, original.size) == ("GIF", (320, 240))
    assert getattr(original, "n_frames", 1) == 1
    assert result.small.content_type == "image/jpeg"


def test_animated_gif_keeps_its_frames_delays_and_loop(library: str) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    frames = [Image.new("RGB", (160, 120), colour) for colour in colours]
    data = encode(
        frames[0],
        "GIF",
        save_all=True,
        append_images=frames[1:],
        duration=[40, 80, 120, 160],
        loop=0,
    )
    result = run(data, library)
    assert result.animated is True
    assert (result.original.content_type, result.original.width, result.original.height) == (
        "image/gif",
        160,
        120,
    )
    out = list(frames_of(result.original.data))
    assert [duration for _, duration in out] == [40, 80, 120, 160]
    for (frame, _), colour in zip(out, colours, strict=True):
        assert frame.getpixel((80, 60))[:3] == colour  # type: ignore[index]
    assert opened(result.original.data).info.get("loop") == 0
    # The small rendition is the first frame, a still.
    small = opened(result.small.data)
    assert (result.small.content_type, getattr(small, "n_frames", 1)) == ("image/jpeg", 1)
    red = small.convert("RGB").getpixel((80, 60))
    assert isinstance(red, tuple) and red[0] > 240 and red[1] < 15


def test_still_webp(library: str) -> None:
    result = run(encode(photo(640, 480), "WEBP", quality=90), library)
    original = opened(result.original.data)
    assert (original.format, original.size) == ("WEBP", (640, 480))
    assert result.original.content_type == "image/webp"
    assert result.animated is False
    assert result.small.content_type == "image/jpeg"


def test_animated_webp_stays_animated(library: str) -> None:
    frames = [Image.new("RGBA", (100, 80), (i * 60, 0, 255 - i * 60, 255)) for i in range(4)]
    data = encode(
        frames[0],
        "WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=[50, 60, 70, 80],
        loop=2,
        lossless=True,
    )
    result = run(data, library)
    assert result.animated is True
    assert (result.original.width, result.original.height) == (100, 80)
    out = list(frames_of(result.original.data))
    assert [duration for _, duration in out] == [50, 60, 70, 80]
    assert opened(result.original.data).info.get("loop") == 2
    blue = out[3][0].getpixel((50, 40))
    assert isinstance(blue, tuple) and abs(blue[0] - 180) < 12 and abs(blue[2] - 75) < 12


def test_cmyk_jpeg_comes_out_rgb(library: str) -> None:
    result = run(encode(photo(300, 200).convert("CMYK"), "JPEG"), library)
    assert opened(result.original.data).mode == "RGB"
    assert opened(result.small.data).mode == "RGB"


# --- metadata, profile, orientation ---------------------------------------------------------


def private_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "SecretCam"
    exif[ExifTags.Base.Model] = "Model-X9000"
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.ImageDescription] = "exif-secret alert('exif')"  # (markup: a polyglot)
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 29.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (2.0, 17.0, 40.0)
    return exif


PRIVATE = (b"SecretCam", b"Model-X9000", b"exif-secret", b"secret comment", b"xmp-secret")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_metadata_is_stripped_and_the_icc_profile_kept(library: str, fmt: str) -> None:
    icc = srgb_icc()
    options: dict[str, Any] = {"exif": private_exif().tobytes(), "icc_profile": icc}
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><x:secret>xmp-secret</x:secret></x:xmpmeta>'
    if fmt == "JPEG":
        options |= {"comment": b"secret comment", "xmp": xmp}
    elif fmt == "WEBP":
        options |= {"xmp": xmp}
    image = photo(800, 600)
    if fmt == "PNG":
        options["pnginfo"] = png_text()
    data = encode(image, fmt, **options)
    source = opened(data)
    assert source.getexif()[ExifTags.Base.Make] == "SecretCam"  # the input really has them
    assert source.getexif().get_ifd(ExifTags.IFD.GPSInfo)

    result = run(data, library)
    for rendition in (result.original, result.small):
        out = opened(rendition.data)
        assert out.info.get("icc_profile") == icc
        assert len(out.getexif()) == 0
        assert not out.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        assert "comment" not in out.info and "xmp" not in out.info and "exif" not in out.info
        for secret in PRIVATE:
            assert secret not in rendition.data


def png_text() -> PngImagePlugin.PngInfo:
    """PNG's comments: a tEXt Comment and an iTXt XMP packet."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret comment")
    info.add_itxt("XML:com.adobe.xmp", "xmp-secret")
    return info


def test_gif_comment_is_stripped(library: str) -> None:
    data = encode(photo(64, 64).convert("P"), "GIF", comment=b"secret comment")
    assert b"secret comment" in data
    result = run(data, library)
    for rendition in (result.original, result.small):
        assert b"secret comment" not in rendition.data
        assert "comment" not in opened(rendition.data).info


def test_an_invalid_icc_profile_is_dropped(library: str) -> None:
    data = encode(photo(100, 100), "JPEG", icc_profile=b"[not a colour profile]" * 10)
    result = run(data, library)
    assert "icc_profile" not in opened(result.original.data).info
    assert b"[not a colour profile]" not in result.original.data


@pytest.mark.parametrize(
    ("orientation", "corner"),
    [
        (1, (0, 0)),  # shown as stored: red stays top-left
        (3, (1, 1)),  # upside down: red ends bottom-right
        (6, (1, 0)),  # a quarter turn clockwise: top-left goes top-right
        (8, (0, 1)),  # a quarter turn counter-clockwise: top-left goes bottom-left
    ],
)
def test_orientation_is_applied(library: str, orientation: int, corner: tuple[int, int]) -> None:
    image = Image.new("RGB", (300, 200), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 150, 100))  # top-left quadrant red
    data = encode(image, "JPEG", exif=private_exif(orientation).tobytes(), quality=95)
    result = run(data, library)
    swapped = orientation in (6, 8)
    expected = (200, 300) if swapped else (300, 200)
    assert (result.original.width, result.original.height) == expected
    out = opened(result.original.data).convert("RGB")
    assert out.size == expected
    x = 10 if corner[0] == 0 else out.width - 10
    y = 10 if corner[1] == 0 else out.height - 10
    pixel = out.getpixel((x, y))
    assert isinstance(pixel, tuple) and pixel[0] > 200 and pixel[2] < 60
    assert len(out.getexif()) == 0  # and the orientation tag went with the rest


# --- sizes ----------------------------------------------------------------------------------


def test_a_large_photo_is_downscaled_to_fit_4k(library: str) -> None:
    result = run(encode(photo(5000, 3000), "JPEG", quality=80), library)
    assert (result.original.width, result.original.height) == (3600, 2160)
    assert opened(result.original.data).size == (3600, 2160)
    assert (result.small.width, result.small.height) == (620, 372)
    assert abs(result.small.width * result.small.height - 230_400) / 230_400 < 0.01
    assert opened(result.small.data).size == (620, 372)


def test_a_portrait_photo_fits_2160_by_3840(library: str) -> None:
    result = run(encode(photo(2400, 4800), "JPEG", quality=70), library)
    assert (result.original.width, result.original.height) == (1920, 3840)
    assert abs(result.small.width * result.small.height - 230_400) / 230_400 < 0.01


def test_a_tiny_image_is_never_upscaled(library: str) -> None:
    result = run(encode(photo(20, 10), "PNG"), library)
    assert (result.original.width, result.original.height) == (20, 10)
    assert (result.small.width, result.small.height) == (20, 10)
    assert opened(result.small.data).size == (20, 10)


# --- blurhash -------------------------------------------------------------------------------


def test_blurhash_is_a_valid_4x4_hash_of_the_image(library: str) -> None:
    image = Image.new("RGB", (400, 300), (200, 30, 30))
    result = run(encode(image, "PNG"), library)
    hash_ = result.blurhash
    assert len(hash_) == 36  # 1 size flag + 1 max AC + 4 DC + 2 x 15 AC components
    assert hash_[0] == "U"  # size flag (4 - 1) + (4 - 1) * 9 = 30 in base 83
    assert blurhash.is_valid_blurhash(hash_)
    decoded = blurhash.decode(hash_, 8, 6).convert("RGB")
    red = decoded.getpixel((4, 3))
    assert isinstance(red, tuple)
    assert abs(red[0] - 200) < 12 and red[1] < 50 and red[2] < 50


@pytest.mark.filterwarnings("ignore:Image.Image.getdata:DeprecationWarning")
@pytest.mark.parametrize("seed", range(6))
def test_blurhash_matches_the_reference_encoder(seed: int) -> None:
    """Ours against blurhash-python's binding of the reference C encoder, on the same pixels."""
    width, height = 7 + seed * 5, 32 - seed * 4
    grain = Image.effect_noise((width, height), 20 + seed * 15)
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.merge(
        "RGB", (gradient, grain, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    )
    assert imaging._blurhash(image.copy()) == blurhash.encode(image.copy(), 4, 4)


def test_both_libraries_agree_on_shapes() -> None:
    data = encode(photo(1000, 700), "JPEG")
    vips, pillow = run(data, "vips"), run(data, "pillow")
    for a, b in ((vips.original, pillow.original), (vips.small, pillow.small)):
        assert (a.content_type, a.width, a.height) == (b.content_type, b.width, b.height)
    # Not the same pixels (each library resamples its own way), but the same picture.
    a, b = (blurhash.decode(r.blurhash, 8, 6).convert("RGB").tobytes() for r in (vips, pillow))
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 12


# --- refusals -------------------------------------------------------------------------------


def test_a_renamed_text_file_is_refused(library: str) -> None:
    with pytest.raises(Refused) as caught:
        run(b"just some notes, saved as holiday.jpg\n" * 10, library)
    assert str(caught.value) == "the file is not a JPEG, PNG, GIF or WebP image"
    assert not isinstance(caught.value, TooManyPixels)


def test_a_truncated_png_is_refused(library: str) -> None:
    data = encode(photo(400, 300), "PNG")
    with pytest.raises(Refused, match=r"^the PNG file is truncated or damaged$"):
        run(data[: len(data) // 2], library)


def test_a_truncated_jpeg_is_refused(library: str) -> None:
    data = encode(photo(400, 300), "JPEG")
    with pytest.raises(Refused, match=r"^the JPEG file is truncated or damaged$"):
        run(data[: len(data) // 2], library)


def test_a_truncated_animated_gif_is_refused(library: str) -> None:
    frames = [photo(100, 100).convert("P") for _ in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(Refused, match=r"^the GIF file is truncated or damaged$"):
        run(data[: len(data) - len(data) // 4], library)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"just some text, not a PNG body" * 20, "PNG"),
        (b"GIF89a" + b"\x00" * 100, "GIF"),
        (b"RIFF\x00\x01\x00\x00WEBPVP8 " + b"\x00" * 200, "WebP"),
    ],
)
def test_a_magic_number_followed_by_garbage_is_refused(
    library: str, data: bytes, name: str
) -> None:
    with pytest.raises(Refused, match=f"^the {name} file is truncated or damaged$"):
        run(data, library)


def test_a_png_whose_pixel_data_is_garbage_is_refused(library: str) -> None:
    good = encode(photo(200, 100), "PNG")
    start = good.index(b"IDAT") + 4
    bad = bytearray(good)
    bad[start : start + 400] = b"\x00" * 400  # headers intact, compressed pixels broken
    with pytest.raises(Refused, match=r"^the PNG file is truncated or damaged$"):
        run(bytes(bad), library)


POLYGLOT_TAILS = {
    "html": b"<html><script>alert(document.cookie)</script></html>",
    "zip": b"PK\x03\x04\x14\x00\x00\x00payload.js\x00" + b"PK\x05\x06" + b"\x00" * 18,
    "php": b"<?php system($_GET['c']); ?>",
}


@pytest.mark.parametrize("tail", sorted(POLYGLOT_TAILS))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_a_polyglot_is_refused(library: str, fmt: str, tail: str) -> None:
    """An image that is also a page, a script or an archive is refused."""
    image = photo(200, 150)
    data = encode(image if fmt != "GIF" else image.convert("P"), fmt) + POLYGLOT_TAILS[tail]
    with pytest.raises(Refused, match="also something else than an image"):
        run(data, library)


def test_a_phone_jpeg_with_a_second_image_after_the_first_is_taken(library: str) -> None:
    """Phones append secondary images (MPF) after the first JPEG: not a polyglot."""
    data = encode(photo(300, 200), "JPEG") + encode(photo(64, 48), "JPEG")
    result = run(data, library)
    assert (result.original.width, result.original.height) == (300, 200)


# --- decompression bombs --------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose IHDR says width x height (a real bomb would inflate to GBs)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100_000, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif_with_screen(width: int, height: int) -> bytes:
    """A valid one-pixel GIF whose logical screen is width x height."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any call into either library's decoders fails the test: bombs must stop before them."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a decoder was called")

    monkeypatch.setattr(Image, "open", refuse)
    for loader in ("jpegload_buffer", "pngload_buffer", "gifload_buffer", "webpload_buffer"):
        monkeypatch.setattr(pyvips.Image, loader, refuse)


@pytest.mark.usefixtures("no_decoding")
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (png_claiming(20_000, 20_000), "the image is 20000x20000 pixels"),
        (gif_with_screen(65_535, 65_535), "the image is 65535x65535 pixels"),
    ],
)
def test_a_pixel_bomb_is_refused_from_its_header(library: str, data: bytes, message: str) -> None:
    with pytest.raises(
        TooManyPixels, match=f"^{message}, more than the 33,177,600 pixels allowed$"
    ):
        run(data, library)


def test_the_crafted_bomb_is_a_png_the_decoders_read(library: str) -> None:
    """Within the budget, the same crafted file reaches the decoder, which finds pixels missing."""
    with pytest.raises(Refused, match=r"^the PNG file is truncated or damaged$"):
        run(png_claiming(2000, 2000), library)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(photo(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(photo(16, 16), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L"
    alpha_and_version = int.from_bytes(data[21:25], "little") >> 28
    bits = (width - 1) | ((height - 1) << 14) | (alpha_and_version << 28)
    data[21:25] = struct.pack("<I", bits)
    return bytes(data)


@pytest.mark.usefixtures("no_decoding")
def test_jpeg_and_webp_bombs_are_refused_from_their_headers(library: str) -> None:
    with pytest.raises(TooManyPixels, match=r"^the image is 60000x60000 pixels"):
        run(jpeg_claiming(60_000, 60_000), library)
    with pytest.raises(TooManyPixels, match=r"^the image is 16000x16000 pixels"):
        run(webp_claiming(16_000, 16_000), library)


def test_frames_count_in_the_budget(library: str) -> None:
    frames = [Image.new("RGB", (100, 100), (i, 255 - i, 0)) for i in range(120)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    webp = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    for data in (gif, webp):
        assert run(data, library, max_pixels=1_200_000).animated  # 100 x 100 x 120 fits
        with pytest.raises(TooManyPixels, match=r"^the image is 100x100 pixels in 120 frames"):
            run(data, library, max_pixels=1_199_999)


def test_pillows_own_bomb_guard_is_answered_as_too_many_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pillow refuses images over twice Image.MAX_IMAGE_PIXELS itself; that is TooManyPixels too."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(TooManyPixels):
        run(encode(photo(100, 100), "PNG"), "pillow", max_pixels=LIMIT)


def test_a_gif_frame_outside_the_screen_counts(library: str) -> None:
    """Pillow grows the canvas to hold a frame placed beyond the logical screen: so does the budget."""
    data = bytearray(encode(Image.new("P", (10, 10)), "GIF"))
    descriptor = data.index(b"\x2c\x00\x00\x00\x00\x0a\x00\x0a\x00")  # at 0,0, 10x10
    data[descriptor + 1 : descriptor + 5] = struct.pack("<HH", 5_000, 5_000)  # moved far out
    with pytest.raises(TooManyPixels, match=r"^the image is 5010x5010 pixels"):
        run(bytes(data), library, max_pixels=1_000_000)


def test_the_limit_is_the_callers(library: str) -> None:
    data = encode(photo(100, 100), "PNG")
    assert run(data, library, max_pixels=10_000).original.width == 100
    with pytest.raises(TooManyPixels):
        run(data, library, max_pixels=9_999)


# --- running in pools -----------------------------------------------------------------------


def test_results_and_errors_pickle() -> None:
    result = run(encode(photo(64, 48), "PNG"), imaging.DEFAULT)
    assert pickle.loads(pickle.dumps(result)) == result
    for error in (Refused("the GIF file is truncated or damaged"), TooManyPixels("too big")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)


def test_runs_in_a_fresh_process() -> None:
    """A process pool (spawned: nothing inherited) imports the module and pickles both ways."""
    data = encode(photo(120, 80), "JPEG")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        result = pool.submit(process, data, max_pixels=LIMIT).result(timeout=60)
        assert (result.original.width, result.original.height) == (120, 80)
        with pytest.raises(Refused, match=r"^the file is not a JPEG, PNG, GIF or WebP image$"):
            pool.submit(process, b"plain text", max_pixels=LIMIT).result(timeout=60)


def test_threads_at_once_give_the_same_results(library: str) -> None:
    inputs = [
        encode(photo(900, 600), "JPEG"),
        encode(photo(500, 500).convert("RGBA"), "PNG"),
        encode(photo(300, 200), "WEBP"),
        b"not an image at all, just text",
    ]

    def one(data: bytes) -> Processed | str:
        try:
            return run(data, library)
        except Refused as exc:
            return str(exc)

    serial = [one(data) for data in inputs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(one, inputs * 3))
    assert parallel == serial * 3


def test_an_unknown_library_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown imaging library"):
        process(b"", max_pixels=LIMIT, library="imagemagick")  # type: ignore[arg-type]


def test_markup_hidden_in_metadata_is_a_polyglot_too(library: str) -> None:
    image = photo(120, 80)
    exif = image.getexif()
    exif[ExifTags.Base.ImageDescription] = "<script>alert('exif')</script>"
    data = encode(image, "JPEG", exif=exif.tobytes())
    with pytest.raises(Refused, match="also something else than an image"):
        run(data, library)
