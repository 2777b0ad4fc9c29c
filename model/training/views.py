"""Photos as the network sees them in training and evaluation: decoded, cropped to the garment box
when the dataset has one, optionally turned into a synthesised shopper's view, preprocessed."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..config import Preprocessing
from .data import Photo
from ..inference import InferencePlan, embed_batch, embed_query_batch
from ..preprocessing import build_transform, load_image

Synthesizer = Callable[[Image.Image, random.Random], Image.Image]
BOX_PADDING = 0.1  # DeepFashion boxes are tight; a margin keeps the garment's outline


@dataclass(frozen=True)
class View:
    photo: Photo
    synth_seed: int | None = None  # None: the photo itself; else a synthesised consumer view of it


def load_photo(photo: Photo) -> Image.Image:
    img = load_image(photo.path)
    if photo.bbox is None:
        return img
    x0, y0, x1, y1 = photo.bbox
    pad_x, pad_y = (x1 - x0) * BOX_PADDING, (y1 - y0) * BOX_PADDING
    box = (max(0, round(x0 - pad_x)), max(0, round(y0 - pad_y)),
           min(img.width, round(x1 + pad_x)), min(img.height, round(y1 + pad_y)))
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return img  # a degenerate box in the annotations: better the whole photo than nothing
    return img.crop(box)


def render_view(view: View, synthesizer: Synthesizer | None) -> Image.Image:
    img = load_photo(view.photo)
    if view.synth_seed is not None:
        if synthesizer is None:
            raise ValueError("a synthesised view was asked for without a synthesizer")
        img = synthesizer(img, random.Random(view.synth_seed))
    return img


class ViewDataset(Dataset):
    """Views as input tensors; with `keep_photo`, (tensor, rendered photo) pairs for a query side
    that crops the garment out of the photo (collate them with `collate_with_photos`)."""

    def __init__(self, views: Sequence[View], prep: Preprocessing, synthesizer: Synthesizer | None = None,
                 keep_photo: bool = False) -> None:
        self.views = list(views)
        self.transform = build_transform(prep)
        self.synthesizer = synthesizer
        self.keep_photo = keep_photo

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int):
        img = render_view(self.views[index], self.synthesizer)
        return (self.transform(img), img) if self.keep_photo else self.transform(img)


def collate_with_photos(items: list) -> tuple[torch.Tensor, list[Image.Image]]:
    return torch.stack([tensor for tensor, _ in items]), [photo for _, photo in items]


def embed_views(model: torch.nn.Module, plan: InferencePlan, views: Sequence[View], prep: Preprocessing,
                synthesizer: Synthesizer | None = None, batch_size: int = 64, workers: int = 2,
                progress: bool = False, desc: str = "embedding", query: bool = False) -> np.ndarray:
    """(len(views), dim) float32 unit vectors, in the order of `views`; `query`: embedded as shoppers'
    photos (the model's query side, `prep` should then be its query preprocessing)."""
    from tqdm import tqdm

    net = getattr(model, "_orig_mod", model)
    with_photos = query and getattr(net, "locates_garments", False)  # the service's query side: the crop from the photo
    loader = DataLoader(ViewDataset(views, prep, synthesizer, keep_photo=with_photos), batch_size=batch_size,
                        num_workers=workers, pin_memory=plan.device.type == "cuda",
                        collate_fn=collate_with_photos if with_photos else None)
    was_training = model.training
    model.eval()
    if with_photos:
        def embed(batch):
            return embed_query_batch(model, batch[0], plan, photos=batch[1])[0]
    elif query:
        def embed(batch):
            return embed_query_batch(model, batch, plan)[0]
    else:
        def embed(batch):
            return embed_batch(model, batch, plan)
    chunks = [embed(batch) for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress)]
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
