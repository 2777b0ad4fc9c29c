"""The one definition of how a photo becomes the embedder's input.

Training, indexing and serving all call `load_image` and `build_transform(config.preprocessing)`,
so a catalogue photo and a shopper's upload go through exactly the same pixels-to-tensor path.
"""
from __future__ import annotations

import functools
import io
import math
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError, features
from pillow_heif import register_heif_opener

from .color import to_srgb
from .config import Preprocessing

# HEIC is what iPhones save by default. Registering here, where every photo is decoded, makes
# training, indexing and serving accept it alike. Thumbnails, depth maps and auxiliary images
# inside a HEIF are never used, so libheif is told not to read them.
register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# Pillow's own bomb guard warns at 89 Mpx and only raises at twice that; we refuse earlier and
# before decoding, from the header alone. 40 Mpx is above any phone camera's output.
MAX_PIXELS = 40_000_000

# Pillow's format names. MPO is how Pillow names the multi-picture JPEGs some cameras write;
# AVIF decodes through Pillow's bundled libavif, present in the pinned wheels but not in every
# source build, so it is only claimed where it actually works.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "HEIF") + (("AVIF",) if features.check("avif") else ()) + (
    "GIF", "BMP", "TIFF", "MPO")
_DISPLAY_NAMES = {"WEBP": "WebP", "HEIF": "HEIC/HEIF", "MPO": "JPEG"}
SUPPORTED_FORMAT_NAMES = ", ".join(dict.fromkeys(_DISPLAY_NAMES.get(f, f) for f in SUPPORTED_FORMATS))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".heic", ".heif") + (
    (".avif",) if "AVIF" in SUPPORTED_FORMATS else ())

_ORIENTATION_TAG = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SNIFF_BYTES = 2048


class ImageDecodeError(ValueError):
    """The bytes are not a photo we can use; the message is safe to show to the uploader."""


