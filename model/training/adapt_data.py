"""What `adapt` feeds the frozen backbone: catalogue photos and shoppers' views, each with its garment mask.

A row renders to the letterboxed tensor the embedder would see, plus the mask of the product in the
same frame (the synthesiser knows it exactly for its views; a shop photo's is its non-backdrop
area; a real shopper's photo has none). Rows that cannot be decoded come back flagged, never raise,
so one bad file neither kills a DataLoader worker nor shifts the rows after it.
"""
from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..adapted_head import garment_boxes
from ..config import Preprocessing
from ..garment_crop import crop_photo
from ..synthesis.cutout import product_mask
from .data import Photo, RetrievalData
from ..preprocessing import ImageDecodeError, letterbox_content, letterbox_tensor, load_input_image
from .views import load_photo

VIEW_SEED = 7_000_000  # adaptation's views; evaluation draws its own from another seed
# MaskBoxCrops' random move of a mask's box: the centre's shift (standard deviation, in box sides)
# and the log of the side's scale (mean, standard deviation), as located boxes were off their masks'
# (bench_mask_boxes.py, 400 default views of test items: shift sd 0.043 / 0.065, log side -0.099 / 0.155).
MASK_BOX_JITTER = (0.055, -0.1, 0.155)


@dataclass(frozen=True)
class Row:
    photo: Photo
    synth_seed: int | None = None  # None: the photo itself


def catalog_rows(photos: Sequence[Photo]) -> list[Row]:
    return [Row(p) for p in photos]


def view_rows(photos_by_item: dict[str, list[Photo]], view: int) -> list[Row]:
    """The `view`-th synthesised shopper's view of every item (from its shop photos in turn).

    One list per view index, so that a cache made for K views serves any smaller K and grows to a
    larger one without encoding the first views again."""
    return [Row(photos[view % len(photos)], VIEW_SEED + 1000 * index + view)
            for index, (item, photos) in enumerate(sorted(photos_by_item.items()))]


def view_synthesizers(styles: Sequence[str], views: int, train: RetrievalData) -> list:
    """The synthesiser of each of `views` view sets: set n draws in style n mod len(styles)
    (synthesis.VIEW_STYLES), its company from the training items' own shop photos, so that no
    held-out item is ever seen in training, not even behind another."""
    from ..synthesis import VIEW_STYLES, ConsumerViewSynthesizer

    companions = [photo.path for photo in train.shop()]
    return [ConsumerViewSynthesizer(VIEW_STYLES[styles[n % len(styles)]], companions=companions)
            for n in range(views)]


def row_key(row: Row) -> str:
    """What identifies a row's content in a cache fingerprint."""
    return f"{row.photo.path}|{row.photo.bbox}|{row.synth_seed}"


class RowDataset(Dataset):
    """Row -> dict(tensor, mask, has_mask, ok, error[, frame, left, top]) at `prep`'s size.

    `keep_frame` also returns the letterboxed uint8 content, from which the query-side crop of a
    later stage is made exactly as `build_transform` would have made it."""

    def __init__(self, rows: Sequence[Row], prep: Preprocessing, synthesizer=None, keep_frame: bool = False,
                 shop_masks: bool = True) -> None:
        if prep.resize != "letterbox":
            raise ValueError("adapt needs letterbox preprocessing (the garment box is read off the letterbox)")
        self.rows, self.prep, self.synthesizer = list(rows), prep, synthesizer
        self.keep_frame, self.shop_masks = keep_frame, shop_masks

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        size = self.prep.input_size
        row = self.rows[index]
        try:
            img, mask, digest = self._render(row)
            content, left, top = letterbox_content(img, size)
        except (ImageDecodeError, OSError, ValueError) as exc:
            return self._failed(f"{row.photo.path}: {exc}")
        canvas = np.zeros((size, size), np.uint8)
        if mask is not None:
            canvas[top:top + content.height, left:left + content.width] = np.asarray(
                mask.resize(content.size, Image.BILINEAR))
        pixels = np.asarray(content, np.uint8)
        out = {"tensor": letterbox_tensor(pixels, left, top, self.prep), "mask": torch.from_numpy(canvas),
               "has_mask": mask is not None, "ok": True, "error": "", "sha256": digest}
        if self.keep_frame:
            frame = np.zeros((size, size, 3), np.uint8)
            frame[top:top + content.height, left:left + content.width] = pixels
            out |= {"frame": torch.from_numpy(frame),
                    "content": torch.tensor([left, top, content.width, content.height])}
        return out

    def _render(self, row: Row) -> tuple[Image.Image, Image.Image | None, str]:
        """(photo, garment mask or None, sha256 of the file when the photo is used as it is)."""
        if row.synth_seed is not None:
            return *self.synthesizer.compose(load_photo(row.photo), random.Random(row.synth_seed)), ""
        digest = ""
        if row.photo.bbox is None:
            # A photo used as it is decodes exactly as the indexer and the service decode it, and
            # its hash lets the indexer reuse the cached map only for the file it was made from.
            data = Path(row.photo.path).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            img = load_input_image(io.BytesIO(data), self.prep)
        else:
            img = load_photo(row.photo)
        if row.photo.domain == "shop" and self.shop_masks:
            return img, product_mask(img) or Image.new("L", img.size, 255), digest
        return img, None, digest

    def _failed(self, error: str) -> dict:
        size = self.prep.input_size
        out = {"tensor": torch.zeros(3, size, size), "mask": torch.zeros(size, size, dtype=torch.uint8),
               "has_mask": False, "ok": False, "error": error, "sha256": ""}
        if self.keep_frame:
            out |= {"frame": torch.zeros(size, size, 3, dtype=torch.uint8), "content": torch.zeros(4, dtype=torch.long)}
        return out


