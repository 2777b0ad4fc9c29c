"""The query recipes of bench_adapt.py and its siblings: shoppers' views of `test` items, each
recipe drawn reproducibly from its own seed, so every benchmark scores the same queries.

Most recipes are composed apart from the training synthesiser's default (see bench_adapt.py's
docstring); a gain on a recipe that a training view style imitates is not a gain on real photos.
"""
from __future__ import annotations

import random

RECIPE_SEEDS = {"synth": 20_181_116, "small": 31_000_000, "harsh": 41_000_000, "street": 51_000_000,
                "motion": 61_000_000, "crowd": 71_000_000, "lens": 81_000_000}



def motion_view(synth):
    """A recipe of degradations the default training synthesiser never renders: the hand's motion
    blur along a random line, a dim scene's gain and noise, a low-resolution phone photo, heavy
    compression. (The `night` view style renders the first two its own way; this smear is kept apart
    from model.synthesis.low_light on purpose, so that the recipe does not share training's code.)"""
    import io

    import numpy as np
    from PIL import Image

    def view(photo, rng):
        image = np.asarray(synth(photo, rng), dtype=np.float32)
        length, angle = rng.randint(5, 15), rng.uniform(0, np.pi)
        h, w = image.shape[:2]
        padded = np.pad(image, ((length, length), (length, length), (0, 0)), mode="edge")
        blurred = np.zeros_like(image)
        for t in np.linspace(-0.5, 0.5, length):
            dx, dy = round(t * length * np.cos(angle)), round(t * length * np.sin(angle))
            blurred += padded[length + dy:length + dy + h, length + dx:length + dx + w]
        image = blurred / length
        gain = rng.uniform(0.35, 0.7)  # a dim room, then the phone's gain: noise grows with it
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(4, 10) / gain, image.shape)
        image = np.clip((image * gain + noise * gain) / gain ** 0.6, 0, 255).astype(np.uint8)
        out = Image.fromarray(image)
        scale = rng.randint(160, 260) / max(out.size)
        out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))), Image.BILINEAR)
        buffer = io.BytesIO()
        out.save(buffer, "JPEG", quality=rng.randint(20, 45))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return view


