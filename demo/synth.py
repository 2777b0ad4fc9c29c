"""Synthetic fashion catalogue: product photos drawn with Pillow, so the demo needs no downloaded assets.

Each garment is a flat-lay silhouette (polygons, arcs, straps) whose print is rendered on a full
canvas and pasted through the silhouette mask, then shaded, outlined and given a soft drop shadow
on a near-white studio background. Drawing happens at 2x and is downsampled for clean edges.
"""
from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter

RGB = tuple[int, int, int]
Points = list[tuple[float, float]]

COLOURS: MappingProxyType[str, RGB] = MappingProxyType({
    "black": (30, 30, 33), "ivory": (238, 233, 218), "grey": (140, 141, 146),
    "navy": (32, 44, 92), "sky blue": (118, 172, 224), "red": (204, 38, 44),
    "burgundy": (118, 26, 48), "pink": (240, 148, 178), "mustard": (218, 166, 42),
    "olive": (108, 114, 46), "emerald": (20, 128, 84), "camel": (192, 146, 96),
    "purple": (112, 62, 152),
})
PATTERNS: tuple[str, ...] = ("solid", "horizontal-stripes", "vertical-stripes", "diagonal-stripes",
                             "polka-dots", "gingham", "colour-block")
_PATTERN_WORDS = {"horizontal-stripes": "Striped", "vertical-stripes": "Vertical-Stripe",
                  "diagonal-stripes": "Diagonal-Stripe", "polka-dots": "Polka-Dot",
                  "gingham": "Gingham", "colour-block": "Colour-Block"}
_KIND_TITLES = {"t-shirt": "T-Shirt", "long-sleeve-top": "Long-Sleeve Top", "dress": "Dress",
                "trousers": "Trousers", "skirt": "Skirt", "shorts": "Shorts", "hoodie": "Hoodie",
                "tote-bag": "Tote Bag", "sneaker": "Sneakers"}
GARMENT_KINDS: tuple[str, ...] = tuple(_KIND_TITLES)

_SUPERSAMPLE = 2
_SOLE_RGB = (236, 234, 228)


@dataclass(frozen=True)
class ItemSpec:
    """Everything needed to redraw one catalogue product."""
    item_id: str
    kind: str
    colour_name: str
    rgb: RGB
    pattern: str
    pattern_rgb: RGB
    title: str


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 12) -> Points:
    """Points on an elliptical arc (degrees, y down), for necklines, hems and handles."""
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
            for a in np.linspace(a0, a1, n)]


def _sym(half: Points) -> Points:
    """Close a left-half outline (top centre -> bottom centre) into a symmetric polygon."""
    return half + [(1 - x, y) for x, y in reversed(half)]


def _mirror(lines: list[Points]) -> list[Points]:
    """Add the right-hand copy of left-side seams."""
    return lines + [[(1 - x, y) for x, y in line] for line in lines]


