"""Behavioural tests for model/synthesis/: shopper-style photos synthesised from shop photos."""
from __future__ import annotations

import colorsys
import io
import random
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from demo.synth import random_item, render_item
from model.synthesis import ConsumerViewConfig, ConsumerViewSynthesizer, cutout_mask

WHITE = (255, 255, 255)
# Every stage that changes pixels outside geometry and occlusion switched off: outputs can be diffed.
CLEAN = ConsumerViewConfig(p_relight=0.0, p_blur=0.0, noise_sigma=(0.0, 0.0), p_rescale=0.0, p_jpeg=0.0,
                           p_shadow=0.0, p_occlusion=0.0, long_side=(256, 320))


def _shirt(colour, size=(160, 200), backdrop=WHITE) -> tuple[Image.Image, np.ndarray]:
    """A T-shirt silhouette in `colour` on a plain backdrop, and its true mask."""
    w, h = size
    pts = [(0.35, 0.1), (0.65, 0.1), (0.92, 0.3), (0.82, 0.42), (0.72, 0.35), (0.72, 0.9),
           (0.28, 0.9), (0.28, 0.35), (0.18, 0.42), (0.08, 0.3)]
    pts = [(x * w, y * h) for x, y in pts]
    img, mask = Image.new("RGB", size, backdrop), Image.new("L", size, 0)
    ImageDraw.Draw(img).polygon(pts, fill=colour)
    ImageDraw.Draw(mask).polygon(pts, fill=255)
    return img, np.asarray(mask) > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _jpeg(img: Image.Image, quality: int = 80) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _garment_pixels(synth, colour, other, seed) -> tuple[np.ndarray, np.ndarray]:
    """Where the product is visible in the output, found by rendering the same seed with the product
    in two very different colours (scene, geometry and occluders do not depend on its colour)."""
    a = np.asarray(synth(_shirt(colour)[0], random.Random(seed)), dtype=np.int32)
    b = np.asarray(synth(_shirt(other)[0], random.Random(seed)), dtype=np.int32)
    region = np.abs(a - b).max(2) > 40
    return region, a[region]


# --- cut-out -------------------------------------------------------------------------------------

@pytest.mark.parametrize("colour,backdrop,jpeg", [
    ((200, 30, 40), WHITE, False),
    ((20, 30, 80), (236, 236, 238), True),     # navy on a light-grey studio backdrop, compressed
    ((185, 185, 190), WHITE, True),            # light grey on white: the hard case
    ((240, 200, 60), (250, 250, 250), False),
])
def test_cutout_mask_recovers_the_product(colour, backdrop, jpeg):
    img, truth = _shirt(colour, backdrop=backdrop)
    mask = cutout_mask(_jpeg(img) if jpeg else img)
    assert mask.mode == "L" and mask.size == img.size
    assert _iou(np.asarray(mask) > 127, truth) > 0.9


def test_cutout_mask_handles_a_fading_backdrop_and_a_product_touching_the_frame():
    img, truth = _shirt((60, 120, 60), size=(200, 160))
    ramp = np.linspace(255, 225, 160, dtype=np.float32)[:, None, None]  # paper sweep, darker at the bottom
    arr = np.where(truth[..., None], np.asarray(img, np.float32), ramp * np.ones((1, 200, 3)))
    arr[150:, 60:140] = (60, 120, 60)  # hem cut off by the frame
    truth = truth.copy()
    truth[150:, 60:140] = True
    mask = cutout_mask(Image.fromarray(arr.astype(np.uint8)))
    assert _iou(np.asarray(mask) > 127, truth) > 0.9


def test_cutout_mask_falls_back_to_the_whole_photo_without_a_plain_backdrop():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8))
    scene, _ = _shirt((200, 30, 40), backdrop=(0, 0, 0))
    scene = Image.fromarray(np.clip(np.asarray(scene, np.int16) + np.random.default_rng(1).integers(
        0, 120, (200, 160, 3)) * (np.arange(160) % 20 < 10)[None, :, None], 0, 255).astype(np.uint8))  # striped wall
    tiny = Image.new("RGB", (200, 200), WHITE)
    ImageDraw.Draw(tiny).rectangle((100, 100, 105, 105), fill=(0, 0, 0))  # under 3% of the photo
    for img in (noise, scene, tiny, Image.new("RGB", (64, 64), (30, 90, 200))):
        mask = cutout_mask(img)
        assert mask.size == img.size and mask.getextrema() == (255, 255)


# --- the synthesiser ----------------------------------------------------------------------------