class MaskBoxCrops(RowDataset):
    """Synthesised views, each cropped at its product mask's garment box: the query side's crop
    without the frame pass that finds the garment (56% of a located view set's cost, measured; not
    a default: it lost on small garments, README "Mask-box view sets").

    The box is read off the mask letterboxed into the `frame_size` query frame by the rule a
    foreground map is read by (adapted_head.garment_boxes), then moved and scaled at random (`jitter`:
    the standard deviation of the centre's shift, in box sides; the mean and standard deviation of
    the side's log scale) as a located box is off its mask's; the crop is cut from the view's own
    pixels, as the service cuts an upload's.
    Rows have RowDataset's keys (no mask: the crop's map trains no foreground head)."""

    def __init__(self, rows: Sequence[Row], prep: Preprocessing, synthesizer, frame_size: int, margin: float,
                 jitter: tuple[float, float, float]) -> None:
        super().__init__(rows, prep, synthesizer)
        self.frame_size, self.margin, self.jitter = frame_size, margin, jitter

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        try:
            img, mask = self.synthesizer.compose(load_photo(row.photo), random.Random(row.synth_seed))
        except (ImageDecodeError, OSError, ValueError) as exc:
            return self._failed(f"{row.photo.path}: {exc}")
        box = mask_box(mask, self.frame_size, self.margin)
        rng = np.random.default_rng(row.synth_seed)
        side = box[2] - box[0]
        centre = (box[:2] + box[2:]) / 2 + rng.normal(0, self.jitter[0], 2) * side
        half = side * np.exp(rng.normal(self.jitter[1], self.jitter[2])) / 2
        size = self.prep.input_size
        return {"tensor": crop_photo(img, np.r_[centre - half, centre + half], self.frame_size, self.prep),
                "mask": torch.zeros(size, size, dtype=torch.uint8), "has_mask": False, "ok": True, "error": "",
                "sha256": ""}


def mask_box(mask: Image.Image, frame_size: int, margin: float) -> np.ndarray:
    """An 'L' garment mask -> its (4,) garment box in units of the `frame_size` letterbox frame, by
    the rule a foreground map is read by (adapted_head.garment_boxes)."""
    grid = max(8, frame_size // 8)  # a map's cells after garment_boxes' 4x upsampling, at that frame size
    content, left, top = letterbox_content(mask, grid)
    canvas = np.zeros((grid, grid), np.float32)
    canvas[top:top + content.height, left:left + content.width] = np.asarray(content, np.float32) / 255
    return garment_boxes(torch.from_numpy(canvas)[None, None], margin)[0].numpy().astype(np.float64)


def frames_to_tensor(frames: np.ndarray, content: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """Cached (B, S, S, 3) letterbox frames -> the (B, 3, S, S) tensors the transform made of them."""
    return torch.stack([letterbox_tensor(f[t:t + h, x:x + w], x, t, prep)
                        for f, (x, t, w, h) in zip(frames, content)])
