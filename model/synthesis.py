"""Synthetic shopper ("consumer") photos made from catalogue photos, for cold-start training.

With only shop photos there is no street-side image for a training pair, so one is faked: the
product is cut out of its plain studio backdrop, placed on a new scene with phone-camera geometry,
partly covered, re-lit and run through a cheap camera model. Held-out street photos come from a
recipe we do not know, so every stage draws its kind and strength at random rather than aiming at
one look; only colour is kept on a short leash, because a red dress must still read as red.
"""
from __future__ import annotations

import colorsys
import io
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .preprocessing import ImageDecodeError, load_image

Range = tuple[float, float]
_BILINEAR, _BOX = Image.Resampling.BILINEAR, Image.Resampling.BOX
_MASK_WORK = 256   # mask estimation size: catalogue photos are ~224 px and more pixels add nothing
_LABEL_GRID = 48   # connected components are found at this size to keep the numpy loop short
_MESH = 8          # geometry goes through an 8x8 mesh: cloth folds can bend it, empty cells are skipped


@dataclass(frozen=True)
class ConsumerViewConfig:
    """Probabilities (p_*) and (low, high) ranges that strengths are drawn uniformly from."""

    p_cutout: float = 0.9                    # cut the product out and put it on a new scene
    p_photo_background: float = 0.6         # use one of `backgrounds` (when given), not a procedural scene
    background_blur: Range = (0.0, 3.0)     # depth of field of the scene, px at output size
    long_side: tuple[int, int] = (256, 512)
    # (width / height, weight): phone photos are mostly portrait 3:4, some square, 4:3 and 9:16.
    aspects: tuple[tuple[float, float], ...] = ((3 / 4, 0.55), (1.0, 0.2), (4 / 3, 0.15), (9 / 16, 0.1))
    # Share of the frame's width or height the product spans, drawn triangular with its mode at
    # 0.8 * high: shoppers fill the frame.
    garment_fraction: Range = (0.35, 0.95)
    stretch: Range = (0.85, 1.18)           # width/height re-stretch: the source photos were squashed
    max_rotation: float = 20.0              # degrees, drawn triangular around 0 (most photos are upright)
    p_perspective: float = 0.6
    max_perspective: float = 0.12           # corner jitter as a share of the product's size
    cloth_warp: Range = (0.0, 0.02)         # mesh-node jitter as a share of the product size: worn folds
    p_flip: float = 0.5
    p_shadow: float = 0.5                   # soft cast shadow of the cut-out on the scene
    p_occlusion: float = 0.35
    max_occluded_fraction: float = 0.25     # of the visible product area, never exceeded
    p_relight: float = 0.9
    brightness: Range = (0.65, 1.3)
    contrast: Range = (0.75, 1.25)
    gamma: Range = (0.75, 1.35)
    max_temperature: float = 0.12           # relative red/blue gain change (white balance)
    p_light_gradient: float = 0.6           # directional light, vignette, cast shadows, fabric folds
    saturation: Range = (0.7, 1.25)
    p_hue_shift: float = 0.3
    max_hue_shift: float = 6.0              # degrees; kept small because colour identifies fashion items
    p_blur: float = 0.45
    max_blur: float = 1.2                   # blur radius at a 384 px long side
    noise_sigma: Range = (0.0, 6.0)         # sensor noise, 8-bit units; chroma noise is 0.6 of it
    p_rescale: float = 0.3                  # downscale-upscale, as messaging apps do
    rescale: Range = (0.4, 0.8)
    p_jpeg: float = 0.9
    jpeg_quality: tuple[int, int] = (30, 90)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if (f.name.startswith("p_") and not 0 <= v <= 1) or (
                    f.name != "aspects" and isinstance(v, tuple) and (len(v) != 2 or v[0] > v[1])):
                raise ValueError(f"{f.name}: expected a probability or a (low, high) pair, got {v}")
        if self.garment_fraction[0] <= 0 or not 0 <= self.max_occluded_fraction <= 1:
            raise ValueError("garment_fraction must be positive and max_occluded_fraction within 0..1")


