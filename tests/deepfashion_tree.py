"""A miniature DeepFashion Consumer-to-shop tree, byte-for-byte in the benchmark's layout.

    ROOT/img/<CATEGORY>/<Sub_Category>/id_XXXXXXXX/{comsumer_NN,shop_NN}.jpg   ("comsumer" sic)
    ROOT/Eval/list_eval_partition.txt       count, header, one row per consumer x shop pair
    ROOT/Anno/list_bbox_consumer2shop.txt   count, header, one garment box per photo (optional)

Shop photos are `demo.synth` studio renders; consumer photos are a street-view version of the
garment pasted into a larger, cluttered frame, so the recorded box is what makes cropping useful.
Boxes are exact: the garment's pixels are found by rendering the item once in black and once in
white under the same pose and street-view randomness, where only garment pixels differ.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from demo.synth import ItemSpec, random_item, render_item, street_view

# (category folder, sub-category folder, DeepFashion clothes_type, garment kinds drawn for it)
CATEGORIES = (("CLOTHING", "Blouse", 1, ("t-shirt", "long-sleeve-top")),
              ("TROUSERS", "Pants", 2, ("trousers",)))
PARTITION_HEADER = "image_pair_name_1 image_pair_name_2 item_id evaluation_status"
BBOX_HEADER = "image_name clothes_type source_type x_1 y_1 x_2 y_2"
SHOP_SOURCE, CONSUMER_SOURCE = 1, 2
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 with x1, y1 exclusive
# Black and white renders differ by >100 levels on the garment; street_view's contrast step
# (which uses the image mean) shifts the background by at most ~15, so 32 separates them.
_MASK_THRESHOLD = 32


def write_deepfashion_tree(root: Path, n_items: int = 8, shops_per_item: int = 2, consumers_per_item: int = 2,
                           splits: Sequence[str] = ("train", "train", "train", "train", "val", "test", "test", "test"),
                           with_bbox: bool = True, size: int = 96, seed: int = 0) -> Path:
    """Write a mini Consumer-to-shop dataset under `root` and return `root`.

    Item i (ids id_00000001...) alternates between CLOTHING/Blouse and TROUSERS/Pants and gets
    split ``splits[i % len(splits)]``; every consumer x shop pair of an item is a partition row,
    so each photo is listed in several rows. Shop photos are size x size; consumer photos are
    1.25 size x 1.5 size with the garment somewhere inside.
    """
    root = Path(root)
    rng = random.Random(seed)
    pairs: list[str] = []
    boxes: list[str] = []
    for i in range(n_items):
        top, sub, clothes_type, kinds = CATEGORIES[i % len(CATEGORIES)]
        item_id = f"id_{i + 1:08d}"
        spec = dataclasses.replace(random_item(rng, item_id), kind=rng.choice(kinds))
        folder = Path("img") / top / sub / item_id
        (root / folder).mkdir(parents=True, exist_ok=True)
        shops, consumers = [], []
        for n in range(1, shops_per_item + 1):
            rel = (folder / f"shop_{n:02d}.jpg").as_posix()
            img, box = _shop_photo(spec, size, view=n - 1)
            img.save(root / rel, "JPEG", quality=90)
            shops.append(rel)
            boxes.append(f"{rel} {clothes_type} {SHOP_SOURCE} {' '.join(map(str, box))}")
        for n in range(1, consumers_per_item + 1):
            rel = (folder / f"comsumer_{n:02d}.jpg").as_posix()
            img, box = _consumer_photo(spec, size, view=n, rng=rng)
            img.save(root / rel, "JPEG", quality=90)
            consumers.append(rel)
            boxes.append(f"{rel} {clothes_type} {CONSUMER_SOURCE} {' '.join(map(str, box))}")
        split = splits[i % len(splits)]
        pairs += [f"{c} {s} {item_id} {split}" for c in consumers for s in shops]
    _write_listing(root / "Eval" / "list_eval_partition.txt", PARTITION_HEADER, pairs)
    if with_bbox:
        _write_listing(root / "Anno" / "list_bbox_consumer2shop.txt", BBOX_HEADER, boxes)
    return root


def _write_listing(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([str(len(rows)), header, *rows]) + "\n", encoding="utf-8")


def _flat(spec: ItemSpec, rgb: tuple[int, int, int]) -> ItemSpec:
    return dataclasses.replace(spec, rgb=rgb, pattern_rgb=rgb)


def _coverage(black: Image.Image, white: Image.Image) -> np.ndarray:
    """0..1 garment coverage from two renders that differ only in the garment's colour."""
    diff = np.abs(np.asarray(white, np.int16) - np.asarray(black, np.int16)).max(axis=2)
    return np.clip((diff - _MASK_THRESHOLD) / 64, 0, 1)


def _tight_box(alpha: np.ndarray, dx: int = 0, dy: int = 0) -> Box:
    ys, xs = np.nonzero(alpha > 0)
    return int(xs.min()) + dx, int(ys.min()) + dy, int(xs.max()) + 1 + dx, int(ys.max()) + 1 + dy


def _shop_photo(spec: ItemSpec, size: int, view: int) -> tuple[Image.Image, Box]:
    alpha = _coverage(render_item(_flat(spec, (0, 0, 0)), size, view),
                      render_item(_flat(spec, (255, 255, 255)), size, view))
    return render_item(spec, size, view), _tight_box(alpha)


def _consumer_photo(spec: ItemSpec, size: int, view: int, rng: random.Random) -> tuple[Image.Image, Box]:
    garment_size = round(size * rng.uniform(0.55, 0.75))
    street_seed = rng.getrandbits(32)  # one seed replayed three times: same crop, tilt, light and noise

    def street(s: ItemSpec) -> Image.Image:
        return street_view(render_item(s, garment_size, view), random.Random(street_seed))

    garment = street(spec)
    alpha = _coverage(street(_flat(spec, (0, 0, 0))), street(_flat(spec, (255, 255, 255))))
    frame = _busy_frame(round(size * 1.25), round(size * 1.5), rng)
    gw, gh = garment.size
    dx, dy = rng.randint(0, frame.shape[1] - gw), rng.randint(0, frame.shape[0] - gh)
    region = frame[dy:dy + gh, dx:dx + gw]
    frame[dy:dy + gh, dx:dx + gw] = region * (1 - alpha[..., None]) + np.asarray(garment, np.float32) * alpha[..., None]
    return Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)), _tight_box(alpha, dx, dy)


def _busy_frame(width: int, height: int, rng: random.Random) -> np.ndarray:
    """A cluttered scene (gradient wall, furniture-like blocks, blobs, noise) as float32 H x W x 3."""
    top, bottom = (np.array([rng.randint(40, 220) for _ in range(3)], np.float32) for _ in range(2))
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    img = Image.fromarray(np.broadcast_to(top * (1 - t) + bottom * t, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(8, 14)):
        x0, y0 = rng.randint(-width // 4, width), rng.randint(-height // 4, height)
        x1, y1 = x0 + rng.randint(6, width // 2), y0 + rng.randint(6, height // 2)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        shape = rng.choice(("rectangle", "ellipse", "line"))
        if shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=rng.randint(1, 4))
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 6, (height, width, 3))
    return np.asarray(img, np.float32) + noise.astype(np.float32)
