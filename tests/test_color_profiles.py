"""Photos tagged with ICC profiles decode to their sRGB colours (model/color.py via load_image).

No profile files ship with the project, so the profiles are written here byte by byte: a Display P3
matrix/TRC profile and a CMYK press profile with an A2B0 look-up table, both ICC v2. Expected
colours are computed with numpy straight from the primaries and the ink model, independently of
LittleCMS's PCS round trip.
"""
from __future__ import annotations

import io
import itertools
import logging
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from model import color
from model.preprocessing import build_transform, load_image, load_input_image

from .conftest import TINY_PREP

D50 = np.array([0.9642, 1.0, 0.8249])  # the ICC profile connection space's white
D65_XY = (0.3127, 0.3290)
BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
SRGB_PRIMARIES = ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060))


def _xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1 - x - y) / y])


def _rgb_to_xyz(primaries) -> np.ndarray:
    """Linear RGB -> XYZ (D65 white at Y = 1) for these primaries."""
    columns = np.column_stack([_xyz(*p) for p in primaries])
    return columns * np.linalg.solve(columns, _xyz(*D65_XY))


def _to_d50(matrix: np.ndarray) -> np.ndarray:
    """The matrix with its D65 white adapted to D50 by Bradford, as ICC requires of colorants."""
    scale = (BRADFORD @ D50) / (BRADFORD @ matrix.sum(axis=1))
    return np.linalg.inv(BRADFORD) @ np.diag(scale) @ BRADFORD @ matrix


def _srgb_decode(levels) -> np.ndarray:
    v = np.asarray(levels, dtype=np.float64) / 255
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    v = np.clip(linear, 0, 1)
    return 255 * np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)


# --------------------------------------------------------------------------------------------
# ICC v2 profiles by hand


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(xyz) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in xyz)


def _desc_tag(text: str) -> bytes:  # textDescriptionType: ASCII, then empty Unicode and ScriptCode parts
    ascii_ = text.encode() + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + struct.pack(">IIHB", 0, 0, 0, 0) + bytes(67)


def _srgb_trc_tag() -> bytes:  # parametricCurveType 3: the sRGB curve, which Display P3 shares
    params = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
    return b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(_s15(v) for v in params)


def _icc(device_class: bytes, space: bytes, pcs: bytes, tags: dict[str, bytes]) -> bytes:
    start = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags.items():
        table += signature.encode() + struct.pack(">II", start + len(data), len(body))
        data += body + bytes(-len(body) % 4)
    header = (struct.pack(">I", start + len(data)) + bytes(4) + struct.pack(">I", 0x02100000)
              + device_class + space + pcs + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp"
              + bytes(24) + bytes(4) + b"".join(_s15(v) for v in D50) + bytes(48))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def _matrix_profile(primaries, name: str) -> bytes:
    colorants = _to_d50(_rgb_to_xyz(primaries))
    trc = _srgb_trc_tag()
    return _icc(b"mntr", b"RGB ", b"XYZ ", {
        "desc": _desc_tag(name), "cprt": b"text\0\0\0\0none\0", "wtpt": _xyz_tag(D50),
        "rXYZ": _xyz_tag(colorants[:, 0]), "gXYZ": _xyz_tag(colorants[:, 1]), "bXYZ": _xyz_tag(colorants[:, 2]),
        "rTRC": trc, "gTRC": trc, "bTRC": trc})


def _ink_model(cmyk: np.ndarray) -> np.ndarray:
    """CMYK coverage in 0..1 -> linear sRGB reflectance of a made-up press: dot gain, and inks that
    absorb some of their neighbours' light. Full black is 0, so black point compensation is moot."""
    c, m, y, k = np.moveaxis(1 - (1 - cmyk) ** 1.6, -1, 0)
    r = (1 - c) * (1 - 0.1 * m)
    g = (1 - m) * (1 - 0.3 * c) * (1 - 0.1 * y)
    b = (1 - y) * (1 - 0.35 * m)
    return np.stack([r, g, b], -1) * (1 - k)[..., None]