def cutout_mask(shop: Image.Image) -> Image.Image:
    """'L' mask of the product (255 = product, feathered edge) estimated from a plain backdrop.

    When the photo has no plain backdrop, or the estimate covers under 3% or over 97% of it, the
    result is a full 255 mask, meaning "no cut-out: use the whole photo".
    """
    mask = _product_mask(shop.convert("RGB"))
    return mask if mask is not None else Image.new("L", shop.size, 255)


def _channel_max(x: np.ndarray) -> np.ndarray:
    # numpy's .max(-1) over a 3-wide last axis is ~20x slower than two elementwise maxima
    return np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])


def _to_l(x: np.ndarray) -> Image.Image:
    return Image.fromarray(x.astype(np.uint8) * 255)


def _morph(m: np.ndarray, r: int, grow: bool) -> np.ndarray:
    """Binary dilation (grow) or erosion by a (2r+1)-square, far cheaper than PIL's rank filters: separable
    shifts by 1, 2, 4... pixels, each widening the window to 2 * (reach so far) + 1."""
    op, out, reach = (np.logical_or if grow else np.logical_and), m.copy(), 0
    while reach < r:
        step = min(reach + 1, r - reach)
        for axis in (0, 1):
            src = out.copy()
            v, sv = (out, src) if axis == 0 else (out.T, src.T)  # transposed views shift along the other axis
            op(v[step:], sv[:-step], out=v[step:])
            op(v[:-step], sv[step:], out=v[:-step])
        reach += step
    return out


def _components(fg: np.ndarray) -> np.ndarray:
    """4-connected labels (background gets fg.size): min-label propagation with pointer jumping."""
    n = fg.size
    lab = np.where(fg, np.arange(n).reshape(fg.shape), n)
    while True:
        new = lab.copy()
        np.minimum(new[1:], lab[:-1], out=new[1:])
        np.minimum(new[:-1], lab[1:], out=new[:-1])
        np.minimum(new[:, 1:], lab[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], lab[:, 1:], out=new[:, :-1])
        new[~fg] = n
        flat = np.append(new.ravel(), n)
        new = flat[flat[new]]  # a label is a pixel index of the same component: jump to its label
        if np.array_equal(new, lab):
            return lab
        lab = new


