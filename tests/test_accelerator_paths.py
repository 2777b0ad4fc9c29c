"""The GPU code paths, exercised on the CPU: bf16 autocast, channels_last planning, and the
FAISS placement logic (with faiss' GPU entry points stood in for where no GPU exists)."""
from __future__ import annotations

import csv

import faiss
import numpy as np
import pytest
import torch

from model import load_model
from model.inference import embed_batch, plan_inference, prepare_model
from indexer.stores import faiss_placement as placement
from service.engine import SearchEngine


def test_plans_follow_the_device():
    gpu = plan_inference(torch.device("cuda"))
    assert (gpu.bf16, gpu.channels_last) == (True, True)
    assert gpu.describe() == {"device": "cuda", "precision": "bf16", "memory_format": "channels_last"}
    cpu = plan_inference(torch.device("cpu"))
    assert (cpu.bf16, cpu.channels_last) == (False, True)  # measured faster on the CPU too
    assert plan_inference(torch.device("cuda"), "fp32").bf16 is False
    assert plan_inference(torch.device("cpu"), "bf16").bf16 is True
    with pytest.raises(ValueError, match="precision"):
        plan_inference(torch.device("cpu"), "fp8")


def test_bf16_embeddings_stay_close_to_fp32(tiny_checkpoint):
    model = load_model(str(tiny_checkpoint)).model
    images = torch.randn(4, 3, 64, 64)
    fp32 = embed_batch(prepare_model(model, plan_inference(torch.device("cpu"))), images, plan_inference(torch.device("cpu")))
    bf16_plan = plan_inference(torch.device("cpu"), "bf16")
    bf16 = embed_batch(prepare_model(model, bf16_plan), images, bf16_plan)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape == (4, 32)
    assert np.allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-3)
    cosine = (fp32 * bf16).sum(axis=1)
    assert (cosine > 0.98).all() and not np.array_equal(fp32, bf16)  # really computed in bf16


def test_channels_last_gives_the_same_embeddings(tiny_checkpoint):
    from dataclasses import replace

    model = load_model(str(tiny_checkpoint)).model
    images = torch.randn(2, 3, 64, 64)
    cl_plan = plan_inference(torch.device("cpu"))
    plan = replace(cl_plan, channels_last=False)
    plain = embed_batch(prepare_model(model, plan), images, plan)
    channels_last = embed_batch(prepare_model(model, cl_plan), images, cl_plan)
    assert np.allclose(plain, channels_last, atol=1e-5)


def test_faiss_cpu_build_keeps_the_index_on_the_cpu():
    index = faiss.IndexFlatIP(8)
    placed, where = placement.place_index(index, "auto")
    assert placed is index and where.startswith("cpu (")
    assert placement.place_index(index, "cpu")[1] == "cpu (as configured)"
    with pytest.raises(RuntimeError, match="asked to run on the GPU"):
        placement.place_index(index, "gpu")
    with pytest.raises(ValueError):
        placement.place_index(index, "tpu")


class _RecordingGpuIndex:
    """Stands in for faiss' GPU index: answers like the CPU index and counts its searches."""

    def __init__(self, cpu_index):
        self.cpu_index, self.searches = cpu_index, 0
        self.ntotal, self.d = cpu_index.ntotal, cpu_index.d

    def search(self, x, k, params=None):
        assert params is None, "ID selectors must not be sent to the GPU index"
        self.searches += 1
        return self.cpu_index.search(x, k)


@pytest.fixture
def fake_gpu(monkeypatch):
    made = []

    def to_gpus(index):
        made.append(_RecordingGpuIndex(index))
        return made[-1]

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus, raising=False)
    return made


def test_with_a_gpu_unfiltered_searches_use_it_and_filtered_ones_the_cpu(fake_gpu, tiny_index, synthetic_catalog):
    engine = SearchEngine.load(tiny_index, device="cpu", index_device="auto")
    assert engine.index_placement == "gpu (1 GPU)"
    assert engine.describe()["index"]["placement"] == "gpu (1 GPU)"
    with synthetic_catalog.open() as handle:
        row = next(csv.DictReader(handle))
    photo = (synthetic_catalog.parent / row["path"]).read_bytes()
    hits, _ = engine.search(photo, k=3)
    assert hits[0].item_id == row["item_id"] and fake_gpu[0].searches == 1
    filtered, _ = engine.search(photo, k=2, category=row["category"])
    assert {h.attributes["category"] for h in filtered} == {row["category"]}
    assert fake_gpu[0].searches == 1  # the filtered search went to the CPU index


def test_an_index_type_without_gpu_support_falls_back_to_the_cpu(monkeypatch, tiny_index):
    def refuse(index):
        raise RuntimeError("Error in index_cpu_to_gpu: This index type is not implemented on GPU.")

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", refuse, raising=False)
    engine = SearchEngine.load(tiny_index, device="cpu")
    assert engine.index_placement.startswith("cpu (") and "not implemented on GPU" in engine.index_placement
    with pytest.raises(RuntimeError, match="cannot run on the GPU"):
        SearchEngine.load(tiny_index, device="cpu", index_device="gpu")


def test_service_in_bf16_still_finds_catalogue_photos(tiny_index, synthetic_catalog):
    engine = SearchEngine.load(tiny_index, device="cpu", precision="bf16")
    assert engine.describe()["model"]["precision"] == "bf16"
    with synthetic_catalog.open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows[::6]:
        hits, _ = engine.search((synthetic_catalog.parent / row["path"]).read_bytes(), k=1)
        assert hits[0].item_id == row["item_id"]
