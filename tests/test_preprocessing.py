"""Behavioural tests for model/preprocessing.py: decoding uploads and turning photos into tensors."""
from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, features

from model import ImageDecodeError, Preprocessing, build_transform, load_image
from model.backbones import LITE_MEAN, LITE_STD
from model.preprocessing import (IMAGE_SUFFIXES, MAX_PIXELS, SUPPORTED_FORMAT_NAMES, SUPPORTED_FORMATS,
                                 load_and_transform, resize_to_input, to_tensor)

from .conftest import TINY_PREP

LITE_PREP = Preprocessing(input_size=64, mean=LITE_MEAN, std=LITE_STD, resize="letterbox")

RED, GREEN, BLUE, GREY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128)


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _stripes(width: int, height: int, colours) -> Image.Image:
    """Vertical stripes of equal width, left to right."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    step = width // len(colours)
    for i, colour in enumerate(colours):
        arr[:, i * step:(i + 1) * step] = colour
    return Image.fromarray(arr, "RGB")


def _close(pixel, expected, tol: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


# --------------------------------------------------------------------------------------------
# resize policies and normalisation


def _content_box(tensor: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the non-zero region, bottom/right exclusive."""
    mask = tensor.abs().sum(dim=0) > 0
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1


@pytest.mark.parametrize("width, height", [(120, 60), (30, 90), (64, 64), (500, 40)])
def test_letterbox_keeps_aspect_ratio_and_centres_the_photo(width, height):
    out = build_transform(LITE_PREP)(Image.new("RGB", (width, height), RED))
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    top, bottom, left, right = _content_box(out)
    content_w, content_h = right - left, bottom - top
    assert max(content_w, content_h) == 64  # the longer side fills the input
    assert content_w / content_h == pytest.approx(width / height, rel=0.06)
    assert abs(top - (64 - bottom)) <= 1 and abs(left - (64 - right)) <= 1  # centred
    # the photo itself is untouched red inside the box
    expected_red = (1.0 - LITE_MEAN[0]) / LITE_STD[0]
    assert torch.allclose(out[0, top:bottom, left:right], torch.full((content_h, content_w), expected_red))


@pytest.mark.parametrize("prep", [
    LITE_PREP,
    TINY_PREP,
], ids=["lite-mean", "imagenet-mean"])
def test_letterbox_padding_is_exactly_zero_after_normalisation(prep):
    out = build_transform(prep)(Image.new("RGB", (100, 50), BLUE))
    pad_top, pad_bottom = out[:, :16, :], out[:, -16:, :]
    assert pad_top.numel() and pad_bottom.numel()
    assert torch.count_nonzero(pad_top) == 0 and torch.count_nonzero(pad_bottom) == 0
    assert torch.count_nonzero(out[:, 32, :]) > 0  # the photo row is not padding


def test_letterbox_padding_with_imagenet_mean_is_within_8bit_rounding():
    out = build_transform(TINY_PREP)(Image.new("RGB", (100, 50), BLUE))
    bound = torch.tensor([0.5 / 255 / s for s in TINY_PREP.std]).view(3, 1, 1)
    assert (out[:, :16, :].abs() <= bound + 1e-6).all()


@pytest.mark.parametrize("size", [(150, 50), (50, 150), (37, 91), (64, 64)])
@pytest.mark.parametrize("policy", ["squash", "center-crop", "letterbox"])
def test_every_policy_gives_an_input_size_square(policy, size):
    prep = Preprocessing(input_size=48, resize=policy)
    img = resize_to_input(_noise(*size), prep)
    assert img.size == (48, 48) and img.mode == "RGB"
    assert build_transform(prep)(_noise(*size)).shape == (3, 48, 48)


def test_center_crop_keeps_the_middle_and_squash_keeps_everything():
    photo = _stripes(150, 50, [BLUE, GREEN, RED])
    cropped = np.asarray(resize_to_input(photo, Preprocessing(input_size=64, resize="center-crop")))
    # the crop is the middle third: green everywhere except at most a blended edge column
    inner = cropped[:, 2:-2]
    assert (inner[..., 1] > 200).all() and (inner[..., 0] < 40).all() and (inner[..., 2] < 40).all()

    squashed = np.asarray(resize_to_input(photo, Preprocessing(input_size=64, resize="squash")))
    assert _close(squashed[32, 2], BLUE) and _close(squashed[32, 32], GREEN) and _close(squashed[32, 61], RED)
    # squash stretches: each stripe takes about a third of the width
    green_cols = (squashed[32, :, 1] > 200).sum()
    assert 18 <= green_cols <= 24


