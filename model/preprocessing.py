"""The one definition of how a photo becomes the embedder's input.

Training, indexing and serving all call `load_image` and `build_transform(config.preprocessing)`,
so a catalogue photo and a shopper's upload go through exactly the same pixels-to-tensor path.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import Preprocessing

# Pillow's own bomb guard warns at 89 Mpx and only raises at twice that; we refuse earlier and
# before decoding, from the header alone. 40 Mpx is above any phone camera's output.
MAX_PIXELS = 40_000_000

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class ImageDecodeError(ValueError):
    """The bytes are not a photo we can use; the message is safe to show to the uploader."""


def load_image(source: str | Path | bytes | BinaryIO, target_size: int | None = None,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a photo to an upright 8-bit RGB image.

    `target_size` lets JPEG decoding run at a reduced scale (libjpeg's DCT scaling) when the photo
    is much larger than the network input: the result is never smaller than target_size on its
    shorter side, so the later resize sees the same detail.
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            if img.format not in SUPPORTED_FORMATS:
                raise ImageDecodeError(
                    f"unsupported image format {img.format}; supported: {', '.join(SUPPORTED_FORMATS[:-1])}"
                )
            width, height = img.size
            if width < 1 or height < 1:
                raise ImageDecodeError("image has no pixels")
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} pixels, more than the {max_pixels} allowed"
                )
            if target_size and img.format == "JPEG":
                img.draft("RGB", (target_size, target_size))
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not an image, or not a supported format ({', '.join(SUPPORTED_FORMATS[:-1])})"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, EOFError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of letting convert() clip at 255. Mode "I"
        # says nothing of the bit depth, so there only values above 255 reveal 16 bits.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.rint(arr * (255.0 / peak)).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
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


def _fit_inside(img: Image.Image, size: int) -> Image.Image:
    scale = size / max(img.width, img.height)
    new_size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(new_size, Image.BILINEAR, reducing_gap=3.0)


def resize_to_input(img: Image.Image, prep: Preprocessing) -> Image.Image:
    """The photo as the network sees it, still as an image (letterbox padding in the mean colour)."""
    size = prep.input_size
    width, height = img.size
    if prep.resize == "squash":
        return img.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    if prep.resize == "center-crop":
        scale = size / min(width, height)
        img = img.resize((max(size, round(width * scale)), max(size, round(height * scale))),
                         Image.BILINEAR, reducing_gap=3.0)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        return img.crop((left, top, left + size, top + size))
    resized = _fit_inside(img, size)
    canvas = Image.new("RGB", (size, size), tuple(round(m * 255) for m in prep.mean))
    canvas.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
    return canvas


def to_tensor(img: Image.Image, prep: Preprocessing) -> torch.Tensor:
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    mean = torch.tensor(prep.mean).view(3, 1, 1)
    std = torch.tensor(prep.std).view(3, 1, 1)
    return (arr.float().div_(255.0) - mean) / std


def build_transform(prep: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """RGB PIL image -> normalised float tensor (3, input_size, input_size)."""
    size = prep.input_size

    def transform(img: Image.Image) -> torch.Tensor:
        if prep.resize != "letterbox":
            return to_tensor(resize_to_input(img, prep), prep)
        # Padding is written as exact zeros in tensor space: an 8-bit mean colour would leave a
        # small constant there that max pooling could pick up.
        resized = _fit_inside(img, size)
        out = torch.zeros(3, size, size)
        top, left = (size - resized.height) // 2, (size - resized.width) // 2
        out[:, top:top + resized.height, left:left + resized.width] = to_tensor(resized, prep)
        return out

    return transform


def load_and_transform(source: str | Path | bytes | BinaryIO, prep: Preprocessing) -> torch.Tensor:
    return build_transform(prep)(load_image(source, target_size=prep.input_size))