def test_same_seed_gives_identical_output_and_different_seeds_differ():
    shop = render_item(random_item(random.Random(3), "sku-1"), size=128)
    first = ConsumerViewSynthesizer()(shop, random.Random(7))
    again = ConsumerViewSynthesizer()(shop, random.Random(7))  # a fresh instance: no hidden state
    assert first.size == again.size and first.tobytes() == again.tobytes()
    outputs = {ConsumerViewSynthesizer()(shop, random.Random(seed)).tobytes() for seed in range(6)}
    assert len(outputs) == 6


def test_output_is_rgb_with_a_phone_photo_size():
    config = ConsumerViewConfig()
    synth = ConsumerViewSynthesizer(config)
    shop = render_item(random_item(random.Random(5), "sku-2"), size=96)
    ratios = [a for a, _ in config.aspects]
    seen = set()
    for seed in range(8):
        out = synth(shop, random.Random(seed))
        assert out.mode == "RGB"
        assert config.long_side[0] <= max(out.size) <= config.long_side[1]
        ratio = out.width / out.height
        nearest = min(ratios, key=lambda r: abs(r - ratio))
        assert abs(nearest - ratio) < 0.01
        seen.add(nearest)
    assert 3 / 4 in seen and len(seen) >= 2


@pytest.mark.parametrize("make", [
    lambda: _shirt((200, 30, 40), size=(32, 32))[0],
    lambda: _shirt((20, 90, 160), size=(300, 120))[0],
    lambda: _shirt((20, 90, 160), size=(90, 300))[0],
    lambda: _shirt((200, 30, 40))[0].convert("L").convert("RGB"),
    lambda: _shirt((200, 30, 40))[0].convert("L"),
    lambda: _shirt((200, 30, 40))[0].convert("RGBA"),
])
def test_works_on_tiny_non_square_and_grey_inputs(make):
    synth = ConsumerViewSynthesizer()
    for seed in range(3):
        out = synth(make(), random.Random(seed))
        assert out.mode == "RGB" and 256 <= max(out.size) <= 512
        assert np.asarray(out).std() > 1  # not a blank frame


def test_cutout_replaces_the_studio_backdrop():
    shop = _shirt((200, 30, 40))[0]
    def white_share(config, seed):
        out = np.asarray(ConsumerViewSynthesizer(config)(shop, random.Random(seed)))
        return (out.min(2) >= 250).mean()
    cut = [white_share(replace(CLEAN, p_cutout=1.0), s) for s in range(8)]
    kept = [white_share(replace(CLEAN, p_cutout=0.0), s) for s in range(3)]
    assert sum(share < 0.05 for share in cut) >= 6
    assert min(kept) > 0.2  # without a cut-out the backdrop is still there: the check can fail


@pytest.mark.parametrize("colour", [(200, 30, 40), (40, 150, 60), (40, 70, 190), (218, 166, 42)])
def test_product_colour_survives_synthesis(colour):
    # Default photometric and camera stages, on smaller frames to keep the test fast.
    synth = ConsumerViewSynthesizer(replace(ConsumerViewConfig(), long_side=(256, 320)))
    other = tuple(255 - c for c in colour)
    h0, s0, _ = colorsys.rgb_to_hsv(*(c / 255 for c in colour))
    errors, kept_saturation = [], []
    for seed in range(6):
        region, pixels = _garment_pixels(synth, colour, other, seed)
        assert region.mean() > 0.02, "the product should be clearly visible"
        h, s, _ = colorsys.rgb_to_hsv(*(np.median(pixels, axis=0) / 255))
        errors.append(min(abs(h - h0), 1 - abs(h - h0)) * 360)
        kept_saturation.append(s / s0)
    assert sum(e < 20 for e in errors) >= 5, errors
    assert np.mean(errors) < 12, errors
    assert np.median(kept_saturation) > 0.6, kept_saturation


def test_occlusion_never_covers_more_than_the_configured_share():
    off = ConsumerViewSynthesizer(CLEAN)
    colour, other = (200, 30, 40), (30, 200, 190)
    drawn = 0
    for seed in range(6):
        full, _ = _garment_pixels(off, colour, other, seed)  # the same seed without occluders
        assert full.sum() > 500
        for limit in (0.25, 0.04):
            on = ConsumerViewSynthesizer(replace(CLEAN, p_occlusion=1.0, max_occluded_fraction=limit))
            visible, _ = _garment_pixels(on, colour, other, seed)
            share = (full & ~visible).sum() / full.sum()
            assert share <= limit + 0.01, (seed, limit, share)
            drawn += share > 0.005
    assert drawn >= 10  # occluders really are drawn, within the limit


