"""The indexer's accelerator options, exercised on the CPU: JPEG decoding with torchvision on the
model's device (`--jpeg-decode device`, nvJPEG on a GPU) and `torch.compile` (`--compile`)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.encode import encode_paths
from model import Preprocessing, build_transform, load_image, load_model
from model.backbones import IMAGENET_MEAN, IMAGENET_STD
from model.device_decode import decodable_on_device, decode_jpegs, transform_decoded
from model.inference import embed_batch, plan_inference, prepare_model

CPU = torch.device("cpu")


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth shapes with edges, like a product shot: resampling differences show at the edges."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)),
                     ((x + y) % 97) * 2], axis=-1).astype(np.uint8)
    img = Image.fromarray(base)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        img.paste(colour, (x0, y0, x0 + width // 5, y0 + height // 5))
    return img


def _jpeg(img: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=92, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("resize", ["letterbox", "squash", "center-crop"])
@pytest.mark.parametrize("size", [(640, 480), (300, 900), (150, 100)])
def test_device_transform_matches_the_pillow_one(resize, size):
    prep = Preprocessing(input_size=96, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=resize)
    data = _jpeg(_photo(*size))
    pillow = build_transform(prep)(load_image(data))  # full decode: the device path has no draft mode
    [pixels] = decode_jpegs([data], CPU)
    tensor = transform_decoded(pixels, prep)
    assert tensor.shape == pillow.shape == (3, 96, 96) and tensor.dtype == torch.float32
    one_level = 1 / 255 / min(IMAGENET_STD)
    assert (tensor - pillow).abs().mean() < 2 * one_level  # the resampling kernels differ, not the geometry
    if resize == "letterbox":  # the padding is the same exact zeros
        assert torch.equal(tensor == 0, pillow == 0)


def test_which_photos_the_device_takes():
    photo = _photo(64, 48)
    assert decodable_on_device(_jpeg(photo))
    assert decodable_on_device(_jpeg(photo.convert("L")))
    assert not decodable_on_device(_jpeg(photo.convert("CMYK")))  # Pillow converts CMYK; nvJPEG may not
    png = io.BytesIO()
    photo.save(png, "PNG")
    assert not decodable_on_device(png.getvalue())
    assert not decodable_on_device(b"not an image at all")
    assert not decodable_on_device(_jpeg(photo), max_pixels=64 * 48 - 1)  # Pillow refuses it, with a reason


def test_device_decoding_turns_photos_upright_and_isolates_a_damaged_one():
    stored = _photo(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    rotated = _jpeg(stored, exif=exif.tobytes())
    damaged = _jpeg(stored)[:200] + b"\x00" * 50
    upright, broken, plain = decode_jpegs([rotated, damaged, _jpeg(stored)], CPU)
    assert broken is None
    assert tuple(upright.shape) == (3, 80, 40) and tuple(plain.shape) == (3, 40, 80)
    pillow = torch.from_numpy(np.array(load_image(rotated))).permute(2, 0, 1).int()
    assert (upright.int() - pillow).abs().float().mean() < 3  # same pixels, two JPEG decoders


@pytest.fixture
def mixed_folder(tmp_path, synthetic_catalog) -> list[Path]:
    """Catalogue JPEGs, a large JPEG, a PNG, a CMYK JPEG and a damaged JPEG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    with open(synthetic_catalog) as handle:
        rows = list(csv.DictReader(handle))
    paths = []
    for row in rows[:9]:
        source = synthetic_catalog.parent / row["path"]
        paths.append(folder / source.name)
        paths[-1].write_bytes(source.read_bytes())
    big = _photo(900, 700, seed=3)
    (folder / "big.jpg").write_bytes(_jpeg(big))
    big.save(folder / "big.png")
    (folder / "cmyk.jpg").write_bytes(_jpeg(big.convert("CMYK")))
    (folder / "damaged.jpg").write_bytes(_jpeg(big)[:300] + b"\x00" * 64)
    return paths + [folder / name for name in ("big.jpg", "big.png", "cmyk.jpg", "damaged.jpg")]


def test_encoding_with_device_decoding_agrees_with_worker_decoding(tiny_checkpoint, mixed_folder):
    loaded = load_model(str(tiny_checkpoint))
    workers = encode_paths(mixed_folder, loaded, batch_size=4, workers=0, progress=False)
    device = encode_paths(mixed_folder, loaded, batch_size=4, workers=0, progress=False, jpeg_decode="device")
    damaged = mixed_folder.index(mixed_folder[-1])
    assert [i for i, _ in device.failures] == [i for i, _ in workers.failures] == [damaged]
    assert device.failures[0][1] == workers.failures[0][1]  # Pillow words the reason in both
    assert device.ok_indices.tolist() == workers.ok_indices.tolist()  # catalogue order: same vector ids
    assert device.sha256 == workers.sha256
    for i, ours, theirs in zip(workers.ok_indices, device.embeddings, workers.embeddings):
        assert float(ours @ theirs) > 0.99, mixed_folder[i].name
    assert device.timings["device_decode_s"] > 0 and workers.timings["device_decode_s"] == 0
    with pytest.raises(ValueError, match="jpeg_decode"):
        encode_paths(mixed_folder, loaded, workers=0, progress=False, jpeg_decode="gpu")


def test_a_compiled_model_embeds_like_the_eager_one(tiny_checkpoint, mixed_folder):
    # aot_eager traces the model through dynamo and AOT autograd as inductor does, without needing
    # a C++ compiler for the generated kernels.
    loaded = load_model(str(tiny_checkpoint))
    compiled_plan = plan_inference(CPU, compile_backend="aot_eager")
    assert compiled_plan.describe()["compiled"] == "aot_eager"
    assert "compiled" not in plan_inference(CPU).describe()
    images = torch.randn(5, 3, 64, 64)
    eager = embed_batch(prepare_model(loaded.model, plan_inference(CPU)), images, plan_inference(CPU))
    compiled = embed_batch(prepare_model(loaded.model, compiled_plan), images, compiled_plan)
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    # 13 photos in batches of 4: the last, smaller batch is compiled again, not refused
    result = encode_paths(mixed_folder, loaded, batch_size=4, workers=0, progress=False, plan=compiled_plan)
    reference = encode_paths(mixed_folder, loaded, batch_size=4, workers=0, progress=False)
    np.testing.assert_allclose(result.embeddings, reference.embeddings, atol=1e-5)
    assert result.timings["compiled"] == "aot_eager"


def test_the_indexer_cli_takes_both_options(tmp_path, tiny_checkpoint, mixed_folder):
    from indexer.__main__ import main
    from indexer.manifest import read_manifest

    out = tmp_path / "idx"
    assert main(["build", "--images", str(mixed_folder[0].parent), "--out", str(out), "--model", str(tiny_checkpoint),
                 "--device", "cpu", "--workers", "0", "--quiet", "--jpeg-decode", "device"]) == 0
    _, manifest = read_manifest(out)
    assert manifest.counts.vectors == len(mixed_folder) - 1  # all but the damaged photo
    assert manifest.counts.skipped == 1
    with pytest.raises(SystemExit):
        main(["build", "--images", str(mixed_folder[0].parent), "--out", str(out), "--jpeg-decode", "gpu"])