def crowd_view(others):
    """A recipe composed apart from the training synthesiser (no product_mask, no procedural scene,
    no camera model of its own): the product, cut out by a plain near-white threshold, stands in
    front of two to four other catalogue products (`others`: their paths), smaller and out of
    focus, as people behind a shopper's subject are, on a backdrop of an enlarged, defocused crop of
    another catalogue photo under a coloured light; then lens blur, a colour cast, shot noise, JPEG."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    from model.preprocessing import load_image

    def cut(img):
        """RGBA: alpha is off where near-white pixels reach the photo's border (a white garment stays), opened
        and feathered."""
        rgb = img.convert("RGB")
        # copy(): an image made by fromarray shares the array's memory, which floodfill leaves unchanged
        white = Image.fromarray(np.where(np.asarray(rgb, np.uint8).min(2) > 246, 255, 0).astype(np.uint8)).copy()
        w, h = white.size
        border = [(x, y) for x in range(0, w, 4) for y in (0, h - 1)]
        border += [(x, y) for y in range(0, h, 4) for x in (0, w - 1)]
        for xy in border:
            if white.getpixel(xy) == 255:
                ImageDraw.floodfill(white, xy, 128)
        alpha = Image.fromarray(np.where(np.asarray(white) == 128, 0, 255).astype(np.uint8))
        for step in (ImageFilter.MinFilter(3), ImageFilter.MaxFilter(3), ImageFilter.GaussianBlur(1)):
            alpha = alpha.filter(step)
        return Image.merge("RGBA", (*rgb.split(), alpha))

    def place(canvas, layer, height, cx, bottom, angle):
        scale = height / layer.height
        layer = layer.resize((max(1, round(layer.width * scale)), max(1, round(height))), Image.BICUBIC)
        layer = layer.rotate(angle, Image.BICUBIC, expand=True)
        canvas.alpha_composite(layer, (round(cx - layer.width / 2), round(bottom - layer.height)))

    def view(shop, rng):
        H = rng.randint(420, 720)
        W = round(H * rng.choice((0.75, 0.75, 1.0, 0.5625)))
        backdrop = load_image(rng.choice(others)).convert("RGB")
        f = rng.uniform(0.3, 0.6)
        x0, y0 = rng.uniform(0, 1 - f) * backdrop.width, rng.uniform(0, 1 - f) * backdrop.height
        box = (x0, y0, x0 + f * backdrop.width, y0 + f * backdrop.height)
        backdrop = backdrop.resize((W, H), Image.BILINEAR, box=box)
        light = np.array([rng.uniform(0.35, 0.95) for _ in range(3)], np.float32)
        canvas = Image.fromarray((np.asarray(backdrop.filter(ImageFilter.GaussianBlur(rng.uniform(4, 10))), np.float32)
                                  * light).astype(np.uint8)).convert("RGBA")
        for _ in range(rng.randint(2, 4)):  # the crowd: behind, smaller, defocused, in the scene's light
            other = cut(load_image(rng.choice(others))).filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5)))
            dim = np.asarray(other, np.float32) * np.r_[light * rng.uniform(0.8, 1.1), 1.0]
            place(canvas, Image.fromarray(np.clip(dim, 0, 255).astype(np.uint8), "RGBA"), H * rng.uniform(0.3, 0.6),
                  rng.uniform(0, W), H * rng.uniform(0.55, 1.05), rng.uniform(-8, 8))
        place(canvas, cut(shop), H * rng.uniform(0.4, 0.8), W * rng.uniform(0.35, 0.65),
              H * rng.uniform(0.8, 1.0), rng.uniform(-12, 12))
        img = canvas.convert("RGB").filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2)))
        arr = np.asarray(img, np.float32) / 255
        arr = arr ** rng.uniform(0.8, 1.25) * np.array([rng.uniform(0.88, 1.12) for _ in range(3)], np.float32)
        arr = arr * 255 + np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(2, 8), arr.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=rng.randint(35, 85))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return view


def lens_view(synth):
    """A recipe of optics no training view style renders: a cheap wide lens's barrel distortion,
    colour fringes (lateral chromatic aberration), haze or a dirty lens's veil, a bright sky's
    overexposure with blown highlights and their glow, then a phone's sharpening and JPEG."""
    import io

    import numpy as np
    from PIL import Image, ImageFilter

    def remap(channel, k, scale):
        """Barrel distortion with coefficient k and a magnification, bilinear, about the centre."""
        h, w = channel.shape
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        cx, cy, norm = (w - 1) / 2, (h - 1) / 2, max(w, h) / 2
        u, v = (xs - cx) / norm, (ys - cy) / norm
        f = (1 + k * (u * u + v * v)) / scale
        sx, sy = np.clip(cx + u * f * norm, 0, w - 1.001), np.clip(cy + v * f * norm, 0, h - 1.001)
        x0, y0 = sx.astype(int), sy.astype(int)
        fx, fy = sx - x0, sy - y0
        top = channel[y0, x0] * (1 - fx) + channel[y0, x0 + 1] * fx
        bottom = channel[y0 + 1, x0] * (1 - fx) + channel[y0 + 1, x0 + 1] * fx
        return top * (1 - fy) + bottom * fy

    def view(photo, rng):
        image = np.asarray(synth(photo, rng), dtype=np.float32)
        k, fringe = rng.uniform(0.05, 0.3), rng.uniform(0.003, 0.012)
        zoom = 1 + k * 0.5  # so the corners are not pulled in from outside the frame
        image = np.stack([remap(image[..., c], k, zoom * s) for c, s in enumerate((1 + fringe, 1.0, 1 - fringe))], -1)
        if rng.random() < 0.6:  # haze: a veil of scattered light over everything
            veil = rng.uniform(0.1, 0.35)
            tint = np.array([rng.uniform(0.92, 1.05) for _ in range(3)], np.float32)
            air = rng.uniform(180, 235) * tint
            image = image * (1 - veil) + air * veil
        if rng.random() < 0.6:  # exposed for the shadows: highlights clip and glow
            image = image * rng.uniform(1.2, 1.7)
            glow = Image.fromarray(np.clip(image - 230, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(6))
            image = image + np.asarray(glow, np.float32) * rng.uniform(0.5, 1.5)
        out = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
        out = out.filter(ImageFilter.UnsharpMask(radius=rng.uniform(1, 2.5), percent=rng.randint(60, 160), threshold=2))
        buffer = io.BytesIO()
        out.save(buffer, "JPEG", quality=rng.randint(45, 85))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return view


def recipe(name: str, others=()):
    from demo.synth import street_view
    from model.synthesis import ConsumerViewConfig, ConsumerViewSynthesizer

    if name == "synth":
        return ConsumerViewSynthesizer()
    if name == "small":
        return ConsumerViewSynthesizer(ConsumerViewConfig(garment_fraction=(0.2, 0.55), long_side=(384, 720),
                                                          p_occlusion=0.5, p_cutout=1.0))
    if name == "harsh":
        return ConsumerViewSynthesizer(ConsumerViewConfig(
            brightness=(0.45, 1.45), contrast=(0.6, 1.35), gamma=(0.6, 1.6), max_temperature=0.2,
            p_blur=0.8, max_blur=2.2, noise_sigma=(3.0, 12.0), jpeg_quality=(18, 60), p_occlusion=0.6,
            max_occluded_fraction=0.35, saturation=(0.55, 1.35)))
    if name == "street":
        return street_view
    if name == "crowd":
        if not others:
            raise SystemExit("the crowd recipe needs test items beyond --queries for its crowd: "
                             "ask for fewer queries than there are test items")
        return crowd_view(others)
    if name == "motion":
        return motion_view(ConsumerViewSynthesizer(ConsumerViewConfig(
            garment_fraction=(0.3, 0.85), p_blur=0.0, p_rescale=0.0, p_jpeg=0.0, noise_sigma=(0.0, 0.0))))
    if name == "lens":
        return lens_view(ConsumerViewSynthesizer(ConsumerViewConfig(p_blur=0.2, p_jpeg=0.0)))
    raise SystemExit(f"unknown recipe {name!r}; choose from {sorted(RECIPE_SEEDS)}")


def make_queries(test_photos, recipe_name: str, limit: int):
    """(PIL images, item ids) of `limit` test items' views under one recipe, reproducibly."""
    from model.training.views import load_photo

    seed = RECIPE_SEEDS[recipe_name]
    # The crowd around a query: other catalogue photos than the first `limit` test items'.
    synth = recipe(recipe_name, [p.path for p in test_photos[limit:]])
    images, items = [], []
    for index, photo in enumerate(test_photos[:limit]):
        images.append(synth(load_photo(photo), random.Random(seed + 1000 * index)))
        items.append(photo.item_id)
    return images, items