def test_photo_backgrounds_are_used_and_a_broken_file_falls_back(tmp_path):
    photo = tmp_path / "street.jpg"
    yy, xx = np.mgrid[0:300, 0:400]
    Image.fromarray(np.stack([(xx % 64 < 32) * 200 + 20, yy * 0 + 60, yy % 256], -1).astype(np.uint8)).save(photo)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    shop = _shirt((200, 30, 40))[0]
    config = replace(CLEAN, p_photo_background=1.0, p_cutout=1.0)
    with_photo = ConsumerViewSynthesizer(config, backgrounds=[photo])(shop, random.Random(1))
    procedural = ConsumerViewSynthesizer(config)(shop, random.Random(1))
    assert with_photo.size == procedural.size and with_photo.tobytes() != procedural.tobytes()
    green = np.asarray(with_photo)[..., 1]
    assert (np.abs(green.astype(int) - 60) <= 2).mean() > 0.3  # the photo's flat green channel shows
    out = ConsumerViewSynthesizer(config, backgrounds=[broken])(shop, random.Random(1))
    assert out.mode == "RGB"


# --- company: other products in the scene ---------------------------------------------------------

def _company_photos(tmp_path) -> tuple[list, np.ndarray]:
    """A pure green product on white, saved as a catalogue photo, and that green."""
    green = (20, 200, 40)
    path = tmp_path / "companion.png"
    _shirt(green, size=(120, 150))[0].save(path)
    return [path], np.array(green)


def test_company_is_set_behind_the_product_and_left_out_of_its_mask(tmp_path):
    companions, green = _company_photos(tmp_path)
    shop = _shirt((200, 30, 40))[0]
    config = replace(CLEAN, p_cutout=1.0, garment_fraction=(0.35, 0.5), company_count=(3, 3))
    alone = ConsumerViewSynthesizer(config)
    crowded = ConsumerViewSynthesizer(replace(config, p_company=1.0), companions=companions)
    seen = 0
    for seed in range(6):
        a_img, a_mask = alone.compose(shop, random.Random(seed))
        c_img, c_mask = crowded.compose(shop, random.Random(seed))
        # The same frame, placement and scene: the company only adds to the scene behind the product.
        assert a_img.size == c_img.size and a_mask.tobytes() == c_mask.tobytes()
        product = np.asarray(c_mask) == 255
        a, c = np.asarray(a_img, np.int32), np.asarray(c_img, np.int32)
        assert np.array_equal(a[product], c[product])
        changed = np.abs(a - c).max(2) > 30
        assert not (changed & product).any()
        greenish = np.abs(c - green).max(2) < 25
        seen += (changed & greenish).sum() > 100  # the companion itself, not a smear
    assert seen >= 4


def test_without_companions_or_with_p_company_0_views_and_their_cache_key_are_unchanged(tmp_path):
    companions, _ = _company_photos(tmp_path)
    shop = _shirt((200, 30, 40))[0]
    plain = ConsumerViewSynthesizer(CLEAN)
    off = ConsumerViewSynthesizer(CLEAN, companions=companions)  # p_company 0: no company
    unsupplied = ConsumerViewSynthesizer(replace(CLEAN, p_company=1.0))  # no photos to draw it from
    for synth in (off, unsupplied):
        assert synth(shop, random.Random(3)).tobytes() == plain(shop, random.Random(3)).tobytes()
        assert synth.describe() == plain.describe()
    assert not any("compan" in key for key in plain.describe())  # caches made before company stay valid
    on = ConsumerViewSynthesizer(replace(CLEAN, p_company=1.0), companions=companions)
    other = ConsumerViewSynthesizer(replace(CLEAN, p_company=1.0), companions=companions + [tmp_path / "b.png"])
    assert on.describe() != plain.describe() and on.describe() != other.describe()
    # Photo backgrounds change the views too, so they are part of the key when they can be drawn.
    scenes = ConsumerViewSynthesizer(replace(CLEAN, p_photo_background=0.5), backgrounds=companions)
    assert scenes.describe() != ConsumerViewSynthesizer(replace(CLEAN, p_photo_background=0.5)).describe()
    assert ConsumerViewSynthesizer(replace(CLEAN, p_photo_background=0.0), backgrounds=companions).describe() == \
        ConsumerViewSynthesizer(replace(CLEAN, p_photo_background=0.0)).describe()