def _lab_d50(xyz: np.ndarray) -> np.ndarray:
    t = xyz / D50
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _cmyk_profile(grid: int = 9) -> bytes:
    """An output (printer) profile whose A2B0 lut16Type table maps CMYK to PCS Lab by `_ink_model`."""
    nodes = np.linspace(0, 1, grid)
    cmyk = np.array(list(itertools.product(nodes, repeat=4)))  # the first channel varies slowest
    lab = _lab_d50(_ink_model(cmyk) @ _to_d50(_rgb_to_xyz(SRGB_PRIMARIES)).T)
    legacy = np.stack([lab[:, 0] * 65280 / 100, (lab[:, 1] + 128) * 256, (lab[:, 2] + 128) * 256], -1)
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    linear = struct.pack(">2H", 0, 65535)  # two-entry input and output curves: straight lines
    lut = (b"mft2\0\0\0\0" + struct.pack(">4B", 4, 3, grid, 0) + identity + struct.pack(">2H", 2, 2)
           + linear * 4 + np.clip(np.rint(legacy), 0, 65535).astype(">u2").tobytes() + linear * 3)
    return _icc(b"prtr", b"CMYK", b"Lab ", {"desc": _desc_tag("test press"), "cprt": b"text\0\0\0\0none\0",
                                            "wtpt": _xyz_tag(D50), "A2B0": lut})


P3 = _matrix_profile(P3_PRIMARIES, "Display P3 (test)")
SRGB_LOOKALIKE = _matrix_profile(SRGB_PRIMARIES, "sRGB (hand-made)")
CMYK = _cmyk_profile()


def _p3_in_srgb(rgb) -> np.ndarray:
    return _srgb_encode(np.linalg.solve(_rgb_to_xyz(SRGB_PRIMARIES), _rgb_to_xyz(P3_PRIMARIES) @ _srgb_decode(rgb)))


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _pixel(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)[img.height // 2, img.width // 2]


@pytest.fixture(autouse=True)
def _fresh_cache():
    # Warnings are logged once per profile while cached; each test sees its own first time.
    color._transform.cache_clear()
    yield
    color._transform.cache_clear()


def test_hand_made_profiles_load_in_littlecms():
    for data, space in ((P3, "RGB"), (SRGB_LOOKALIKE, "RGB"), (CMYK, "CMYK")):
        profile = ImageCms.ImageCmsProfile(io.BytesIO(data))
        assert profile.profile.xcolor_space.strip() == space


DUSTY_RED = (200, 60, 60)


@pytest.mark.parametrize("fmt, kwargs, tol", [("PNG", {}, 2), ("JPEG", {"quality": 95}, 3),
                                              ("HEIF", {"quality": -1}, 4)])
def test_display_p3_photo_decodes_to_its_srgb_colour(fmt, kwargs, tol):
    photo = Image.new("RGB", (48, 32), DUSTY_RED)
    expected = _p3_in_srgb(DUSTY_RED)  # about (217, 42, 52): redder than the numbers say in sRGB
    tagged = _pixel(load_image(_encode(photo, fmt, icc_profile=P3, **kwargs)))
    untagged = _pixel(load_image(_encode(photo, fmt, **kwargs)))
    assert np.abs(tagged - expected).max() <= tol, (tagged, expected)
    assert np.abs(untagged - DUSTY_RED).max() <= tol
    assert np.abs(tagged - untagged).max() > 10


def test_large_p3_jpeg_is_converted_after_draft_decoding():
    data = _encode(Image.new("RGB", (640, 480), DUSTY_RED), "JPEG", quality=95, icc_profile=P3)
    img = load_image(data, target_size=64)
    assert img.size == (160, 120) and img.info["source_size"] == (640, 480)  # drafted at 1/4
    assert np.abs(_pixel(img) - _p3_in_srgb(DUSTY_RED)).max() <= 3
    assert "icc_profile" not in img.info  # the pixels are sRGB now; the P3 tag would mislabel them


def test_p3_cut_out_converts_its_colours_and_keeps_white_where_transparent():
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (16, 32), DUSTY_RED + (255,)), (16, 0))
    img = load_image(_encode(rgba, "PNG", icc_profile=P3))
    pixels = np.asarray(img, dtype=np.int16)
    assert np.array_equal(pixels[16, 4], (255, 255, 255))
    assert np.abs(pixels[16, 24] - _p3_in_srgb(DUSTY_RED)).max() <= 2
    indexed = Image.new("RGB", (8, 8), DUSTY_RED).convert("P", palette=Image.Palette.ADAPTIVE)
    palette = load_image(_encode(indexed, "PNG", icc_profile=P3))
    assert np.abs(_pixel(palette) - _p3_in_srgb(DUSTY_RED)).max() <= 2


