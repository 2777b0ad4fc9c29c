"""Synthetic shopper ("consumer") photos made from catalogue photos, for cold-start training.

With only shop photos there is no street-side image for a training pair, so one is faked: the
product is cut out of its plain studio backdrop, placed on a new scene with phone-camera geometry,
partly covered, re-lit and run through a cheap camera model. Held-out street photos come from a
recipe we do not know, so every stage draws its kind and strength at random rather than aiming at
one look; only colour is kept on a short leash, because a red dress must still read as red.
"""
from __future__ import annotations

import hashlib
import io
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .company import add_company
from .cutout import cutout_mask, product_mask
from .low_light import low_light
from ..preprocessing import ImageDecodeError, load_image
from .scenes import procedural_background, random_colour, skin_tone, value_noise

Range = tuple[float, float]
_BILINEAR = Image.Resampling.BILINEAR
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
    # Other catalogue products in the scene behind the product (the synthesizer's `companions`).
    p_company: float = 0.0
    company_count: tuple[int, int] = (1, 3)
    company_height: Range = (0.3, 0.8)     # of the frame's height
    company_blur: Range = (0.0, 2.5)       # defocus, px at output size
    # A dim scene (low_light.py): a long exposure's hand motion, light-dependent noise, the phone's gain.
    p_low_light: float = 0.0
    low_light_exposure: Range = (0.12, 0.45)  # of a well-lit frame's exposure
    low_light_motion: Range = (0.0, 12.0)    # length of the hand's smear, px at a 384 px long side

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if (f.name.startswith("p_") and not 0 <= v <= 1) or (
                    f.name != "aspects" and isinstance(v, tuple) and (len(v) != 2 or v[0] > v[1])):
                raise ValueError(f"{f.name}: expected a probability or a (low, high) pair, got {v}")
        if self.garment_fraction[0] <= 0 or not 0 <= self.max_occluded_fraction <= 1:
            raise ValueError("garment_fraction must be positive and max_occluded_fraction within 0..1")
        if self.company_count[0] < 0 or self.company_height[0] <= 0 or self.company_blur[0] < 0:
            raise ValueError("company_count, company_blur must be non-negative and company_height positive")
        if not 0 < self.low_light_exposure[0] <= self.low_light_exposure[1] <= 1 or self.low_light_motion[0] < 0:
            raise ValueError("low_light_exposure must lie within (0, 1] and low_light_motion be non-negative")


_COMPANY_FIELDS = ("p_company", "company_count", "company_height", "company_blur")
_LOW_LIGHT_FIELDS = ("p_low_light", "low_light_exposure", "low_light_motion")


def _listing_hash(paths: Sequence[Path]) -> str:
    return hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()


