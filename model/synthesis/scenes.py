"""Procedural scenes and colours behind and over a synthesised shopper's photo."""
from __future__ import annotations

import colorsys
import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_BILINEAR = Image.Resampling.BILINEAR


def random_colour(r: random.Random, max_sat: float = 0.7) -> tuple[int, int, int]:
    # Scenes are mostly muted (walls, pavement, wood); a few saturated ones keep the model honest.
    rgb = colorsys.hsv_to_rgb(r.random(), r.random() ** 1.8 * max_sat, r.uniform(0.18, 0.95))
    return tuple(round(v * 255) for v in rgb)


def skin_tone(r: random.Random) -> tuple[int, int, int]:
    t = r.random()
    return tuple(round(lo + (hi - lo) * t + r.uniform(-8, 8)) for lo, hi in zip((242, 204, 176), (88, 56, 40)))


def value_noise(h: int, w: int, nrng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth random field scaled to 0..1: three octaves of bicubically enlarged random grids."""
    out = np.zeros((h, w), np.float32)
    for octave in range(3):
        k = cells * 2 ** octave / max(h, w)
        grid = nrng.random((max(2, round(k * h)), max(2, round(k * w))), dtype=np.float32)
        out += np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC)) / 2 ** octave
    return (out - out.min()) / (np.ptp(out) + 1e-6)


def procedural_background(w: int, h: int, r: random.Random, nrng: np.random.Generator) -> Image.Image:
    """A scene at (w, h): gradient, texture, bricks/tiles/planks, blurred street blobs or a room."""
    c0, c1 = np.array(random_colour(r), np.float32), np.array(random_colour(r), np.float32)
    kind = r.choice(("gradient", "texture", "bricks", "tiles", "planks", "blobs", "room"))
    if kind == "gradient":
        a = r.uniform(0, 2 * math.pi)
        t = math.cos(a) * np.arange(w)[None, :] + math.sin(a) * np.arange(h)[:, None]
        img = c0 + (c1 - c0) * ((t - t.min()) / (np.ptp(t) + 1e-6))[..., None]
    elif kind == "texture":  # concrete, carpet, grass, knit
        img = c0 + (c1 - c0) * r.uniform(0.3, 1) * value_noise(h, w, nrng, r.choice((4, 12, 32, 64)))[..., None]
    elif kind in ("bricks", "tiles", "planks"):
        vertical = kind != "bricks" and r.random() < 0.4  # planks and tiles also run up the frame
        unit = r.uniform(0.04, 0.15) * h
        length = unit * {"bricks": r.uniform(2, 3.5), "tiles": 1.0, "planks": r.uniform(4, 10)}[kind]
        yy, xx = (np.mgrid[0:w, 0:h] if vertical else np.mgrid[0:h, 0:w]).astype(np.float32)
        rows = (yy / unit).astype(int)
        n = rows.max() + 1
        shift = {"bricks": np.arange(n) % 2 * length / 2, "tiles": np.zeros(n), "planks": nrng.random(n) * length}
        xx += shift[kind][rows]
        cols = (xx / length).astype(int)
        img = c0 * (1 + nrng.normal(0, r.uniform(0.03, 0.15), (n, cols.max() + 1, 1)).astype(np.float32)[rows, cols])
        gap = max(1.0, unit * r.uniform(0.03, 0.12))
        img[((yy % unit) < gap) | ((xx % length) < gap)] = c1 if r.random() < 0.5 else c0 * 0.6
        img = np.ascontiguousarray(img.transpose(1, 0, 2)) if vertical else img
    else:
        im = Image.new("RGB", (w, h), tuple(int(v) for v in c0))
        draw = ImageDraw.Draw(im)
        if kind == "room":  # wall, floor, then doors, windows, furniture and frames
            draw.rectangle((0, round(h * r.uniform(0.45, 0.85)), w, h), fill=tuple(int(v) for v in c1))
            for _ in range(r.randint(1, 5)):
                x, y = r.uniform(-0.1, 1.0) * w, r.uniform(0.0, 0.8) * h
                draw.rectangle((x, y, x + r.uniform(0.05, 0.4) * w, y + r.uniform(0.05, 0.6) * h), fill=random_colour(r))
        else:  # out-of-focus street or shop interior: many overlapping things, mostly upright
            for _ in range(r.randint(15, 60)):
                x, y, s = r.uniform(-0.1, 1.0) * w, r.uniform(-0.1, 1.0) * h, r.uniform(0.02, 0.3) * max(w, h)
                shape = draw.ellipse if r.random() < 0.3 else draw.rectangle
                shape((x, y, x + s * r.uniform(0.2, 1.2), y + s), fill=random_colour(r, 0.9))
        img = np.asarray(im.filter(ImageFilter.GaussianBlur(r.uniform(1, 4) if kind == "room" else r.uniform(3, 9))),
                         np.float32)
    img = img * (1 + r.uniform(0, 0.3) * (value_noise(h, w, nrng, 3) - 0.5))[..., None]  # uneven light
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if r.random() < 0.4:  # wall or floor seen at an angle
        j = [r.uniform(0, 0.3) for _ in range(4)]
        quad = (j[0] * w, 0, 0, h, w, h - j[2] * h, w - j[3] * w, j[1] * h)
        out = out.transform((w, h), Image.Transform.QUAD, quad, _BILINEAR)
    return out