def _garment(kind: str) -> dict:
    """Silhouette geometry in a unit box: body/inner/sole polygons, (polyline, width) straps, seam lines."""
    def neck(cy: float, rx: float, front: float, back: float) -> tuple[Points, Points, Points]:
        # Front scoop for the outline, the inside-back band seen through it, and a rib seam line.
        inner = _arc(0.5, cy, rx, front, 0, 180) + _arc(0.5, cy, rx, back, 180, 360)
        return _arc(0.5, cy, rx, front, 90, 180), inner, _arc(0.5, cy, rx + 0.015, front + 0.018, 0, 180)

    if kind == "t-shirt":
        scoop, inner, rib = neck(0.13, 0.11, 0.08, 0.025)
        half = scoop + [(0.27, 0.16), (0.09, 0.34), (0.19, 0.45), (0.29, 0.37), (0.29, 0.88), (0.5, 0.88)]
        seams = [[(0.28, 0.165), (0.29, 0.37)], [(0.115, 0.315), (0.21, 0.42)], [(0.29, 0.85), (0.5, 0.85)]]
        return dict(body=[_sym(half)], inner=[inner], lines=[rib] + _mirror(seams))
    if kind == "long-sleeve-top":
        scoop, inner, rib = neck(0.12, 0.10, 0.07, 0.022)
        half = scoop + [(0.29, 0.15), (0.10, 0.80), (0.19, 0.83), (0.31, 0.37), (0.31, 0.88), (0.5, 0.88)]
        seams = [[(0.30, 0.16), (0.31, 0.37)], [(0.112, 0.765), (0.20, 0.792)], [(0.31, 0.85), (0.5, 0.85)]]
        return dict(body=[_sym(half)], inner=[inner], lines=[rib] + _mirror(seams))
    if kind == "hoodie":
        hood = _arc(0.5, 0.17, 0.16, 0.15, 270, 180)  # from the crown down to the hood's side
        half = hood + [(0.26, 0.22), (0.08, 0.80), (0.19, 0.84), (0.31, 0.40), (0.30, 0.90), (0.5, 0.90)]
        opening = _arc(0.5, 0.17, 0.085, 0.09, 180, 360) + _arc(0.5, 0.17, 0.085, 0.13, 0, 180)
        pocket = [(0.33, 0.83), (0.36, 0.64), (0.64, 0.64), (0.67, 0.83)]
        seams = [[(0.27, 0.22), (0.31, 0.40)], [(0.095, 0.765), (0.20, 0.80)], [(0.30, 0.86), (0.5, 0.86)],
                 [(0.465, 0.29), (0.46, 0.45)]]  # the last is a drawstring
        return dict(body=[_sym(half)], inner=[opening], lines=[pocket] + _mirror(seams))
    if kind == "dress":
        scoop, inner, _ = neck(0.08, 0.09, 0.13, 0.02)
        half = scoop + [(0.41, 0.04), (0.36, 0.04), (0.35, 0.12), (0.33, 0.19), (0.31, 0.25), (0.36, 0.42),
                        (0.15, 0.90), (0.25, 0.925), (0.38, 0.94), (0.5, 0.945)]
        folds = [[(0.42, 0.46), (0.33, 0.90)], [(0.47, 0.47), (0.45, 0.93)]]
        waist = [(0.36, 0.42), (0.5, 0.44), (0.64, 0.42)]
        return dict(body=[_sym(half)], inner=[inner], lines=[waist] + _mirror(folds))
    if kind == "trousers":
        half = [(0.5, 0.06), (0.28, 0.06), (0.26, 0.30), (0.24, 0.94), (0.46, 0.94), (0.5, 0.38)]
        centre = [[(0.28, 0.11), (0.72, 0.11)], [(0.535, 0.11), (0.535, 0.28), (0.5, 0.32)]]  # waistband, fly
        seams = [[(0.30, 0.11), (0.37, 0.22)], [(0.36, 0.24), (0.35, 0.93)], [(0.33, 0.06), (0.33, 0.11)],
                 [(0.44, 0.06), (0.44, 0.11)], [(0.24, 0.91), (0.46, 0.91)]]
        return dict(body=[_sym(half)], lines=centre + _mirror(seams))
    if kind == "shorts":
        half = [(0.5, 0.22), (0.25, 0.22), (0.22, 0.42), (0.17, 0.74), (0.46, 0.78), (0.5, 0.55)]
        centre = [[(0.25, 0.27), (0.75, 0.27)], [(0.535, 0.27), (0.535, 0.44), (0.5, 0.48)]]
        seams = [[(0.27, 0.27), (0.35, 0.37)], [(0.175, 0.705), (0.465, 0.745)], [(0.32, 0.22), (0.32, 0.27)]]
        return dict(body=[_sym(half)], lines=centre + _mirror(seams))
    if kind == "skirt":
        half = [(0.5, 0.14), (0.33, 0.14), (0.32, 0.21), (0.17, 0.84), (0.26, 0.865), (0.38, 0.88), (0.5, 0.885)]
        pleats = [[(0.40, 0.20), (0.33, 0.87)], [(0.455, 0.20), (0.42, 0.88)]]
        return dict(body=[_sym(half)], lines=[[(0.322, 0.20), (0.678, 0.20)]] + _mirror(pleats))
    if kind == "tote-bag":
        half = [(0.5, 0.40), (0.20, 0.40), (0.15, 0.87), (0.16, 0.90), (0.19, 0.91), (0.5, 0.91)]
        return dict(body=[_sym(half)], straps=[(_arc(0.5, 0.42, 0.17, 0.29, 180, 360, 24), 0.035)],
                    lines=[[(0.195, 0.45), (0.805, 0.45)]] + _mirror([[(0.30, 0.40), (0.30, 0.50)]]))
    if kind == "sneaker":  # side view, toe to the right
        upper = [(0.10, 0.64), (0.10, 0.45), (0.12, 0.38), (0.16, 0.36), (0.24, 0.40), (0.31, 0.42), (0.37, 0.36),
                 (0.40, 0.28), (0.46, 0.27), (0.49, 0.33), (0.62, 0.42), (0.76, 0.48), (0.86, 0.52), (0.91, 0.57),
                 (0.92, 0.64)]
        sole = [(0.07, 0.62), (0.93, 0.61), (0.945, 0.65), (0.93, 0.70), (0.88, 0.72), (0.12, 0.72), (0.07, 0.70),
                (0.06, 0.66)]
        collar = [(0.15, 0.37), (0.24, 0.405), (0.31, 0.425), (0.36, 0.37), (0.29, 0.385), (0.21, 0.37)]
        laces = [[(0.45 + 0.19 * t, 0.31 + 0.12 * t), (0.49 + 0.19 * t, 0.37 + 0.12 * t)]
                 for t in np.linspace(0.05, 0.95, 5)]
        seams = [[(0.08, 0.67), (0.93, 0.665)], [(0.76, 0.62), (0.77, 0.55), (0.82, 0.50)],
                 [(0.10, 0.50), (0.18, 0.50), (0.22, 0.62)], [(0.44, 0.38), (0.66, 0.51)]]
        return dict(body=[upper], sole=[sole], inner=[collar], lines=laces + seams)
    raise ValueError(f"unknown garment kind {kind!r}")