def _homography(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """3x3 matrix taking the four output points `dst` to the source points `src`."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    return np.append(np.linalg.solve(np.array(rows), np.array(rhs)), 1.0).reshape(3, 3)


class ConsumerViewSynthesizer:
    """Turns a shop photo into a random street-style photo of the same product."""

    def __init__(self, config: ConsumerViewConfig = ConsumerViewConfig(),
                 backgrounds: Sequence[Path] | None = None, companions: Sequence[Path] | None = None) -> None:
        self.config = config
        self.backgrounds = tuple(Path(p) for p in backgrounds or ())
        # Photos of other products for the company (config.p_company); without them there is none.
        self.companions = tuple(Path(p) for p in companions or ()) if config.p_company > 0 else ()

    def describe(self) -> dict:
        """What decides the views it renders, for a cache's fingerprint. The company's settings are
        left out when no view can have company, and those of low light when none can be dim, so that
        caches made before them stay valid."""
        described = asdict(self.config)
        company = {name: described.pop(name) for name in _COMPANY_FIELDS}
        if self.companions:
            described |= company | {"companions": _listing_hash(self.companions)}
        dark = {name: described.pop(name) for name in _LOW_LIGHT_FIELDS}
        if self.config.p_low_light > 0:
            described |= dark
        if self.backgrounds and self.config.p_photo_background > 0:
            described["backgrounds"] = _listing_hash(self.backgrounds)
        return described

    def __call__(self, shop: Image.Image, rng: random.Random) -> Image.Image:
        """RGB in, RGB out; the result depends only on the photo and the state of `rng`."""
        return self.compose(shop, rng)[0]

    def compose(self, shop: Image.Image, rng: random.Random) -> tuple[Image.Image, Image.Image]:
        """The street view and its 'L' product mask: where the product shows, occluders excluded.

        Without a cut-out the whole placed shop photo counts as the product (its backdrop is part
        of what a catalogue photo of it shows)."""
        c = self.config
        shop = shop.convert("RGB")
        # One stream per stage, so switching a stage off in an ablation leaves the others' draws alone.
        r_frame, r_bg, r_geo, r_occ, r_light, r_cam = (random.Random(rng.getrandbits(64)) for _ in range(6))
        # Drawn last and only with company, so that views without it stay what they were before it.
        r_company = random.Random(rng.getrandbits(64)) if self.companions else None
        r_dark = random.Random(rng.getrandbits(64)) if c.p_low_light > 0 else None  # likewise
        ratio = r_frame.choices([a for a, _ in c.aspects], [wt for _, wt in c.aspects])[0]
        side = r_frame.randint(*c.long_side)
        W, H = (side, max(1, round(side / ratio))) if ratio >= 1 else (max(1, round(side * ratio)), side)
        mask = product_mask(shop) if r_frame.random() < c.p_cutout else None

        layer = self._place(shop, mask, W, H, r_geo)
        alpha_img = layer.getchannel("a")  # RGBa names its alpha band "a"
        la = np.asarray(layer, dtype=np.float32)  # premultiplied RGB + alpha
        alpha = la[..., 3:] / 255
        bg = np.asarray(self._background(W, H, r_bg), dtype=np.float32)
        if r_company is not None and r_company.random() < c.p_company:
            bg = add_company(bg, self.companions, c.company_count, c.company_height, c.company_blur, r_company)
        if mask is not None and r_geo.random() < c.p_shadow:
            bg = bg * self._shadow(alpha_img, r_geo)[..., None]
        comp = bg * (1 - alpha) + la[..., :3]
        occluders = self._occluders(alpha[..., 0], r_occ)
        visible = alpha[..., 0]
        if occluders is not None:
            colour, cover = occluders
            comp = comp * (1 - cover) + colour * cover
            visible = visible * (1 - cover[..., 0])
        mask = Image.fromarray(np.clip(visible * 255 + 0.5, 0, 255).astype(np.uint8), "L")
        # The mask stays the product unsmeared: the smear (at most ~10 px at the 320 px view size) is
        # under a third of a feature-map cell.
        if r_dark is not None and r_dark.random() < c.p_low_light:
            comp = low_light(comp, r_dark, c.low_light_exposure, c.low_light_motion)
        return self._camera(comp, alpha_img, r_light, r_cam), mask

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
        scene = procedural_background(max(16, W // 2), max(16, H // 2), r, nrng)
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
            return skin_tone(r) if r.random() < 0.75 else random_colour(r)  # bare arm or sleeve
        if kind == "strap":  # bag strap or belt crossing the whole product
            dx, dy = math.cos(a := r.uniform(0, math.pi)) * size * 1.5, math.sin(a) * size * 1.5
            draw.line([(px - dx, py - dy), (px + dx, py + dy)], fill=255,
                      width=max(2, round(size * r.uniform(0.015, 0.04))))
            return r.choice(((25, 22, 20), (92, 58, 35), (160, 118, 80))) if r.random() < 0.7 else random_colour(r, 1.0)
        hw, hh = size * r.uniform(0.06, 0.2), size * r.uniform(0.06, 0.2)
        if kind == "rect":  # phone, shopping bag, card
            draw.rounded_rectangle((px - hw, py - hh, px + hw, py + hh), radius=min(hw, hh) * r.uniform(0, 0.5),
                                   fill=255)
        else:  # hand, head, hair, a ball
            draw.ellipse((px - hw, py - hh, px + hw, py + hh), fill=255)
        return skin_tone(r) if r.random() < 0.25 else random_colour(r)

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
            folds = value_noise(lh, lw, np.random.default_rng(r.getrandbits(64)), r.choice((3, 5, 8))) - 0.5
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

__all__ = ["ConsumerViewConfig", "ConsumerViewSynthesizer", "cutout_mask"]
