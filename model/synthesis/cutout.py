"""Cutting a product out of its catalogue photo: the mask of what is not the plain studio backdrop.

Used by the consumer-view synthesis to put the product on a new scene.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

_BILINEAR, _BOX = Image.Resampling.BILINEAR, Image.Resampling.BOX
_MASK_WORK = 256   # mask estimation size: catalogue photos are ~224 px and more pixels add nothing
_LABEL_GRID = 48   # connected components are found at this size to keep the numpy loop short


def cutout_mask(shop: Image.Image) -> Image.Image:
    """'L' mask of the product (255 = product, feathered edge) estimated from a plain backdrop.

    When the photo has no plain backdrop, or the estimate covers under 3% or over 97% of it, the
    result is a full 255 mask, meaning "no cut-out: use the whole photo".
    """
    mask = product_mask(shop.convert("RGB"))
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


def product_mask(shop: Image.Image) -> Image.Image | None:
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
