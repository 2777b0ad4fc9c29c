"""JPEG decoding on the model's device: torchvision's `decode_jpeg` (nvJPEG on a GPU), for hosts whose
CPUs cannot decode as fast as the GPU embeds. The indexer's `--jpeg-decode device` uses it; worker
processes then only read the files.

The geometry (letterbox, squash, center-crop) and the normalisation table are those of
model/preprocessing.py; only the resampling differs (torch's antialiased bilinear instead of
Pillow's), so embeddings agree with the Pillow path closely but not bit for bit. Photos this path
cannot take (other formats, CMYK, oversized, damaged) go through Pillow as before.
"""
from __future__ import annotations

import io
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .color import has_foreign_profile
from .config import Preprocessing
from .preprocessing import MAX_PIXELS, center_crop_region, fit_inside_size, normalising_table


def decodable_on_device(data: bytes, max_pixels: int = MAX_PIXELS) -> bool:
    """Whether `data` is a JPEG that decode_jpeg handles as Pillow would: RGB or greyscale, within
    the pixel limit, with no colour profile other than sRGB (decode_jpeg ignores profiles; Pillow's
    path converts them, model/color.py). Reads the header only."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return (img.format == "JPEG" and img.mode in ("RGB", "L") and img.width * img.height <= max_pixels
                    and not has_foreign_profile(img))
    except Exception:  # anything Pillow cannot even open is Pillow's to report
        return False


def decode_jpegs(photos: Sequence[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """Upright (3, H, W) uint8 tensors on `device`; None for a photo that does not decode."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data):
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)

    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in photos]
    with warnings.catch_warnings():
        # torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they still
        # work, and TorchCodec is not part of this stack (yet).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        try:
            return list(decode(encoded))
        except RuntimeError:  # one damaged photo fails the whole call: find it
            decoded: list[torch.Tensor | None] = []
            for data in encoded:
                try:
                    decoded.append(decode(data))
                except RuntimeError:
                    decoded.append(None)
            return decoded


def _resize(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    resized = F.interpolate(pixels.unsqueeze(0).float(), size=(height, width), mode="bilinear",
                            antialias=True, align_corners=False)
    return resized.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)  # 8-bit, as Pillow's output


def transform_decoded(pixels: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """(3, H, W) uint8 -> the normalised (3, input_size, input_size) float tensor, on pixels' device."""
    size = prep.input_size
    _, height, width = pixels.shape
    table = torch.from_numpy(normalising_table(tuple(prep.mean), tuple(prep.std))).to(pixels.device)
    channels = torch.arange(3, device=pixels.device).view(3, 1, 1)
    if prep.resize == "squash":
        return table[channels, _resize(pixels, size, size).long()]
    if prep.resize == "center-crop":
        left, top, right, bottom = (round(v) for v in center_crop_region(width, height, size))
        region = pixels[:, top:max(bottom, top + 1), left:max(right, left + 1)]
        return table[channels, _resize(region, size, size).long()]
    fit_width, fit_height = fit_inside_size(width, height, size)
    out = torch.zeros(3, size, size, device=pixels.device)  # letterbox padding: exact zeros, as on the CPU
    top, left = (size - fit_height) // 2, (size - fit_width) // 2
    out[:, top:top + fit_height, left:left + fit_width] = table[channels, _resize(pixels, fit_width, fit_height).long()]
    return out
