"""Photos' embedded ICC profiles, honoured: pixels become sRGB before anything else sees them.

A phone photo tagged Display P3 (iPhone JPEG and HEIC), a camera's Adobe RGB or a print shop's
CMYK JPEG hold numbers that mean different colours than the same numbers in sRGB. The embedder
learnt from, and the catalogue mostly is, sRGB; converting through the profile keeps a red dress
the same red whichever device photographed it.
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging

import numpy as np
from PIL import Image, ImageCms

log = logging.getLogger("snap2shop.model")

# Above any profile a camera, phone or press workflow embeds (a JPEG can carry 16 MiB of them);
# a bigger one is ignored, so uploads cannot make the cache below hold more than tens of MiB.
MAX_PROFILE_BYTES = 4 << 20

# The colour part of each mode whose pixels the profile describes, and the profile space it needs.
_BASE_MODE = {"RGB": "RGB", "RGBA": "RGB", "CMYK": "CMYK", "L": "L", "LA": "L"}
_SPACE_FOR_MODE = {"RGB": "RGB", "CMYK": "CMYK", "L": "GRAY"}

# Relative colorimetric keeps every colour sRGB can show exactly as the profile defines it and
# clips only those outside sRGB, so a garment photographed in P3 and the same garment in an sRGB
# catalogue photo get the same pixels; perceptual intent would shift in-gamut colours too, by an
# amount that differs from profile to profile (matrix profiles such as P3 have no perceptual
# table at all). Black point compensation maps a press profile's ink black (L* 10-20) to sRGB
# black, as Photoshop does, instead of a washed-out grey; RGB profiles' black is 0 already.
_INTENT = ImageCms.Intent.RELATIVE_COLORIMETRIC
_FLAGS = ImageCms.Flags.BLACKPOINTCOMPENSATION


def to_srgb(img: Image.Image) -> Image.Image:
    """`img` converted to sRGB through its embedded ICC profile (RGB, or RGBA where it had alpha);
    `img` itself where it has no profile, an sRGB one, or one that cannot be used."""
    profile = img.info.get("icc_profile")
    if not profile:
        return img
    keyed = "transparency" in img.info
    if img.mode in ("P", "PA") or (img.mode in ("L", "RGB") and keyed):
        # A palette or a tRNS colour key: expand first, as the key's colour no longer matches after.
        img = img.convert("LA" if img.mode == "L" else "RGBA" if keyed or img.mode == "PA" else "RGB")
    base = _BASE_MODE.get(img.mode)
    transform = _transform(_Profile(profile), base) if base else None
    if transform is None:
        return img
    colour = img if img.mode == base else img.convert(base)
    try:
        out = ImageCms.applyTransform(colour, transform)
    except (ImageCms.PyCMSError, ValueError, OSError) as exc:
        log.warning("a photo's ICC profile failed to apply (%s); using its colours as stored", exc)
        return img
    if img.mode != base:
        out.putalpha(img.getchannel("A"))
    # The pixels are sRGB now, which untagged means; keeping the old profile would mislabel them
    # wherever the image is saved again (PNG writes info["icc_profile"] by default).
    out.info = {k: v for k, v in img.info.items() if k not in ("icc_profile", "transparency")}
    return out


def has_foreign_profile(img: Image.Image) -> bool:
    """Whether `to_srgb` would change this (opened, not necessarily loaded) photo's colours: a
    decoder that bypasses Pillow (model/device_decode.py) must leave such photos to Pillow."""
    profile = img.info.get("icc_profile")
    base = _BASE_MODE.get("RGB" if img.mode in ("P", "PA") else img.mode)
    return bool(profile) and base is not None and _transform(_Profile(profile), base) is not None


class _Profile:
    """Profile bytes as a cache key that is the bytes' digest: after the transform is built the
    key drops the bytes, so neither a large profile nor a stream of distinct garbage ones stays
    in memory as a key."""

    __slots__ = ("data", "digest")

    def __init__(self, data: bytes) -> None:
        self.data: bytes | None = data
        self.digest = hashlib.blake2b(data, digest_size=16).digest()

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Profile) and other.digest == self.digest


@functools.lru_cache(maxsize=16)
def _transform(key: _Profile, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The transform from `mode` pixels under this profile to sRGB RGB; None where it is sRGB
    already or cannot be used (logged here, hence once per profile and mode while cached)."""
    data, key.data = key.data, None
    try:
        if len(data) > MAX_PROFILE_BYTES:
            raise ValueError(f"{len(data)} bytes, more than the {MAX_PROFILE_BYTES} allowed")
        source = ImageCms.ImageCmsProfile(io.BytesIO(data))
        space = source.profile.xcolor_space.strip()
        if space != _SPACE_FOR_MODE[mode]:
            raise ValueError(f"{space} profile on {mode} pixels")
        transform = ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), mode, "RGB",
                                            _INTENT, _FLAGS)
        return None if mode != "CMYK" and _is_identity(transform, mode) else transform
    except (ImageCms.PyCMSError, ValueError, TypeError, OSError) as exc:
        log.warning("ignoring a photo's unusable ICC profile (%s); using its colours as stored", exc)
        return None


def _is_identity(transform: ImageCms.ImageCmsTransform, mode: str) -> bool:
    """Whether the profile is sRGB in all but name (within a level on a lattice of colours): such
    photos, most tagged ones, then skip the conversion and keep their exact pixels."""
    levels = np.arange(0, 256, 17, dtype=np.uint8)
    if mode == "L":
        lattice = np.arange(256, dtype=np.uint8)[None, :]
        expected = np.repeat(lattice[..., None], 3, axis=-1)
    else:
        lattice = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(1, -1, 3)
        expected = lattice
    out = np.asarray(ImageCms.applyTransform(Image.fromarray(lattice), transform))
    return int(np.abs(out.astype(np.int16) - expected).max()) <= 1
