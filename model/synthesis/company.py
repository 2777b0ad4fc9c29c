"""Other products in a shopper's photo: the trousers under the shirt, the bag beside it, people behind.

A street photo rarely shows one garment alone, and a view that does teaches the foreground map
that anything product-like is the product. Company is cut out of other catalogue photos and set
into the scene before the product is placed, so the product covers it and the view's mask (the
product alone) marks it as background.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..preprocessing import ImageDecodeError, load_image
from .cutout import product_mask

_BILINEAR = Image.Resampling.BILINEAR


def add_company(scene: np.ndarray, companions: Sequence[Path], count: tuple[int, int],
                height: tuple[float, float], blur: tuple[float, float], r: random.Random) -> np.ndarray:
    """`scene` (H, W, 3) float with `count` (low, high) products drawn from `companions` set into it,
    each as long as `height` (low, high) of the frame's height on its longer side and defocused by
    `blur` px. A photo that will not decode, or has no backdrop to cut its product from, is passed over."""
    H, W = scene.shape[:2]
    canvas = Image.fromarray(np.clip(scene + 0.5, 0, 255).astype(np.uint8)).convert("RGBA")
    for _ in range(r.randint(*count)):
        path, tall, angle = r.choice(companions), r.uniform(*height) * H, r.triangular(-12, 12, 0)
        cx, cy, radius, light = r.uniform(0, W), r.uniform(0.1 * H, H), r.uniform(*blur), r.uniform(0.6, 1.05)
        try:
            photo = load_image(path, target_size=max(16, round(tall)))
        except (ImageDecodeError, OSError):
            continue  # a bad file must not kill a DataLoader worker
        mask = product_mask(photo)
        box = mask.point([0] * 128 + [255] * 128).getbbox() if mask is not None else None
        if box is None:
            continue
        # Premultiplied, so that resizing and defocusing blend no backdrop into the product's edge.
        layer = Image.merge("RGBA", (*photo.split(), mask)).crop(box).convert("RGBa")
        scale = tall / max(layer.size)  # a shoe as long as a dress is tall, not as tall
        layer = layer.resize((max(1, round(layer.width * scale)), max(1, round(layer.height * scale))), _BILINEAR)
        layer = layer.rotate(angle, _BILINEAR, expand=True)
        if radius > 0.3:
            layer = layer.filter(ImageFilter.BoxBlur(radius))
        lit = np.asarray(layer, np.float32) * np.array([light, light, light, 1.0], np.float32)
        layer = Image.fromarray(np.clip(lit + 0.5, 0, 255).astype(np.uint8), "RGBa").convert("RGBA")
        canvas.alpha_composite(layer, (round(cx - layer.width / 2), round(cy - layer.height / 2)))
    return np.asarray(canvas.convert("RGB"), np.float32)
