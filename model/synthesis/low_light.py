"""A badly lit shopper's photo: the hand moves during a long exposure, few photons reach the sensor,
and the phone's gain and denoiser bring back a brighter, noisier and softer picture under the
colour of whatever lamp there was.

The default view relights within a moderate range and adds mild sensor noise of constant strength;
in a dim shop or street at night the noise grows with the gain and depends on each pixel's light
(shot noise), and the exposure is long enough for the hand to smear the picture along a line.
"""
from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageFilter

# Lamp colours as (R, G, B) gains: tungsten, sodium street light, cool LED, daylight through a window.
LAMPS = ((1.0, 0.78, 0.52), (1.0, 0.72, 0.34), (0.82, 0.92, 1.0), (1.0, 1.0, 1.0))


def smear(scene: np.ndarray, length: float, angle: float) -> np.ndarray:
    """(H, W, C) float averaged along a line of `length` px at `angle` radians: the hand's motion."""
    taps = max(2, math.ceil(length))
    pad = math.ceil(length / 2) + 1
    H, W = scene.shape[:2]
    padded = np.pad(scene, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.zeros_like(scene)
    for t in np.linspace(-length / 2, length / 2, taps):
        dx, dy = round(t * math.cos(angle)), round(t * math.sin(angle))
        out += padded[pad + dy:pad + dy + H, pad + dx:pad + dx + W]
    return out / np.float32(taps)


def low_light(scene: np.ndarray, r: random.Random, exposure: tuple[float, float],
              motion: tuple[float, float]) -> np.ndarray:
    """`scene` (H, W, 3) float in 0..255 as a phone renders it in dim light: exposed at `exposure`
    (low, high) of a well-lit frame, smeared by up to `motion` (low, high) px at a 384 px long side,
    with shot and read noise, then the phone's partial gain and, mostly, its denoiser."""
    H, W = scene.shape[:2]
    length = r.uniform(*motion) * max(H, W) / 384
    if length >= 1.5:
        scene = smear(scene, length, r.uniform(0, math.pi))
    lamp = np.array(LAMPS[r.randrange(len(LAMPS))], np.float32)
    lamp = 1 + r.uniform(0.3, 1.0) * (lamp - 1)
    e = r.uniform(*exposure)
    photons = scene * (np.float32(e) * lamp)
    # Shot noise's variance grows with the light a pixel gets; read noise is the floor.
    shot, read = r.uniform(0.2, 1.0), r.uniform(0.8, 2.5)
    nrng = np.random.default_rng(r.getrandbits(64))
    noise = nrng.standard_normal(scene.shape, dtype=np.float32)
    noisy = photons + np.sqrt(photons * np.float32(shot) + np.float32(read ** 2)) * noise
    # Phones do not restore a dim scene's full brightness: it should still look dark.
    out = np.clip(noisy * np.float32((1 / e) ** r.uniform(0.55, 0.9)) + 0.5, 0, 255)
    if r.random() < 0.7:  # the denoiser: detail goes with the noise
        img = Image.fromarray(out.astype(np.uint8)).filter(ImageFilter.BoxBlur(r.uniform(0.4, 1.4) * max(H, W) / 384))
        return np.asarray(img, dtype=np.float32)
    return out.astype(np.uint8).astype(np.float32)