def _contrasting(rng: random.Random, colour_name: str) -> str:
    # A print in a near-identical shade would read as "solid", so keep only clearly different colours.
    base = COLOURS[colour_name]
    return rng.choice([n for n, c in COLOURS.items() if sum((a - b) ** 2 for a, b in zip(c, base)) > 130 ** 2])


def _make_spec(item_id: str, kind: str, colour_name: str, pattern: str, rng: random.Random) -> ItemSpec:
    second = colour_name if pattern == "solid" else _contrasting(rng, colour_name)
    words = [colour_name.title()] + ([] if pattern == "solid" else ["&", second.title(), _PATTERN_WORDS[pattern]])
    return ItemSpec(item_id, kind, colour_name, COLOURS[colour_name], pattern, COLOURS[second],
                    " ".join(words + [_KIND_TITLES[kind]]))


def random_item(rng: random.Random, item_id: str) -> ItemSpec:
    """One random product; use generate_catalog for a catalogue of mutually distinct items."""
    return _make_spec(item_id, rng.choice(GARMENT_KINDS), rng.choice(tuple(COLOURS)), rng.choice(PATTERNS), rng)


def _print(spec: ItemSpec, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Fabric print over the whole canvas (H, W, 3) in garment units, so it scales and turns with the garment."""
    style = random.Random(f"{spec.item_id}|{spec.pattern}")  # per-item stripe width/phase, stable across views
    p, phase, duty = style.choice((0.055, 0.07, 0.09)), style.random(), style.choice((0.5, 0.38))
    if spec.pattern == "horizontal-stripes":
        sel = ((v / p + phase) % 1 < duty).astype(np.float32)
    elif spec.pattern == "vertical-stripes":
        sel = ((u / p + phase) % 1 < duty).astype(np.float32)
    elif spec.pattern == "diagonal-stripes":
        sel = (((u + v) / (p * math.sqrt(2)) + phase) % 1 < duty).astype(np.float32)
    elif spec.pattern == "polka-dots":
        q = p * 1.3
        row = np.floor(v / q)
        x = u / q + 0.5 * (row % 2)  # staggered rows, like a real dot print
        sel = (np.hypot(x - np.floor(x) - 0.5, v / q - row - 0.5) < style.uniform(0.2, 0.3)).astype(np.float32)
    elif spec.pattern == "gingham":
        # Overlapping translucent bands: one band gives the half tone, a crossing gives the full tone.
        sel = 0.5 * ((v / p + phase) % 1 < 0.5) + 0.5 * ((u / p + phase) % 1 < 0.5)
    elif spec.pattern == "colour-block":
        sel = (v > 0.52 if style.random() < 0.5 else u > 0.5).astype(np.float32)
    else:
        sel = np.zeros_like(u)
    base, alt = np.array(spec.rgb, np.float32), np.array(spec.pattern_rgb, np.float32)
    return base * (1 - sel[..., None]) + alt * sel[..., None]


def _layer(s: int, to_px, k: float, polys: Sequence[Points] = (), straps: Sequence = (), width: int = 0) -> np.ndarray:
    """Rasterise shapes (unit coords, `k` px per unit) to a 0..1 float coverage map."""
    im = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(im)
    for poly in polys:
        if width:
            draw.line(to_px(poly), fill=255, width=width, joint="curve")
        else:
            draw.polygon(to_px(poly), fill=255)
    for pts, w in straps:
        draw.line(to_px(pts), fill=255, width=max(1, round(w * k)), joint="curve")
    return np.asarray(im, dtype=np.float32) / 255


def _erode(a: np.ndarray, r: int) -> np.ndarray:
    """Grey-level erosion by a (2r+1)-square; cheaper than PIL's MinFilter at this size."""
    out = a.copy()
    for _ in range(r):
        out[1:, :] = np.minimum(out[1:, :], out[:-1, :])
        out[:-1, :] = np.minimum(out[:-1, :], out[1:, :])
        out[:, 1:] = np.minimum(out[:, 1:], out[:, :-1])
        out[:, :-1] = np.minimum(out[:, :-1], out[:, 1:])
    return out


def render_item(spec: ItemSpec, size: int = 256, view: int = 0, rng: random.Random | None = None) -> Image.Image:
    """RGB product photo of `spec`; view > 0 is another shop shot (scale/offset/tilt) of the same item.

    Deterministic for (spec, size, view); `rng` only overrides the pose jitter of views > 0.
    """
    s = size * _SUPERSAMPLE
    scale, dx, dy, angle = 0.86, 0.0, 0.0, 0.0
    if view > 0:
        pose = rng or random.Random(f"{spec.item_id}|{spec.kind}|view{view}")
        scale *= pose.uniform(0.84, 0.98)
        dx, dy, angle = pose.uniform(-0.04, 0.04), pose.uniform(-0.04, 0.04), pose.uniform(-8, 8)
    cx, cy, k = s * (0.5 + dx), s * (0.5 + dy), s * scale

    def to_px(pts: Points) -> list[tuple[float, float]]:
        return [(cx + (x - 0.5) * k, cy + (y - 0.5) * k) for x, y in pts]

    g = _garment(spec.kind)
    body, inner, sole = (_layer(s, to_px, k, g.get(key, [])) for key in ("body", "inner", "sole"))
    straps = _layer(s, to_px, k, straps=g.get("straps", []))
    seams = _layer(s, to_px, k, g.get("lines", []), width=max(1, round(s * 0.006)))
    cover = np.maximum.reduce([body, inner, sole, straps])

    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    u, v = (xx - cx) / k + 0.5, (yy - cy) / k + 0.5
    img = _print(spec, u, v) * (1 - 0.28 * inner[..., None])  # inside of the garment sits in shadow
    img = np.where(sole[..., None] > 0, np.array(_SOLE_RGB, np.float32), img)
    img = np.where(straps[..., None] > 0, np.array(spec.rgb, np.float32) * 0.62, img)

    # Studio lighting: soft falloff towards the edges plus a gentle top-left key light.
    mask = Image.fromarray((cover * 255).astype(np.uint8))
    soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(s * 0.03)), dtype=np.float32) / 255
    light = (0.86 + 0.14 * soft) * (1.05 - 0.05 * np.clip(u + v, 0, 2))
    img = img * light[..., None]
    # Seams read darker on light fabric but must be lighter on black, or they vanish.
    dark = np.dot(spec.rgb, (0.299, 0.587, 0.114)) < 60
    img = img + (255 - img) * 0.22 * seams[..., None] if dark else img * (1 - 0.3 * seams[..., None])
    edge = cover - _erode(cover, 2)
    img = img * (1 - 0.35 * edge[..., None])

    garment = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if angle:
        garment = garment.rotate(angle, Image.Resampling.BILINEAR, center=(cx, cy))
        mask = mask.rotate(angle, Image.Resampling.BILINEAR, center=(cx, cy))
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255

    # A faint top-to-bottom sweep, like a paper backdrop, with the garment's shadow cast down-right.
    bg = np.array((249, 248, 246), np.float32) - np.linspace(0, 9, s, dtype=np.float32)[:, None, None]
    shadow = ImageChops.offset(mask.filter(ImageFilter.GaussianBlur(s * 0.02)), round(s * 0.012), round(s * 0.02))
    bg = bg * (1 - 0.22 * np.asarray(shadow, dtype=np.float32)[..., None] / 255)
    out = Image.fromarray(np.clip(bg * (1 - m) + np.asarray(garment, dtype=np.float32) * m, 0, 255).astype(np.uint8))
    return out.resize((size, size), Image.Resampling.LANCZOS)