def _product_mask(shop: Image.Image) -> Image.Image | None:
    w, h = shop.size
    if min(w, h) < 8:
        return None
    scale = min(1.0, _MASK_WORK / max(w, h))
    work = shop if scale == 1 else shop.resize((max(8, round(w * scale)), max(8, round(h * scale))), _BILINEAR)
    a = np.asarray(work, dtype=np.float32)
    hh, ww = a.shape[:2]
    b = max(1, min(hh, ww) // 40)
    border = np.zeros((hh, ww), bool)
    border[:b] = border[-b:] = border[:, :b] = border[:, -b:] = True
    plane = np.stack([np.ones(hh * ww), np.tile(np.arange(ww) / ww, hh), np.repeat(np.arange(hh) / hh, ww)], 1)
    plane = plane.astype(np.float32)  # (pixels, 3): the backdrop model is plane @ coef
    design, pix = plane[border.ravel()], a[border]
    keep = np.ones(len(pix), bool)
    # A plane per channel models studio backdrops that fade; the refit ignores border pixels that
    # belong to the product (feet, hems and straps often touch the frame).
    for tol in (25.0, 12.0):
        d = design[keep]
        coef = np.linalg.solve(d.T @ d + 1e-6 * np.eye(3), d.T @ pix[keep]).astype(np.float32)
        resid = _channel_max(np.abs(design @ coef - pix))
        keep = resid < tol
        if keep.sum() < 4:
            return None
    if keep.mean() < 0.6:
        return None  # a scene, not a backdrop
    bg = (plane @ coef).reshape(hh, ww, 3)
    noise = float(np.median(resid[keep]))
    fg = _channel_max(np.abs(a - bg)) > np.clip(10 + 4 * noise, 14, 40)
    # White-on-white fabric differs from the backdrop only by faint shading: accept faintly darker
    # pixels well inside the closed silhouette of the clear ones. Smoothing cancels JPEG ringing
    # inside; staying 3 px from the outline keeps out the clipped (only darker) ringing around it.
    d = bg - a
    darker = Image.fromarray((d[..., 0] + d[..., 1] + d[..., 2]) / 3).resize((max(2, ww // 4), max(2, hh // 4)), _BOX)
    fg |= _morph(_morph(fg, 4, True), 7, False) & (np.asarray(darker.resize((ww, hh), _BILINEAR)) > max(4, 3 * noise))
    fg = _morph(_morph(fg, 1, False), 1, True)  # open: drop JPEG specks
    g = min(1.0, _LABEL_GRID / max(hh, ww))
    small = np.asarray(_to_l(fg).resize((max(2, round(ww * g)), max(2, round(hh * g))), _BOX)) > 0
    # Parts a few pixels apart (stripes split by white bands, a pair of shoes) count as one object.
    lab = np.where(small, _components(_morph(small, 1, True)), small.size)
    sizes = np.bincount(lab.ravel(), minlength=small.size + 1)[:small.size]
    if sizes.max() == 0:
        return None
    kept = np.append(sizes >= 0.05 * sizes.max(), False)[lab]
    # Fill small enclosed holes (logos, highlights); a big one is a real gap, like a bag handle's loop.
    bl = _components(~kept)
    hole = ~kept & ~np.isin(bl, np.concatenate([bl[0], bl[-1], bl[:, 0], bl[:, -1]]))
    hole &= np.bincount(bl[hole], minlength=small.size + 1)[bl] < 0.1 * kept.sum()
    up = [np.asarray(_to_l(x).resize((ww, hh), Image.Resampling.NEAREST)) > 0 for x in (_morph(kept, 1, True), hole)]
    fg = _morph(_morph(fg & up[0] | up[1], 2, True), 2, False)  # close: rejoin parts split by highlights
    if not 0.03 <= fg.mean() <= 0.97:
        return None
    # Erode past the backdrop-tinted JPEG fringe before feathering, or a white halo shows on dark scenes.
    m = _to_l(_morph(fg, 1, False)).filter(ImageFilter.GaussianBlur(0.8))
    return m if scale == 1 else m.resize((w, h), _BILINEAR)


def _homography(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """3x3 matrix taking the four output points `dst` to the source points `src`."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    return np.append(np.linalg.solve(np.array(rows), np.array(rhs)), 1.0).reshape(3, 3)


def _colour(r: random.Random, max_sat: float = 0.7) -> tuple[int, int, int]:
    # Scenes are mostly muted (walls, pavement, wood); a few saturated ones keep the model honest.
    rgb = colorsys.hsv_to_rgb(r.random(), r.random() ** 1.8 * max_sat, r.uniform(0.18, 0.95))
    return tuple(round(v * 255) for v in rgb)


def _skin(r: random.Random) -> tuple[int, int, int]:
    t = r.random()
    return tuple(round(lo + (hi - lo) * t + r.uniform(-8, 8)) for lo, hi in zip((242, 204, 176), (88, 56, 40)))


def _value_noise(h: int, w: int, nrng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth random field scaled to 0..1: three octaves of bicubically enlarged random grids."""
    out = np.zeros((h, w), np.float32)
    for octave in range(3):
        k = cells * 2 ** octave / max(h, w)
        grid = nrng.random((max(2, round(k * h)), max(2, round(k * w))), dtype=np.float32)
        out += np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC)) / 2 ** octave
    return (out - out.min()) / (np.ptp(out) + 1e-6)


def _procedural_background(w: int, h: int, r: random.Random, nrng: np.random.Generator) -> Image.Image:
    """A scene at (w, h): gradient, texture, bricks/tiles/planks, blurred street blobs or a room."""
    c0, c1 = np.array(_colour(r), np.float32), np.array(_colour(r), np.float32)
    kind = r.choice(("gradient", "texture", "bricks", "tiles", "planks", "blobs", "room"))
    if kind == "gradient":
        a = r.uniform(0, 2 * math.pi)
        t = math.cos(a) * np.arange(w)[None, :] + math.sin(a) * np.arange(h)[:, None]
        img = c0 + (c1 - c0) * ((t - t.min()) / (np.ptp(t) + 1e-6))[..., None]
    elif kind == "texture":  # concrete, carpet, grass, knit
        img = c0 + (c1 - c0) * r.uniform(0.3, 1) * _value_noise(h, w, nrng, r.choice((4, 12, 32, 64)))[..., None]
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
                draw.rectangle((x, y, x + r.uniform(0.05, 0.4) * w, y + r.uniform(0.05, 0.6) * h), fill=_colour(r))
        else:  # out-of-focus street or shop interior: many overlapping things, mostly upright
            for _ in range(r.randint(15, 60)):
                x, y, s = r.uniform(-0.1, 1.0) * w, r.uniform(-0.1, 1.0) * h, r.uniform(0.02, 0.3) * max(w, h)
                shape = draw.ellipse if r.random() < 0.3 else draw.rectangle
                shape((x, y, x + s * r.uniform(0.2, 1.2), y + s), fill=_colour(r, 0.9))
        img = np.asarray(im.filter(ImageFilter.GaussianBlur(r.uniform(1, 4) if kind == "room" else r.uniform(3, 9))),
                         np.float32)
    img = img * (1 + r.uniform(0, 0.3) * (_value_noise(h, w, nrng, 3) - 0.5))[..., None]  # uneven light
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if r.random() < 0.4:  # wall or floor seen at an angle
        j = [r.uniform(0, 0.3) for _ in range(4)]
        quad = (j[0] * w, 0, 0, h, w, h - j[2] * h, w - j[3] * w, j[1] * h)
        out = out.transform((w, h), Image.Transform.QUAD, quad, _BILINEAR)
    return out


class ConsumerViewSynthesizer:
    """Turns a shop photo into a random street-style photo of the same product."""

    def __init__(self, config: ConsumerViewConfig = ConsumerViewConfig(),
                 backgrounds: Sequence[Path] | None = None) -> None:
        self.config = config
        self.backgrounds = tuple(Path(p) for p in backgrounds or ())

    def __call__(self, shop: Image.Image, rng: random.Random) -> Image.Image:
        """RGB in, RGB out; the result depends only on the photo and the state of `rng`."""
        c = self.config
        shop = shop.convert("RGB")
        # One stream per stage, so switching a stage off in an ablation leaves the others' draws alone.
        r_frame, r_bg, r_geo, r_occ, r_light, r_cam = (random.Random(rng.getrandbits(64)) for _ in range(6))
        ratio = r_frame.choices([a for a, _ in c.aspects], [wt for _, wt in c.aspects])[0]
        side = r_frame.randint(*c.long_side)
        W, H = (side, max(1, round(side / ratio))) if ratio >= 1 else (max(1, round(side * ratio)), side)
        mask = _product_mask(shop) if r_frame.random() < c.p_cutout else None

        layer = self._place(shop, mask, W, H, r_geo)
        alpha_img = layer.getchannel("a")  # RGBa names its alpha band "a"
        la = np.asarray(layer, dtype=np.float32)  # premultiplied RGB + alpha
        alpha = la[..., 3:] / 255
        bg = np.asarray(self._background(W, H, r_bg), dtype=np.float32)
        if mask is not None and r_geo.random() < c.p_shadow:
            bg = bg * self._shadow(alpha_img, r_geo)[..., None]
        comp = bg * (1 - alpha) + la[..., :3]
        occluders = self._occluders(alpha[..., 0], r_occ)
        if occluders is not None:
            colour, cover = occluders
            comp = comp * (1 - cover) + colour * cover
        return self._camera(comp, alpha_img, r_light, r_cam)

    def _background(self, W: int, H: int, r: random.Random) -> Image.Image:
        c = self.config
        nrng = np.random.default_rng(r.getrandbits(64))
        blur = r.uniform(*c.background_blur)
        if self.backgrounds and r.random() < c.p_photo_background:
            try:
                photo = load_image(r.choice(self.backgrounds), target_size=max(W, H))
                cw = min(photo.width, photo.height * W / H) * r.uniform(0.5, 1.0)
                x0, y0 = r.uniform(0, photo.width - cw), r.uniform(0, photo.height - cw * H / W)
                box = (x0, y0, x0 + cw, y0 + cw * H / W)
                return photo.resize((W, H), _BILINEAR, box=box).filter(ImageFilter.BoxBlur(blur))
            except (ImageDecodeError, OSError):
                pass  # a bad file must not kill a DataLoader worker: use a procedural scene
        # Scenes are drawn at half size: they are soft anyway and it quarters the cost.
        scene = _procedural_background(max(16, W // 2), max(16, H // 2), r, nrng)
        return scene.filter(ImageFilter.BoxBlur(blur / 2)).resize((W, H), _BILINEAR)

    def _place(self, shop: Image.Image, mask: Image.Image | None, W: int, H: int, r: random.Random) -> Image.Image:
        """The product (or the whole photo) as a premultiplied RGBa layer of the output frame."""
        c = self.config
        w, h = shop.size
        cut = mask is not None
        alpha = mask if cut else Image.new("L", (w, h), 255)
        x0, y0, x1, y1 = (alpha.point([0] * 128 + [255] * 128).getbbox() if cut else None) or (0, 0, w, h)
        stretch = math.sqrt(r.uniform(*c.stretch))
        gw, gh = (x1 - x0) * stretch, (y1 - y0) / stretch
        theta = math.radians(r.triangular(-c.max_rotation, c.max_rotation, 0) * (1.0 if cut else 0.3))
        cs, sn = abs(math.cos(theta)), abs(math.sin(theta))
        if cut:
            lo, hi = c.garment_fraction
            s = r.triangular(lo, hi, max(lo, 0.8 * hi)) * min(W / (gw * cs + gh * sn), H / (gw * sn + gh * cs))
            # Up to a tenth of the product may leave the frame, as in a hurried photo.
            slack_x = max(0.0, W - s * (gw * cs + gh * sn)) / 2 + 0.1 * s * gw
            slack_y = max(0.0, H - s * (gw * sn + gh * cs)) / 2 + 0.1 * s * gh
        else:  # no backdrop to remove: zoom into the photo so that it still fills the frame
            zoom = r.uniform(1.0, 1.3)
            s = zoom * max((W * cs + H * sn) / gw, (W * sn + H * cs) / gh)
            slack_x = slack_y = (zoom - 1) / (2 * zoom) * min(W, H)
        cx, cy = W / 2 + r.triangular(-1, 1, 0) * slack_x, H / 2 + r.triangular(-1, 1, 0) * slack_y  # people aim
        rel = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * [s * gw / 2, s * gh / 2]
        if r.random() < c.p_flip:
            rel[:, 0] *= -1
        flat = rel @ np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]]) + [cx, cy]
        # A product the shop photo cuts off (a model cropped at the thighs) must run off the frame on
        # that side too, or it floats as half a person: slide it outwards until that edge leaves.
        for (i, k), touches in zip(((0, 1), (1, 2), (2, 3), (3, 0)), (y0 <= 1, x1 >= w - 1, y1 >= h - 1, x0 <= 1)):
            mid = (flat[i] + flat[k]) / 2
            d = mid - flat.mean(0)
            if cut and touches and np.abs(d).max() > 1e-6:
                exits = [((lim if dv > 0 else 0) - mv) / dv for mv, dv, lim in zip(mid, d, (W, H)) if abs(dv) > 1e-6]
                flat = flat + d * (max(0.0, min(exits)) + 0.02)
        tilted = flat
        if r.random() < c.p_perspective:
            j = r.uniform(0, c.max_perspective) * (1.0 if cut else 0.4)
            tilted = flat + np.array([[r.uniform(-j, j) * s * gw, r.uniform(-j, j) * s * gh] for _ in range(4)])
        gx, gy = np.linspace(0, W, _MESH + 1).round(), np.linspace(0, H, _MESH + 1).round()
        X, Y = np.meshgrid(gx, gy)
        for dst in (tilted, flat):
            P = _homography(dst, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)) @ np.stack(
                [X.ravel(), Y.ravel(), np.ones(X.size)])
            # In a frame much larger than the product the tilt's vanishing line can fall inside it,
            # and beyond that line the product reappears mirrored: such a draw loses its tilt.
            if P[2].min() > 0.4 * P[2].max():
                break
        U, V = (P[0] / P[2]).reshape(X.shape), (P[1] / P[2]).reshape(X.shape)
        if cut:
            nrng, amp = np.random.default_rng(r.getrandbits(64)), r.uniform(*c.cloth_warp) * max(x1 - x0, y1 - y0)
            U, V = U + nrng.normal(0, amp, U.shape), V + nrng.normal(0, amp, V.shape)
        # PIL's transform costs ~40 ns per output pixel: skip cells that only see empty source.
        cu, cv = (np.stack([q[:-1, :-1], q[1:, :-1], q[:-1, 1:], q[1:, 1:]]) for q in (U, V))
        live = (cu.max(0) >= x0 - 2) & (cu.min(0) <= x1 + 2) & (cv.max(0) >= y0 - 2) & (cv.min(0) <= y1 + 2)
        mesh = [((int(gx[i]), int(gy[j]), int(gx[i + 1]), int(gy[j + 1])),
                 (U[j, i], V[j, i], U[j + 1, i], V[j + 1, i], U[j + 1, i + 1], V[j + 1, i + 1], U[j, i + 1],
                  V[j, i + 1])) for j, i in zip(*np.nonzero(live))]
        if not mesh:
            return Image.new("RGBa", (W, H))
        src = Image.merge("RGBA", (*shop.split(), alpha)).convert("RGBa")  # premultiplied: no backdrop fringe
        return src.transform((W, H), Image.Transform.MESH, mesh, _BILINEAR)

    def _shadow(self, alpha: Image.Image, r: random.Random) -> np.ndarray:
        """Multiplier (H, W) for the scene: the product's blurred, offset silhouette."""
        W, H = alpha.size
        lw, lh = max(1, W // 4), max(1, H // 4)
        moved = Image.new("L", (lw, lh), 0)
        moved.paste(alpha.resize((lw, lh), _BILINEAR).filter(ImageFilter.GaussianBlur(r.uniform(0.5, 4))),
                    (round(r.uniform(-0.04, 0.04) * lw), round(r.uniform(0.0, 0.05) * lh)))
        return 1 - r.uniform(0.2, 0.55) * np.asarray(moved.resize((W, H), _BILINEAR), np.float32) / 255

    def _occluders(self, alpha: np.ndarray, r: random.Random) -> tuple[np.ndarray, np.ndarray] | None:
        """(colour, coverage) of things in front of the product, or None; never over the configured share."""
        c = self.config
        garment = alpha > 0
        area = np.count_nonzero(garment)
        if r.random() >= c.p_occlusion or area < 64:
            return None
        H, W = alpha.shape
        ys, xs = np.flatnonzero(garment.any(1)), np.flatnonzero(garment.any(0))
        size, on_product = max(xs[-1] - xs[0], ys[-1] - ys[0]), np.flatnonzero(garment)
        cover, colour = np.zeros((H, W), bool), Image.new("RGB", (W, H))
        for _ in range(r.choice((1, 1, 2))):
            for attempt in range(4):  # too much covered: try again smaller
                shape = Image.new("L", (W, H), 0)
                py, px = divmod(int(on_product[r.randrange(len(on_product))]), W)  # it reaches onto the product
                fill = self._draw_occluder(ImageDraw.Draw(shape), r, px, py, size * 0.7 ** attempt, W, H)
                s = np.asarray(shape) > 0
                if np.count_nonzero((cover | s) & garment) <= c.max_occluded_fraction * area:
                    cover |= s
                    colour.paste(fill, (0, 0, W, H), shape)
                    break
        if not cover.any():
            return None
        return np.asarray(colour, np.float32), cover[..., None].astype(np.float32)

    @staticmethod
    def _draw_occluder(draw: ImageDraw.ImageDraw, r: random.Random, px: int, py: int, size: float,
                       W: int, H: int) -> tuple[int, int, int]:
        kind = r.choice(("rect", "ellipse", "arm", "strap"))
        if kind == "arm":  # enters from the nearest frame edge, tapers to the wrist, ends in a hand
            ex, ey = min(((0, py), (W, py), (px, 0), (px, H)), key=lambda p: math.dist(p, (px, py)))
            wd, length = size * r.uniform(0.035, 0.07), max(1e-6, math.dist((ex, ey), (px, py)))
            nx, ny = (py - ey) / length * wd, (ex - px) / length * wd  # half-width normal
            draw.polygon([(ex + 1.3 * nx, ey + 1.3 * ny), (px + 0.8 * nx, py + 0.8 * ny),
                          (px - 0.8 * nx, py - 0.8 * ny), (ex - 1.3 * nx, ey - 1.3 * ny)], fill=255)
            draw.ellipse((px - wd * 1.2, py - wd * 1.2, px + wd * 1.2, py + wd * 1.2), fill=255)
            return _skin(r) if r.random() < 0.75 else _colour(r)  # bare arm or sleeve
        if kind == "strap":  # bag strap or belt crossing the whole product
            dx, dy = math.cos(a := r.uniform(0, math.pi)) * size * 1.5, math.sin(a) * size * 1.5
            draw.line([(px - dx, py - dy), (px + dx, py + dy)], fill=255,
                      width=max(2, round(size * r.uniform(0.015, 0.04))))
            return r.choice(((25, 22, 20), (92, 58, 35), (160, 118, 80))) if r.random() < 0.7 else _colour(r, 1.0)
        hw, hh = size * r.uniform(0.06, 0.2), size * r.uniform(0.06, 0.2)
        if kind == "rect":  # phone, shopping bag, card
            draw.rounded_rectangle((px - hw, py - hh, px + hw, py + hh), radius=min(hw, hh) * r.uniform(0, 0.5),
                                   fill=255)
        else:  # hand, head, hair, a ball
            draw.ellipse((px - hw, py - hh, px + hw, py + hh), fill=255)
        return _skin(r) if r.random() < 0.25 else _colour(r)

    def _light_map(self, alpha: Image.Image, r: random.Random) -> np.ndarray:
        """Low-frequency lighting (H, W): direction, vignette, cast shadow, folds on the product."""
        W, H = alpha.size
        lw, lh = max(4, W // 8), max(4, H // 8)
        x, y = np.linspace(-1, 1, lw, dtype=np.float32)[None, :], np.linspace(-1, 1, lh, dtype=np.float32)[:, None]
        a = r.uniform(0, 2 * math.pi)
        light = 1 + r.uniform(0.05, 0.3) * (math.cos(a) * x + math.sin(a) * y)
        if r.random() < 0.4:
            light = light * (1 - r.uniform(0.1, 0.45) * (x * x + y * y) / 2)
        if r.random() < 0.25:  # shadow of a building, tree or the photographer
            sh = Image.new("L", (lw, lh), 0)
            corners = [(r.uniform(-0.2, 1.2) * lw, r.uniform(-0.2, 1.2) * lh) for _ in range(r.randint(3, 6))]
            ImageDraw.Draw(sh).polygon(corners, fill=255)
            sh = np.asarray(sh.filter(ImageFilter.GaussianBlur(r.uniform(0.5, 2))), np.float32) / 255
            light = light * (1 - r.uniform(0.2, 0.5) * sh)
        if r.random() < 0.6:  # worn fabric folds and drapes: shading only on the product
            folds = _value_noise(lh, lw, np.random.default_rng(r.getrandbits(64)), r.choice((3, 5, 8))) - 0.5
            on_product = np.asarray(alpha.resize((lw, lh), _BILINEAR), np.float32) / 255
            light = light * (1 + r.uniform(0.1, 0.4) * folds * on_product)
        # Stacked effects must not black the product out: the strongest darkening is kept readable.
        return np.asarray(Image.fromarray(np.clip(light, 0.45, 1.6).astype(np.float32)).resize((W, H), _BILINEAR))

    def _camera(self, arr: np.ndarray, alpha: Image.Image, r_light: random.Random, r: random.Random) -> Image.Image:
        """Optics, relighting, sensor and compression on the float (H, W, 3) scene."""
        c = self.config
        H, W = arr.shape[:2]
        if r.random() < c.p_blur:  # blur is linear, so doing it before relighting changes nothing
            radius = r.uniform(0.3, c.max_blur) * max(W, H) / 384
            if r.random() < 0.3:  # hand shake: smear along one axis (cheap stand-in for a line kernel)
                radius = (radius * 2, radius * 0.3) if r.random() < 0.5 else (radius * 0.3, radius * 2)
            # A box blur costs a third of PIL's three-pass gaussian and looks the same at these radii.
            img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(radius))
            arr = np.asarray(img, dtype=np.float32)
        lut = None
        if r_light.random() < c.p_relight:
            t, tint = r_light.uniform(-c.max_temperature, c.max_temperature), r_light.uniform(-0.03, 0.03)
            sat, luma = r_light.uniform(*c.saturation), np.array([0.299, 0.587, 0.114])
            m = sat * np.eye(3) + (1 - sat) * np.outer(np.ones(3), luma)
            if r_light.random() < c.p_hue_shift:  # rotate chroma about the grey axis in YIQ
                phi = math.radians(r_light.uniform(-c.max_hue_shift, c.max_hue_shift))
                yiq = np.array([luma, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
                rot = np.array([[1, 0, 0], [0, math.cos(phi), -math.sin(phi)], [0, math.sin(phi), math.cos(phi)]])
                m = np.linalg.inv(yiq) @ rot @ yiq @ m
            m = r_light.uniform(*c.brightness) * np.diag([1 + t, 1 + tint, 1 - t]) @ m
            arr = (arr.reshape(-1, 3) @ m.T.astype(np.float32)).reshape(H, W, 3)
            if r_light.random() < c.p_light_gradient:
                arr *= self._light_map(alpha, r_light)[..., None]
            g, k = r_light.uniform(*c.gamma), r_light.uniform(*c.contrast)
            lut = [round(min(255.0, max(0.0, 255 * (0.5 + ((v / 255) ** g - 0.5) * k)))) for v in range(256)] * 3
        sigma = r.uniform(*c.noise_sigma)
        if sigma > 0.3:
            # Sum of two uniform bytes: near-gaussian and ~10x cheaper than standard_normal at this size.
            nrng = np.random.default_rng(r.getrandbits(64))
            two = np.frombuffer(nrng.bytes(2 * arr.size), np.int8).reshape(2, *arr.shape)
            arr = arr + two[0] * np.float32(sigma / 104.5)
            arr += two[1] * np.float32(sigma / 104.5)
            if r.random() < 0.5:  # blotchy colour noise left over by the phone's denoiser
                chroma = nrng.standard_normal((H // 4 + 1, W // 4 + 1, 3), dtype=np.float32) * (0.6 * sigma)
                arr += np.repeat(np.repeat(chroma, 4, 0), 4, 1)[:H, :W]
        arr = arr + np.float32(0.5)
        img = Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8))
        if lut is not None:
            img = img.point(lut)
        if r.random() < c.p_rescale:
            f = r.uniform(*c.rescale)
            img = img.resize((max(1, round(W * f)), max(1, round(H * f))), _BILINEAR).resize((W, H), _BILINEAR)
        if r.random() < c.p_jpeg:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=r.randint(*c.jpeg_quality))
            img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        return img