def test_company_photos_that_fail_or_have_no_backdrop_are_passed_over(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    noise = tmp_path / "noise.png"  # no plain backdrop: nothing to cut out
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8)).save(noise)
    shop = _shirt((200, 30, 40))[0]
    config = replace(CLEAN, p_cutout=1.0, p_company=1.0, company_count=(2, 2))
    out = ConsumerViewSynthesizer(config, companions=[broken, noise])(shop, random.Random(5))
    assert out.tobytes() == ConsumerViewSynthesizer(replace(config, p_company=0.0))(shop, random.Random(5)).tobytes()


# --- low light: a dim scene, the phone's gain, the hand's smear ----------------------------------

def test_smear_spreads_a_point_along_the_line_of_motion_and_keeps_its_light():
    from model.synthesis.low_light import smear

    scene = np.zeros((41, 41, 3), np.float32)
    scene[20, 20] = 900.0
    across = smear(scene, 9.0, 0.0)[..., 0]
    lit = np.argwhere(across > 0)
    assert set(lit[:, 0]) == {20} and lit[:, 1].max() - lit[:, 1].min() + 1 == 9  # a horizontal line, 9 px
    assert across.sum() == pytest.approx(900.0)
    down = smear(scene, 9.0, np.pi / 2)[..., 0]
    assert set(np.argwhere(down > 0)[:, 1]) == {20} and down.sum() == pytest.approx(900.0)


def test_low_light_noise_grows_with_the_light_a_pixel_gets():
    from model.synthesis.low_light import low_light

    scene = np.full((64, 128, 3), 40.0, np.float32)
    scene[:, 64:] = 220.0
    dark_sd, bright_sd = [], []
    for seed in range(8):
        out = low_light(scene, random.Random(seed), (0.2, 0.2), (0.0, 0.0))
        assert out.shape == scene.shape and out.min() >= 0 and out.max() <= 255
        assert out[:, 64:].mean() < 220 and out[:, :64].mean() < 40  # a dim scene stays dimmer
        dark_sd.append(out[4:-4, 4:60].std(axis=(0, 1)).mean())
        bright_sd.append(out[4:-4, 68:-4].std(axis=(0, 1)).mean())
    assert all(b > 1.3 * d for b, d in zip(bright_sd, dark_sd))  # shot noise, not a constant sigma
    assert min(dark_sd) > 0.5


def test_a_low_light_view_keeps_its_frame_and_mask_and_other_views_stay_what_they_were():
    shop = _shirt((200, 30, 40))[0]
    plain = ConsumerViewSynthesizer(replace(CLEAN, p_cutout=1.0))
    dim = ConsumerViewSynthesizer(replace(CLEAN, p_cutout=1.0, p_low_light=0.5))
    changed = 0
    for seed in range(12):
        a_img, a_mask = plain.compose(shop, random.Random(seed))
        d_img, d_mask = dim.compose(shop, random.Random(seed))
        assert a_img.size == d_img.size and a_mask.tobytes() == d_mask.tobytes()
        a, d = np.asarray(a_img, np.float32), np.asarray(d_img, np.float32)
        if a_img.tobytes() != d_img.tobytes():  # dim: darker on the whole, the product's flat red now grainy
            changed += 1
            assert d.mean() < a.mean()
            inside = np.asarray(d_mask) == 255
            assert d[inside].std(0).mean() > a[inside].std(0).mean()
    assert 3 <= changed <= 9  # about half the views are dim; the rest are byte for byte the plain ones


def test_low_light_settings_enter_the_cache_key_only_when_views_can_be_dim():
    plain = ConsumerViewSynthesizer(CLEAN).describe()
    assert not any("low_light" in key for key in plain)  # caches made before low light stay valid
    assert ConsumerViewSynthesizer(replace(CLEAN, low_light_motion=(0.0, 3.0))).describe() == plain
    dim = ConsumerViewSynthesizer(replace(CLEAN, p_low_light=0.5)).describe()
    assert dim != plain and dim != ConsumerViewSynthesizer(
        replace(CLEAN, p_low_light=0.5, low_light_exposure=(0.3, 0.6))).describe()


@pytest.mark.parametrize("bad", [dict(p_jpeg=1.5), dict(brightness=(1.2, 0.8)), dict(max_occluded_fraction=2.0),
                                 dict(p_company=1.2), dict(company_count=(3, 1)), dict(company_count=(-1, 2)),
                                 dict(company_height=(0.0, 0.5)), dict(p_low_light=-0.1),
                                 dict(low_light_exposure=(0.0, 0.3)), dict(low_light_exposure=(0.5, 1.5)),
                                 dict(low_light_motion=(-1.0, 3.0))])
def test_config_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        ConsumerViewConfig(**bad)