def generate_catalog(out_dir: str | Path, n_items: int = 60, photos_per_item: int = 1, size: int = 256,
                     seed: int = 0, fmt: str = "jpg") -> Path:
    """Write `images/<item_id>_<view>.<fmt>` and `catalog.csv` under out_dir; return the CSV path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    ext = fmt.lower().lstrip(".")
    pil_format = "JPEG" if ext in ("jpg", "jpeg") else ext.upper()
    rng = random.Random(seed)
    kinds, colours, patterns = (rng.sample(seq, len(seq)) for seq in (GARMENT_KINDS, tuple(COLOURS), PATTERNS))
    csv_path = out_dir / "catalog.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "item_id", "category", "title", "colour", "pattern"])
        for i in range(n_items):
            # 9 kinds x 13 colours x 7 patterns are pairwise coprime, so stepping all three together
            # visits 819 distinct combinations before any repeats, and neighbours always differ.
            spec = _make_spec(f"sku-{i + 1:04d}", kinds[i % len(kinds)], colours[i % len(colours)],
                              patterns[i % len(patterns)], rng)
            for view in range(photos_per_item):
                rel = f"images/{spec.item_id}_{view}.{ext}"
                img = render_item(spec, size=size, view=view)
                img.save(out_dir / rel, pil_format, **({"quality": 92} if pil_format == "JPEG" else {}))
                writer.writerow([rel, spec.item_id, spec.kind, spec.title, spec.colour_name, spec.pattern])
    return csv_path


def street_view(img: Image.Image, rng: random.Random) -> Image.Image:
    """A shopper's-photo version of `img`: cropped, tilted, re-lit, tinted, slightly blurred and noisy."""
    img = img.convert("RGB")
    w, h = img.size
    cw, ch = round(w * rng.uniform(0.75, 1.0)), round(h * rng.uniform(0.75, 1.0))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.crop((x0, y0, x0 + cw, y0 + ch))
    fill = tuple(rng.randint(150, 235) for _ in range(3))  # a table/wall tone rather than studio white
    out = out.rotate(rng.uniform(-15, 15), Image.Resampling.BICUBIC, fillcolor=fill)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.8, 1.2))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.85, 1.15))
    out = ImageEnhance.Color(out).enhance(rng.uniform(0.8, 1.25))
    out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * max(cw, ch) / 256))
    arr = np.asarray(out, dtype=float) * np.array([rng.uniform(0.93, 1.07) for _ in range(3)])  # white balance
    arr += np.random.default_rng(rng.getrandbits(32)).normal(0, 3, arr.shape)  # sensor noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