def load_image(source: str | Path | bytes | BinaryIO, target_size: int | None = None,
               max_pixels: int = MAX_PIXELS, fit: str = "cover") -> Image.Image:
    """Decode a photo to an upright 8-bit sRGB image, its colours converted through its embedded ICC
    profile (model/color.py); ImageDecodeError for anything else.

    Only the first frame of an animated GIF, WebP or PNG (and the first page of a TIFF) is used.
    The pixel count is checked from the header, before any pixel data is decoded.

    `target_size` lets JPEG decoding run at a reduced scale (libjpeg's DCT scaling) when the photo
    is much larger than the network input, never below what the later resize needs: with
    fit="cover" (squash, center-crop) target_size on the shorter side; with fit="contain" (letterbox)
    target_size on the longer side, so a 768×1024 photo decodes at 1/4 scale instead of 1/2.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    start = _position(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if img.format not in SUPPORTED_FORMATS:
                    raise ImageDecodeError(
                        f"unsupported image format {img.format}; supported: {SUPPORTED_FORMAT_NAMES}")
                width, height = img.size
                if width < 1 or height < 1:
                    raise ImageDecodeError("image has no pixels")
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        f"image is {width}x{height} pixels, more than the {max_pixels} allowed")
                if target_size and img.format == "JPEG":
                    img.draft("RGB", (target_size, target_size) if fit == "cover"
                              else fit_inside_size(width, height, target_size))
                img.load()
                draft_factor = width / img.size[0]
                # Colour through the embedded profile first: a CMYK photo's profile, not Pillow's
                # naive formula, says which RGB its inks make.
                out = _to_rgb(to_srgb(_upright(img)))
                # The upright photo's full size, also when JPEG draft decoding made it smaller: what
                # coordinates sent back to the uploader (a garment region) are measured in.
                out.info["source_size"] = (round(out.width * draft_factor), round(out.height * draft_factor))
                return out
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(_describe_unidentified(_head(source, start))) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fires inside Image.open, before our check sees the size.
        counted = re.search(r"\((\d+) pixels\)", str(exc))
        if counted is None:
            raise ImageDecodeError(f"image has more than the {max_pixels} pixels allowed") from None
        raise ImageDecodeError(f"image is {counted.group(1)} pixels, more than the {max_pixels} allowed") from None
    # Decoders report damaged data in all of these: libavif as RuntimeError, Pillow's TIFF/EXIF
    # readers as struct.error. Each is the upload's fault, never the server's.
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError, struct.error) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {str(exc).strip()}") from None


def _position(source: object) -> int | None:
    try:
        return source.tell()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


def _head(source: str | Path | BinaryIO, start: int | None) -> bytes | None:
    """The first bytes of an upload Pillow could not identify (None where they cannot be re-read)."""
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as handle:
                return handle.read(_SNIFF_BYTES)
        if start is not None:
            source.seek(start)
            return source.read(_SNIFF_BYTES)
    except (OSError, ValueError):
        pass
    return None


# ISO media files name their kind in the `ftyp` box's brand: photos (HEIC, AVIF) or videos.
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis")
_VIDEO_BRANDS = (b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"qt  ", b"M4V ", b"3gp", b"3g2", b"dash")
_BASE64_STARTS = ("data:", "/9j/", "ivborw0kggo")  # a data: URL, or base64 of a JPEG or a PNG


def _describe_unidentified(head: bytes | None) -> str:
    """Why bytes Pillow cannot identify are refused, saying what they are where that is clear:
    people upload documents, archives, videos, web pages and base64 text by mistake."""
    if head is None:
        return f"not an image, or not a supported format (supported: {SUPPORTED_FORMAT_NAMES})"
    if not head:
        return "the file is empty, not an image"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        # The container names a HEIC/AVIF photo, yet the decoder could not even read its header.
        return "corrupt or truncated image: a HEIC/HEIF or AVIF file whose structure cannot be read"
    text = _as_text(head)
    lowered = text.lstrip(" \t\r\n").lower() if text is not None else None
    if lowered is not None and lowered.startswith(_BASE64_STARTS):
        return ("this is base64 text, not an image file: send the photo's own bytes, not their "
                "base64 encoding or a data: URL")
    if lowered is not None and lowered.startswith("<") and "<svg" in lowered:
        return f"unsupported image format SVG (a vector drawing, not a photo); supported: {SUPPORTED_FORMAT_NAMES}"
    kind = _non_image_kind(head, lowered)
    if kind is not None:
        return f"this is {kind}, not an image; supported: {SUPPORTED_FORMAT_NAMES}"
    return f"not an image, or not a supported format (supported: {SUPPORTED_FORMAT_NAMES})"


def _non_image_kind(head: bytes, lowered_text: str | None) -> str | None:
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "a ZIP archive"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip archive"
    if head[4:8] == b"ftyp" and head[8:12].startswith(_VIDEO_BRANDS):
        return "a video (MP4/MOV)"
    if lowered_text is None:
        return None
    if lowered_text.startswith(("<!doctype html", "<html")):
        return "an HTML page"
    if lowered_text.startswith("<"):
        return "an XML document"
    if lowered_text.startswith(("{", "[")):
        return "JSON text"
    return "plain text"


def _as_text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The sniffed prefix may end inside a multi-byte character; only an earlier error counts.
        if exc.start < len(head) - 3:
            return None
        text = head[:exc.start].decode("utf-8")
    text = text.removeprefix("\ufeff")  # a byte-order mark opens many text files written on Windows
    if all(ch.isprintable() or ch in "\t\n\r\f" for ch in text):
        return text
    return None


def _upright(img: Image.Image) -> Image.Image:
    """The photo turned as its EXIF (or XMP) orientation tag says a camera held it."""
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG)
        method = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    except Exception:
        # A damaged metadata block must not cost a usable photo: Pillow's EXIF reader raises
        # struct.error, TypeError and others on bad tags, so the photo is used as stored.
        return img
    return img.transpose(method) if method is not None else img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of letting convert() clip at 255. Mode "I"
        # says nothing of the bit depth, so there only values above 255 reveal 16 bits.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.rint(arr * (255.0 / peak)).clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        # A transparent palette index or tRNS colour key is alpha too: it must not show its colour.
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Catalogue cut-outs are shown on white; compositing on white matches how shoppers see them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class Box:
    """A region of a photo in its own upright pixel coordinates: x0 <= x < x1, y0 <= y < y1."""

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def parse(cls, text: str) -> "Box":
        parts = text.split(",")
        try:
            x0, y0, x1, y1 = (float(p) for p in parts)
        except ValueError:
            raise BoxError(f"box must be four numbers x0,y0,x1,y1, got {text!r}") from None
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise BoxError("box coordinates must be finite numbers")
        if x1 <= x0 or y1 <= y0:
            raise BoxError(f"box needs x0 < x1 and y0 < y1, got {text!r}")
        return cls(x0, y0, x1, y1)


class BoxError(ValueError):
    """A box that is malformed or does not fit the photo; the message is safe to show."""


MIN_BOX_SIDE = 8


def crop_to_box(img: Image.Image, box: Box) -> Image.Image:
    width, height = img.size
    if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
        raise BoxError(f"box {box.x0:g},{box.y0:g},{box.x1:g},{box.y1:g} lies outside the "
                       f"{width}x{height} photo (coordinates are pixels of the upright photo)")
    left, top, right, bottom = (round(box.x0), round(box.y0), round(box.x1), round(box.y1))
    if right - left < MIN_BOX_SIDE or bottom - top < MIN_BOX_SIDE:
        raise BoxError(f"box must be at least {MIN_BOX_SIDE}x{MIN_BOX_SIDE} pixels")
    return img.crop((left, top, right, bottom))


def fit_inside_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) of a photo scaled so its longer side is `size`: the letterbox's content."""
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def center_crop_region(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the source region that a center crop to size × size keeps."""
    # Computed as the source region that lands in the crop and resampled alone, because scaling the
    # whole photo first would turn a 40-megapixel strip one pixel tall into billions of pixels.
    scale = size / min(width, height)
    scaled_width, scaled_height = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (scaled_width - size) // 2, (scaled_height - size) // 2
    to_source_x, to_source_y = width / scaled_width, height / scaled_height
    return left * to_source_x, top * to_source_y, (left + size) * to_source_x, (top + size) * to_source_y


def _fit_inside(img: Image.Image, size: int) -> Image.Image:
    return img.resize(fit_inside_size(img.width, img.height, size), Image.BILINEAR, reducing_gap=3.0)


def resize_to_input(img: Image.Image, prep: Preprocessing) -> Image.Image:
    """The photo as the network sees it, still as an image (letterbox padding in the mean colour)."""
    size = prep.input_size
    width, height = img.size
    if prep.resize == "squash":
        return img.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    if prep.resize == "center-crop":  # scale so the shorter side fits, then keep the middle
        return img.resize((size, size), Image.BILINEAR, box=center_crop_region(width, height, size),
                          reducing_gap=3.0)
    resized = _fit_inside(img, size)
    canvas = Image.new("RGB", (size, size), tuple(round(m * 255) for m in prep.mean))
    canvas.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
    return canvas


@functools.lru_cache(maxsize=16)
def normalising_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: the normalised value of each 8-bit level per channel, computed with the
    same float32 operations a per-pixel (x / 255 - mean) / std would use, so a look-up gives the
    identical tensor in one pass over the pixels instead of four."""
    levels = torch.arange(256, dtype=torch.uint8).float().div_(255.0)
    return ((levels - torch.tensor(mean).view(3, 1)) / torch.tensor(std).view(3, 1)).numpy()


def _normalise_into(img: Image.Image, prep: Preprocessing, out: np.ndarray) -> None:
    """Write the RGB image's normalised values into `out`, a (3, img.height, img.width) float32 view."""
    table = normalising_table(tuple(prep.mean), tuple(prep.std))
    pixels = np.asarray(img, dtype=np.uint8)
    for channel in range(3):
        np.take(table[channel], pixels[..., channel], out=out[channel])


def to_tensor(img: Image.Image, prep: Preprocessing) -> torch.Tensor:
    out = np.empty((3, img.height, img.width), np.float32)
    _normalise_into(img, prep, out)
    return torch.from_numpy(out)


def build_transform(prep: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """RGB PIL image -> normalised float tensor (3, input_size, input_size)."""
    size = prep.input_size

    def transform(img: Image.Image) -> torch.Tensor:
        if prep.resize != "letterbox":
            return to_tensor(resize_to_input(img, prep), prep)
        # Padding is written as exact zeros in tensor space: an 8-bit mean colour would leave a
        # small constant there that max pooling could pick up.
        resized, left, top = letterbox_content(img, size)
        out = np.zeros((3, size, size), np.float32)
        _normalise_into(resized, prep, out[:, top:top + resized.height, left:left + resized.width])
        return torch.from_numpy(out)

    return transform


def letterbox_content(img: Image.Image, size: int) -> tuple[Image.Image, int, int]:
    """The photo scaled to fit a size x size letterbox, and its (left, top) offset in it."""
    resized = _fit_inside(img, size)
    return resized, (size - resized.width) // 2, (size - resized.height) // 2


def letterbox_tensor(content: np.ndarray, left: int, top: int, prep: Preprocessing) -> torch.Tensor:
    """(h, w, 3) uint8 letterbox content at (left, top) -> the (3, S, S) tensor `build_transform` makes."""
    size = prep.input_size
    out = np.zeros((3, size, size), np.float32)
    _normalise_into(Image.fromarray(content), prep, out[:, top:top + content.shape[0], left:left + content.shape[1]])
    return torch.from_numpy(out)


def load_input_image(source: str | Path | bytes | BinaryIO, prep: Preprocessing,
                     max_pixels: int = MAX_PIXELS) -> Image.Image:
    """load_image, decoding a large JPEG only as finely as `prep`'s resize needs."""
    return load_image(source, target_size=prep.input_size, max_pixels=max_pixels,
                      fit="contain" if prep.resize == "letterbox" else "cover")


def load_and_transform(source: str | Path | bytes | BinaryIO, prep: Preprocessing) -> torch.Tensor:
    return build_transform(prep)(load_input_image(source, prep))