def test_to_tensor_normalises_with_mean_and_std():
    prep = Preprocessing(input_size=16, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    img = Image.new("RGB", (16, 16), (255, 0, 51))
    out = to_tensor(img, prep)
    assert out.shape == (3, 16, 16)
    assert torch.allclose(out[:, 5, 7], torch.tensor([1.0, -1.0, 0.1]), atol=1e-6)


# --------------------------------------------------------------------------------------------
# decoding: orientation, modes, transparency, bit depth


def test_exif_orientation_6_comes_back_upright():
    upright = Image.new("RGB", (48, 96), GREY)
    upright.paste(RED, (0, 0, 16, 16))  # top-left marker
    upright.paste(BLUE, (32, 80, 48, 96))  # bottom-right marker
    # a camera held in portrait stores the sensor image turned 90° anticlockwise and tags it 6
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.size == (96, 48)  # as stored, sideways

    img = load_image(data)
    assert img.mode == "RGB" and img.size == (48, 96)
    assert _close(img.getpixel((6, 6)), RED)
    assert _close(img.getpixel((41, 89)), BLUE)
    assert _close(img.getpixel((41, 6)), GREY) and _close(img.getpixel((6, 89)), GREY)

    small = load_image(data, target_size=16)  # the draft path must rotate as well
    assert small.width < small.height
    assert _close(small.getpixel((1, 1)), RED, tol=30)


def test_rgba_composites_on_white():
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[0, 0] = (0, 0, 0, 0)  # fully transparent black
    arr[0, 1] = (255, 0, 0, 255)  # opaque red
    arr[0, 2] = (0, 0, 0, 128)  # half-transparent black
    data = _encode(Image.fromarray(arr, "RGBA"), "PNG")
    img = load_image(data)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (255, 0, 0)
    assert _close(img.getpixel((2, 0)), (127, 127, 127), tol=1)


def test_greyscale_with_alpha_composites_on_white():
    img = Image.new("LA", (4, 4), (0, 0))
    img.putpixel((1, 1), (40, 255))
    out = load_image(_encode(img, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (40, 40, 40)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_composites_on_white(fmt):
    img = Image.new("P", (6, 6), 1)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)  # 0 = red, 1 = green (transparent)
    for x in range(3):
        for y in range(6):
            img.putpixel((x, y), 0)
    img.info["transparency"] = 1
    data = _encode(img, fmt, transparency=1)
    out = load_image(data)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == RED
    assert out.getpixel((5, 5)) == (255, 255, 255)  # green index is transparent, not green


def test_palette_without_transparency_keeps_its_colours():
    img = Image.new("P", (4, 4), 1)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    assert load_image(_encode(img, "PNG")).getpixel((2, 2)) == GREEN


def test_16bit_greyscale_png_is_scaled_not_clipped():
    values = np.array([[0, 8192, 16384, 32768, 49152, 65535]], dtype=np.uint16)
    data = _encode(Image.fromarray(values), "PNG")
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.mode.startswith("I")  # really decoded as 16-bit
    img = load_image(data)
    assert img.mode == "RGB" and img.size == (6, 1)
    got = [img.getpixel((x, 0)) for x in range(6)]
    assert all(r == g == b for r, g, b in got)
    grey = [p[0] for p in got]
    assert grey[-1] == 255 and grey[0] == 0
    for value, out in zip(values[0], grey):
        assert abs(out - int(value) * 255 / 65535) <= 1
    assert grey == sorted(grey) and len(set(grey)) == 6  # mid-greys stay distinct, none clipped


def test_greyscale_jpeg_becomes_rgb():
    grey = Image.new("L", (32, 24), 90)
    img = load_image(_encode(grey, "JPEG"))
    assert img.mode == "RGB" and img.size == (32, 24)
    r, g, b = img.getpixel((10, 10))
    assert r == g == b and abs(r - 90) <= 3


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # no cyan, full magenta + yellow = red
    data = _encode(cmyk, "JPEG")
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.mode == "CMYK"
    img = load_image(data)
    assert img.mode == "RGB"
    assert _close(img.getpixel((16, 16)), RED)


def test_sources_path_str_bytes_and_file_object_agree(tmp_path):
    data = _encode(_noise(40, 30), "PNG")
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    reference = np.asarray(load_image(data))
    for source in (path, str(path), io.BytesIO(data)):
        assert np.array_equal(np.asarray(load_image(source)), reference)
    assert np.array_equal(reference, np.asarray(_noise(40, 30)))  # PNG is lossless


# --------------------------------------------------------------------------------------------
# refusing bad uploads


@pytest.mark.parametrize("data", [b"", b"this is a text file, not a photo\n" * 10, b"\x00" * 64],
                         ids=["empty", "text", "zeros"])
def test_non_images_are_refused(data):
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.3, 0.8])
def test_truncated_images_are_refused(fmt, keep):
    data = _encode(_noise(160, 120), fmt)
    with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
        load_image(data[:int(len(data) * keep)])


