"""The garment crop of a shopper's photo, taken from the photo's own pixels.

An adapted model finds the garment on the query input: the photo letterboxed and scaled down to the
query size (320 px). Cropping the box out of that small frame throws away what a small garment has
left; cropping it out of the decoded photo keeps it. Measured on 400 `small` views (the garment at
0.2-0.55 of the frame): top-1 0.438 from the frame, 0.50 from the photo (README, "Adapt").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .config import Preprocessing
from .preprocessing import fit_inside_size, letterbox_tensor

# A photo is kept for the crop at up to this many times the catalogue's input size on its longer
# side: a garment a quarter of the photo wide is then still cropped at full catalogue resolution,
# and a 12-megapixel upload does not sit in the queue at full size.
CROP_SOURCE_FACTOR = 4


def crop_source_size(catalog_prep: Preprocessing) -> int:
    """The longer side, in pixels, a photo needs to be decoded at for its garment crop."""
    return CROP_SOURCE_FACTOR * catalog_prep.input_size


def photo_box(box: Sequence[float], photo_size: tuple[int, int], frame_size: int) -> tuple[float, ...]:
    """A box in units of the letterboxed query frame (0..1, may pass the edges) -> photo pixels,
    unclipped, for the photo that frame was made from (the letterbox geometry of build_transform)."""
    width, height = photo_size
    content_w, content_h = fit_inside_size(width, height, frame_size)
    left, top = (frame_size - content_w) // 2, (frame_size - content_h) // 2
    sx, sy = content_w / width, content_h / height
    x0, y0, x1, y1 = (float(v) * frame_size for v in box)
    return (x0 - left) / sx, (y0 - top) / sy, (x1 - left) / sx, (y1 - top) / sy


def crop_photo(photo: Image.Image, box: Sequence[float], frame_size: int, catalog_prep: Preprocessing) -> torch.Tensor:
    """The square garment box (query-frame units) of `photo`, as the catalogue's (3, S, S) input tensor.

    The part of the box past the photo's edges is exact zeros, the letterbox padding a shop photo
    gets, as when the box is cropped from the query tensor."""
    size = catalog_prep.input_size
    x0, y0, x1, y1 = photo_box(box, photo.size, frame_size)
    side = max(x1 - x0, y1 - y0, 1e-6)
    scale = size / side
    ix0, iy0 = max(0.0, x0), max(0.0, y0)
    ix1, iy1 = min(float(photo.width), x1), min(float(photo.height), y1)
    left, top = min(size - 1, max(0, round((ix0 - x0) * scale))), min(size - 1, max(0, round((iy0 - y0) * scale)))
    out_w = min(size - left, round((ix1 - ix0) * scale))
    out_h = min(size - top, round((iy1 - iy0) * scale))
    if out_w < 1 or out_h < 1:  # the box misses the photo: nothing to see but padding
        return torch.zeros(3, size, size)
    content = photo.resize((out_w, out_h), Image.BILINEAR, box=(ix0, iy0, ix1, iy1), reducing_gap=3.0)
    return letterbox_tensor(np.asarray(content), left, top, catalog_prep)


def crop_photos(photos: Sequence[Image.Image], boxes: np.ndarray, frame_size: int,
                catalog_prep: Preprocessing) -> torch.Tensor:
    """(B, 3, S, S) garment crops of B photos, one box (frame units) each."""
    return torch.stack([crop_photo(p, b, frame_size, catalog_prep) for p, b in zip(photos, boxes)])