@pytest.mark.parametrize("cmyk", [(0, 204, 204, 0), (102, 51, 0, 51)])  # a red dress, a denim blue
def test_cmyk_jpeg_decodes_through_its_profile_not_the_naive_formula(cmyk):
    photo = Image.new("CMYK", (32, 32), cmyk)
    img = load_image(_encode(photo, "JPEG", quality=95, icc_profile=CMYK))
    expected = _srgb_encode(_ink_model(np.array(cmyk) / 255))
    naive = np.asarray(photo.convert("RGB"), dtype=np.int16)[0, 0]
    assert np.abs(_pixel(img) - expected).max() <= 3, (_pixel(img), expected)
    assert np.abs(naive - expected).max() > 15  # the test colours are ones where the two differ


@pytest.mark.parametrize("case", ["garbage", "truncated", "cmyk-profile-on-rgb"])
def test_an_unusable_profile_is_ignored_with_a_warning(case, caplog):
    photo = Image.new("RGB", (16, 16), DUSTY_RED)
    profile = {"garbage": b"not an ICC profile at all", "truncated": P3[:200], "cmyk-profile-on-rgb": CMYK}[case]
    with caplog.at_level(logging.WARNING, logger="snap2shop.model"):
        img = load_image(_encode(photo, "PNG", icc_profile=profile))
        again = load_image(_encode(photo, "PNG", icc_profile=profile))
    assert np.array_equal(np.asarray(img), np.asarray(photo)) and np.array_equal(np.asarray(again), np.asarray(photo))
    warnings = [r for r in caplog.records if "ICC profile" in r.getMessage()]
    assert len(warnings) == 1  # once per profile, not once per photo


@pytest.mark.parametrize("profile", ["littlecms", "hand-made"])
def test_srgb_tagged_photo_keeps_its_pixels(profile):
    data = (ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes() if profile == "littlecms"
            else SRGB_LOOKALIKE)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    tagged = np.asarray(load_image(_encode(photo, "PNG", icc_profile=data)), dtype=np.int16)
    assert np.abs(tagged - np.asarray(photo)).max() <= 1


def test_uploads_and_the_indexer_get_the_converted_colour(tmp_path):
    from indexer.encode import PhotoDataset

    data = _encode(Image.new("RGB", (200, 150), DUSTY_RED), "JPEG", quality=95, icc_profile=P3)
    upload = load_input_image(data, TINY_PREP)  # the service's decode of an upload
    assert np.abs(_pixel(upload) - _p3_in_srgb(DUSTY_RED)).max() <= 3
    (tmp_path / "p3.jpg").write_bytes(data)
    _, tensor, _, _ = PhotoDataset([tmp_path / "p3.jpg"], TINY_PREP)[0]  # the catalogue's decode
    assert tensor is not None and tensor.equal(build_transform(TINY_PREP)(upload))


def test_greyscale_photo_converts_through_its_grey_profile():
    gamma_18 = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(1.8 * 256))  # u8Fixed8 gamma
    grey = _icc(b"mntr", b"GRAY", b"XYZ ", {"desc": _desc_tag("Gray Gamma 1.8 (test)"),
                                           "cprt": b"text\0\0\0\0none\0", "wtpt": _xyz_tag(D50), "kTRC": gamma_18})
    img = load_image(_encode(Image.new("LA", (8, 8), (128, 255)), "PNG", icc_profile=grey))
    expected = _srgb_encode((128 / 255) ** 1.8)  # about 107: gamma 1.8 greys are lighter in number
    assert np.abs(_pixel(img) - expected).max() <= 2, (_pixel(img), expected)


def test_has_foreign_profile_tells_which_photos_need_pillow():
    photo = Image.new("RGB", (8, 8), DUSTY_RED)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for profile, foreign in ((None, False), (srgb, False), (b"garbage", False), (P3, True)):
        kwargs = {"icc_profile": profile} if profile else {}
        with Image.open(io.BytesIO(_encode(photo, "JPEG", **kwargs))) as opened:
            assert color.has_foreign_profile(opened) is foreign


def test_device_jpeg_decoding_leaves_a_p3_photo_to_pillow():
    from model.device_decode import decodable_on_device

    photo = Image.new("RGB", (64, 48), (200, 60, 60))
    assert decodable_on_device(_encode(photo, "JPEG", quality=95))
    # torchvision's decode_jpeg ignores profiles: a P3 photo must take the converting path
    assert not decodable_on_device(_encode(photo, "JPEG", quality=95, icc_profile=P3))