def test_unsupported_format_is_refused_by_name():
    with pytest.raises(ImageDecodeError, match="unsupported image format PPM"):
        load_image(_encode(Image.new("RGB", (8, 8)), "PPM"))


def test_image_decode_error_is_a_value_error():
    assert issubclass(ImageDecodeError, ValueError)


def test_image_over_max_pixels_is_refused_with_its_size():
    data = _encode(_noise(100, 80), "PNG")
    with pytest.raises(ImageDecodeError) as info:
        load_image(data, max_pixels=7999)
    assert "100x80" in str(info.value) and "7999" in str(info.value)
    assert load_image(data, max_pixels=8000).size == (100, 80)  # the limit itself is allowed


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_pixel_limit_is_checked_from_the_header_before_decoding(fmt):
    # truncated pixel data: a decode would fail with "truncated", the size check must come first
    data = _encode(_noise(100, 80), fmt)
    data = data[:len(data) // 2]
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(data)
    with pytest.raises(ImageDecodeError, match="100x80"):
        load_image(data, max_pixels=1000)


def _png_with_header_size(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR claims width x height (the pixel data does not match)."""
    data = bytearray(_encode(Image.new("L", (4, 4)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def test_default_pixel_limit_refuses_decompression_bombs():
    assert MAX_PIXELS == 40_000_000
    with pytest.raises(ImageDecodeError, match="8000x6000 pixels, more than the 40000000 allowed"):
        load_image(_png_with_header_size(8000, 6000))
    with pytest.raises(ImageDecodeError):  # beyond Pillow's own bomb guard: refused all the same
        load_image(_png_with_header_size(20_000, 20_000))
    # a header that stays below the limit gets past the size check and fails on the data instead
    with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
        load_image(_png_with_header_size(5000, 4000))


# --------------------------------------------------------------------------------------------
# JPEG draft decoding and the one-call pipeline


@pytest.mark.parametrize("width, height, target", [(800, 600, 64), (600, 1000, 150), (1000, 700, 100),
                                                   (640, 480, 224)])
def test_jpeg_draft_is_never_smaller_than_target(width, height, target):
    data = _encode(_stripes(width, height, [RED, GREEN]), "JPEG", quality=90)
    full = load_image(data)
    small = load_image(data, target_size=target)
    assert full.size == (width, height)
    assert min(small.size) >= target
    assert small.width < width and small.height < height  # the draft really decoded smaller
    assert min(small.size) < 2 * target  # and as small as libjpeg's scaling allows
    assert small.width / small.height == pytest.approx(width / height, rel=0.02)
    assert _close(small.getpixel((2, small.height // 2)), RED, tol=30)
    assert _close(small.getpixel((small.width - 3, small.height // 2)), GREEN, tol=30)


def test_letterbox_decodes_a_large_jpeg_only_as_finely_as_its_longer_side_needs():
    from model.preprocessing import load_input_image

    data = _encode(_stripes(768, 1024, [RED, GREEN]), "JPEG", quality=90)
    letterbox = Preprocessing(input_size=224, mean=LITE_MEAN, std=LITE_STD, resize="letterbox")
    crop = Preprocessing(input_size=224, mean=LITE_MEAN, std=LITE_STD, resize="center-crop")
    assert load_input_image(data, letterbox).size == (192, 256)  # 1/4 scale: the longer side still >= 224
    assert load_input_image(data, crop).size == (384, 512)  # the crop fills 224 with the shorter side
    fine = build_transform(letterbox)(load_image(data))
    coarse = load_and_transform(data, letterbox)
    assert (coarse - fine).abs().mean() < 0.02  # the same picture at the network's resolution


def test_target_size_larger_than_photo_changes_nothing():
    data = _encode(_noise(120, 90), "JPEG")
    assert load_image(data, target_size=224).size == (120, 90)
    png = _encode(_noise(600, 400), "PNG")
    assert load_image(png, target_size=64).size == (600, 400)  # only JPEG has draft decoding


@pytest.mark.parametrize("fmt, size", [("JPEG", (900, 500)), ("PNG", (90, 140))])
@pytest.mark.parametrize("prep", [TINY_PREP, Preprocessing(input_size=48, resize="center-crop")],
                         ids=["letterbox64", "crop48"])
def test_load_and_transform_equals_load_image_then_transform(fmt, size, prep):
    data = _encode(_noise(*size, seed=3), fmt)
    out = load_and_transform(data, prep)
    fit = "contain" if prep.resize == "letterbox" else "cover"
    expected = build_transform(prep)(load_image(data, target_size=prep.input_size, fit=fit))
    assert out.shape == (3, prep.input_size, prep.input_size)
    assert torch.equal(out, expected)
    if fmt == "PNG":
        assert torch.equal(out, build_transform(prep)(load_image(data)))


def test_load_and_transform_refuses_bad_bytes():
    with pytest.raises(ImageDecodeError):
        load_and_transform(b"GIF89a broken", TINY_PREP)


def test_dark_16bit_greyscale_png_stays_dark():
    # All values <= 255 in a 16-bit file are nearly black, not an 8-bit image to stretch.
    values = np.array([[0, 100, 255]], dtype=np.uint16)
    data = _encode(Image.fromarray(values), "PNG")
    with Image.open(io.BytesIO(data)) as raw:
        if not raw.mode.startswith("I;16"):
            pytest.fail(f"Pillow decoded a 16-bit PNG as {raw.mode}; the test needs I;16")
    grey = [load_image(data).getpixel((x, 0))[0] for x in range(3)]
    assert grey == [0, 0, 1]


# --------------------------------------------------------------------------------------------
# formats from phones, the supported list, and what unusable uploads are called


def test_supported_formats_and_the_error_message_agree():
    assert {"JPEG", "PNG", "WEBP", "HEIF", "GIF", "BMP", "TIFF"} <= set(SUPPORTED_FORMATS)
    assert ("AVIF" in SUPPORTED_FORMATS) == features.check("avif")
    names = {"WEBP": "WebP", "HEIF": "HEIC/HEIF", "MPO": "JPEG"}
    listed = SUPPORTED_FORMAT_NAMES.split(", ")
    assert sorted(listed) == sorted({names.get(f, f) for f in SUPPORTED_FORMATS})
    with pytest.raises(ImageDecodeError) as info:
        load_image(_encode(Image.new("RGB", (8, 8)), "TGA"))
    assert str(info.value).endswith("supported: " + SUPPORTED_FORMAT_NAMES)
    assert {".heic", ".heif"} <= set(IMAGE_SUFFIXES)  # catalogue folders pick up iPhone photos


def test_heic_decodes_with_its_colours():
    data = _encode(_stripes(96, 64, [RED, GREEN, BLUE]), "HEIF", quality=95)
    assert data[4:12] == b"ftypheic"
    img = load_image(data)
    assert img.mode == "RGB" and img.size == (96, 64)
    assert _close(img.getpixel((10, 32)), RED, tol=20)
    assert _close(img.getpixel((48, 32)), GREEN, tol=20)
    assert _close(img.getpixel((85, 32)), BLUE, tol=20)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF", "WEBP", "PNG", "TIFF"])
def test_orientation_is_honoured_in_every_container(fmt):
    if fmt not in SUPPORTED_FORMATS:
        pytest.skip(f"this Pillow build has no {fmt} support")
    upright = Image.new("RGB", (48, 96), GREY)
    upright.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(upright.transpose(Image.Transpose.ROTATE_90), fmt, exif=exif.tobytes())
    img = load_image(data)
    assert img.size == (48, 96)
    assert _close(img.getpixel((6, 6)), RED, tol=30) and _close(img.getpixel((41, 89)), GREY, tol=30)


def test_damaged_exif_does_not_cost_the_photo():
    # XResolution stored as text: ImageOps.exif_transpose raised TypeError here.
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x011A] = 72.0
    raw = bytearray(exif.tobytes())
    entry = raw.find(b"\x01\x1a\x00\x05")
    raw[entry + 2:entry + 4] = b"\x00\x02"
    upright = Image.new("RGB", (48, 96), GREY)
    upright.paste(RED, (0, 0, 16, 16))
    img = load_image(_encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=bytes(raw)))
    assert img.size == (48, 96) and _close(img.getpixel((6, 6)), RED)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_images_give_their_first_frame(fmt):
    frames = [Image.new("RGB", (32, 24), colour) for colour in (RED, GREEN, BLUE)]
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.is_animated
    img = load_image(data)
    assert img.size == (32, 24) and _close(img.getpixel((16, 12)), RED)


def test_colour_key_transparency_composites_on_white():
    rgb = Image.new("RGB", (4, 4), GREEN)
    rgb.putpixel((0, 0), RED)
    out = load_image(_encode(rgb, "PNG", transparency=GREEN))
    assert out.getpixel((0, 0)) == RED and out.getpixel((3, 3)) == (255, 255, 255)
    grey = Image.new("L", (4, 4), 7)
    assert load_image(_encode(grey, "PNG", transparency=7)).getpixel((1, 1)) == (255, 255, 255)


def test_16bit_colour_png_keeps_its_colours():
    photo = _noise(20, 12, seed=5)
    rgb16 = np.asarray(photo, dtype=np.uint16) * 257
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(12))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20, 12, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    assert np.array_equal(np.asarray(load_image(data)), np.asarray(photo))


@pytest.mark.parametrize("payload, named", [
    (b"", "the file is empty"),
    (b"%PDF-1.4\n1 0 obj\n", "this is a PDF document"),
    (b"PK\x03\x04" + b"\x00" * 30, "this is a ZIP archive"),
    (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41", "this is a video"),
    (b"\xef\xbb\xbf  <svg xmlns='http://www.w3.org/2000/svg'/>", "unsupported image format SVG"),
    (b"<html><body>oops</body></html>", "this is an HTML page"),
    (b"data:image/png;base64,iVBORw0KGgo=", "base64"),
    # longer than the sniffed prefix, which ends inside the two bytes of an "é"
    (b"x" * 2047 + "\u00e9 and more text".encode(), "this is plain text"),
    (b"\x00\x01\x02\x03" * 50, "not an image, or not a supported format"),
], ids=["empty", "pdf", "zip", "mp4", "svg-with-bom", "html", "data-url", "long-text", "binary"])
def test_unidentified_uploads_say_what_they_are(payload, named):
    with pytest.raises(ImageDecodeError, match=re.escape(named)):
        load_image(payload)


def test_files_on_disk_are_named_too(tmp_path):
    path = tmp_path / "looks-like.jpg"
    path.write_bytes(b"%PDF-1.4\n")
    with pytest.raises(ImageDecodeError, match="PDF document"):
        load_image(path)


def test_truncated_heif_and_avif_are_called_corrupt():
    heic = _encode(_noise(40, 30), "HEIF")
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        load_image(heic[:len(heic) // 2])
    if "AVIF" in SUPPORTED_FORMATS:
        avif = _encode(_noise(40, 30), "AVIF")
        with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
            load_image(avif[:len(avif) // 2])


# --------------------------------------------------------------------------------------------
# the pixel limit, in every container


def _animated(fmt: str) -> bytes:
    frames = [_noise(100, 80, seed=i) for i in range(3)]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:])


@pytest.mark.parametrize("make", [
    lambda: _encode(_noise(100, 80), "GIF"),
    lambda: _animated("GIF"),
    lambda: _animated("PNG"),
    lambda: _encode(_noise(100, 80), "TIFF"),
    lambda: _encode(_noise(100, 80), "BMP"),
    lambda: _encode(_noise(100, 80), "HEIF"),
    lambda: _encode(_noise(100, 80), "MPO", save_all=True, append_images=[_noise(100, 80, seed=1)]),
], ids=["gif", "animated-gif", "apng", "tiff", "bmp", "heif", "mpo"])
def test_pixel_limit_comes_before_decoding_in_every_container(make):
    # A sixth of the file, inside the first frame's pixel data: decoding it would fail as
    # truncated, so an error naming the size proves nothing was decoded.
    data = make()
    cut = data[:len(data) // 6]
    with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
        load_image(cut)
    with pytest.raises(ImageDecodeError, match="100x80 pixels, more than the 7999 allowed"):
        load_image(cut, max_pixels=7999)


@pytest.mark.parametrize("fmt", ["WEBP", "AVIF"])
def test_pixel_limit_applies_to_webp_and_avif(fmt):
    # Their decoders refuse a cut file at open, so here the whole file shows the limit applies.
    if fmt not in SUPPORTED_FORMATS:
        pytest.skip(f"this Pillow build has no {fmt} support")
    data = _encode(_noise(100, 80), fmt)
    with pytest.raises(ImageDecodeError, match="100x80 pixels, more than the 7999 allowed"):
        load_image(data, max_pixels=7999)
    assert load_image(data, max_pixels=8000).size == (100, 80)


def test_animated_webp_canvas_is_checked_not_just_its_frames():
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    data = bytearray(_encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    vp8x = data.find(b"VP8X")
    data[vp8x + 12:vp8x + 18] = (9999).to_bytes(3, "little") + (7999).to_bytes(3, "little")
    with pytest.raises(ImageDecodeError, match="10000x8000 pixels"):
        load_image(bytes(data))


def test_beyond_pillows_own_guard_the_error_still_names_the_pixel_count():
    with pytest.raises(ImageDecodeError, match="image is 400000000 pixels, more than the 40000000 allowed"):
        load_image(_png_with_header_size(20_000, 20_000))


# --------------------------------------------------------------------------------------------
# extreme aspect ratios through every resize policy


@pytest.mark.parametrize("size", [(1, 1), (10_000, 10), (10, 10_000), (2, 3000), (200_000, 1)])
@pytest.mark.parametrize("policy", ["letterbox", "squash", "center-crop"])
def test_extreme_aspect_ratios_become_a_full_input(size, policy):
    prep = Preprocessing(input_size=32, resize=policy)
    img = Image.new("RGB", size, RED)
    assert resize_to_input(img, prep).size == (32, 32)
    out = build_transform(prep)(img)
    assert out.shape == (3, 32, 32) and torch.isfinite(out).all()
    expected_red = (1.0 - prep.mean[0]) / prep.std[0]
    assert out[0].max().item() == pytest.approx(expected_red, abs=1e-5)  # the photo is in there


def test_center_crop_of_a_long_strip_keeps_its_middle():
    strip = _stripes(30_000, 3, [BLUE, GREEN, RED])
    cropped = np.asarray(resize_to_input(strip, Preprocessing(input_size=16, resize="center-crop")))
    assert (cropped[..., 1] > 200).all() and (cropped[..., 0] < 40).all()


@pytest.mark.parametrize("size", [(1, 1), (10_000, 10), (3, 4000)])
def test_jpeg_draft_decoding_handles_extreme_sizes(size):
    data = _encode(Image.new("RGB", size, BLUE), "JPEG")
    img = load_image(data, target_size=64)
    assert img.size == size and _close(img.getpixel((0, 0)), BLUE, tol=20)


@pytest.mark.parametrize("mean,std", [(LITE_MEAN, LITE_STD), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_to_tensor_is_exactly_the_per_pixel_normalisation(mean, std):
    # to_tensor looks the normalised value of each 8-bit level up in a table; it must give the very
    # tensor (x / 255 - mean) / std gives pixel by pixel, so indexes built before the table still match.
    prep = Preprocessing(input_size=64, mean=mean, std=std, resize="squash")
    pixels = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    pixels[0, :3] = [[0, 0, 0], [255, 255, 255], [127, 128, 129]]  # both ends and the middle
    reference = (torch.from_numpy(pixels).permute(2, 0, 1).float().div(255.0)
                 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    out = to_tensor(Image.fromarray(pixels), prep)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert torch.equal(out, reference)
