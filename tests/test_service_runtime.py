"""The running service: micro-batching, backpressure, hot reload, admin token, metrics, request ids,
CORS and internal errors, against a real uvicorn server where sockets and concurrency matter."""
from __future__ import annotations

import asyncio
import csv
import json
import logging
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from demo.synth import generate_catalog
from indexer.build import BuildOptions, build_index
from indexer.layout import FAISS_FILE, resolve_version_dir
from model import build_from_backbone, load_model, save_checkpoint
from model.inference import plan_inference
from service.app import create_app
from service.batching import MicroBatcher
from model.inference import PhotoEncoder
from service.settings import Settings

from .conftest import TINY_PREP
from .live_server import serve_in_thread

TOKEN = "test-admin-token-0123456789"


def _rows(csv_path: Path) -> list[dict]:
    with csv_path.open() as handle:
        return list(csv.DictReader(handle))


def _photo(csv_path: Path, row: dict) -> bytes:
    return (csv_path.parent / row["path"]).read_bytes()


def _build(out: Path, catalog: Path, checkpoint: Path) -> Path:
    return build_index(BuildOptions(out=out, catalog=catalog, model_spec=str(checkpoint), batch_size=8,
                                    device="cpu", workers=0, progress=False))


@pytest.fixture
def index_copy(tmp_path, tiny_index) -> Path:
    target = tmp_path / "idx"
    shutil.copytree(tiny_index, target, symlinks=True)
    return target


@pytest.fixture(scope="module")
def second_catalog(tmp_path_factory) -> Path:
    """Six other items, with ids of their own ("new-sku-...")."""
    csv_path = generate_catalog(tmp_path_factory.mktemp("catalog2"), n_items=6, photos_per_item=1, size=96, seed=99)
    rows = _rows(csv_path)
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "item_id": "new-" + row["item_id"]} for row in rows)
    return csv_path


def _other_checkpoint(path: Path, dim: int = 32) -> Path:
    """A tiny model with other weights than tiny_checkpoint (which is built deterministically)."""
    model = build_from_backbone("resnet18", "none", dim=dim, preprocessing=TINY_PREP)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return save_checkpoint(model, path)


def _search(base: str, photo: bytes, **params) -> httpx2.Response:
    return httpx2.post(f"{base}/search", params=params, files={"image": ("p.jpg", photo, "image/jpeg")}, timeout=60)


# --- micro-batching -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedder(tiny_checkpoint) -> PhotoEncoder:
    return PhotoEncoder(load_model(str(tiny_checkpoint)), plan_inference(torch.device("cpu")))


def test_concurrent_embeds_share_forward_passes_and_match_single_ones(embedder, synthetic_catalog):
    rows = _rows(synthetic_catalog)
    tensors = [embedder.decode(_photo(synthetic_catalog, row)) for row in rows[:12]]
    alone = [embedder.embed(t.unsqueeze(0)) for t in tensors]
    sizes: list[int] = []
    batcher = MicroBatcher(max_size=8, max_wait_ms=50, on_batch=lambda size, _ms: sizes.append(size))

    async def all_at_once():
        return await asyncio.gather(*(batcher.embed(embedder, t) for t in tensors))

    try:
        results = asyncio.run(all_at_once())
    finally:
        batcher.close()
    assert sum(sizes) == 12 and max(sizes) > 1 and max(sizes) <= 8
    for result, single in zip(results, alone):
        np.testing.assert_allclose(result.vector, single, atol=1e-5)
        assert result.batch_size in sizes


def test_jobs_of_two_models_are_never_batched_together(embedder, synthetic_catalog, tmp_path):
    other = PhotoEncoder(load_model(str(_other_checkpoint(tmp_path / "other.safetensors"))),
                     plan_inference(torch.device("cpu")))
    tensor = embedder.decode(_photo(synthetic_catalog, _rows(synthetic_catalog)[0]))
    batcher = MicroBatcher(max_size=16, max_wait_ms=50)

    async def interleaved():
        return await asyncio.gather(*(batcher.embed(embedder if i % 2 else other, tensor) for i in range(6)))

    try:
        results = asyncio.run(interleaved())
    finally:
        batcher.close()
    mine, theirs = embedder.embed(tensor.unsqueeze(0)), other.embed(tensor.unsqueeze(0))
    assert not np.allclose(mine, theirs, atol=1e-3)
    for i, result in enumerate(results):
        np.testing.assert_allclose(result.vector, mine if i % 2 else theirs, atol=1e-5)


def test_a_failing_forward_pass_fails_its_requests_and_the_worker_lives(embedder, synthetic_catalog):
    good = embedder.decode(_photo(synthetic_catalog, _rows(synthetic_catalog)[0]))
    wrong_shape = torch.zeros(3, 5)  # cannot go through a conv net
    batcher = MicroBatcher(max_size=1)

    async def one(tensor):
        return await batcher.embed(embedder, tensor)

    try:
        with pytest.raises(RuntimeError):
            asyncio.run(one(wrong_shape))
        assert asyncio.run(one(good)).vector.shape == (1, 32)
    finally:
        batcher.close()


# --- backpressure ---------------------------------------------------------------------------------

def test_past_max_in_flight_searches_get_503_with_retry_after(tiny_index, synthetic_catalog):
    app = create_app(Settings(index=tiny_index, device="cpu", max_in_flight=1, reload_poll_s=0))
    photo = _photo(synthetic_catalog, _rows(synthetic_catalog)[0])
    with serve_in_thread(app) as base:
        port = int(base.rsplit(":", 1)[1])
        # A client that sends its headers and a first part of its upload, then stalls: in flight.
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                        b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; "
                        b"filename=\"a.jpg\"\r\n\r\n" + photo[:100])
        capacity = app.state.services.capacity
        deadline = time.monotonic() + 10
        while capacity.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert capacity.in_flight == 1
        refused = _search(base, photo)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1" and "capacity" in refused.json()["detail"]
        assert httpx2.get(f"{base}/healthz").status_code == 200  # only searches are limited
        stalled.close()
        deadline = time.monotonic() + 10
        while capacity.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _search(base, photo).status_code == 200
        assert app.state.services.live_numbers()["rejected"] == 1
        assert "snap2shop_searches_rejected_total 1.0" in httpx2.get(f"{base}/metrics").text


# --- hot reload -----------------------------------------------------------------------------------

def test_watcher_swaps_in_a_rebuilt_index(index_copy, second_catalog, synthetic_catalog, tiny_checkpoint):
    app = create_app(Settings(index=index_copy, device="cpu", reload_poll_s=0.1))
    new_row = _rows(second_catalog)[2]
    with TestClient(app) as client:
        old_version = client.get("/readyz").json()["index_version"]
        assert new_row["item_id"] not in {r["item_id"] for r in client.post(
            "/search?k=20", files={"image": ("a.jpg", _photo(second_catalog, new_row))}).json()["results"]}
        new_version = _build(index_copy, second_catalog, tiny_checkpoint).name
        deadline = time.monotonic() + 20
        while client.get("/readyz").json()["index_version"] != new_version and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = client.get("/readyz").json()
        assert ready["index_version"] == new_version and ready["published_version"] == new_version
        assert ready["last_reload"]["reloaded"] and ready["last_reload"]["previous"] == old_version
        body = client.post("/search", files={"image": ("a.jpg", _photo(second_catalog, new_row))}).json()
        assert body["index_version"] == new_version and body["results"][0]["item_id"] == new_row["item_id"]
        assert client.get("/healthz").json()["index"]["items"] == 6


def test_no_request_fails_or_mixes_versions_while_the_index_is_swapped(index_copy, second_catalog,
                                                                      synthetic_catalog, tiny_checkpoint):
    items_of = {resolve_version_dir(index_copy).name: {r["item_id"] for r in _rows(synthetic_catalog)}}
    app = create_app(Settings(index=index_copy, device="cpu", reload_poll_s=0.05))
    photos = [_photo(synthetic_catalog, r) for r in _rows(synthetic_catalog)[:4]]
    answers: list[tuple[int, dict]] = []
    stop = threading.Event()

    def keep_searching(worker: int) -> None:
        with httpx2.Client(timeout=60) as client:
            i = 0
            while not stop.is_set():
                response = client.post(f"{base}/search", files={"image": ("a.jpg", photos[(worker + i) % 4])})
                answers.append((response.status_code, response.json()))
                i += 1

    with serve_in_thread(app) as base, ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(keep_searching, w) for w in range(4)]
        for catalog in (second_catalog, synthetic_catalog, second_catalog):
            version = _build(index_copy, catalog, tiny_checkpoint).name
            items_of[version] = {r["item_id"] for r in _rows(catalog)}
            deadline = time.monotonic() + 20
            while httpx2.get(f"{base}/readyz").json()["index_version"] != version and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
        stop.set()
        for worker in workers:
            worker.result()
    assert len(answers) > 20
    assert [status for status, _ in answers if status != 200] == []
    served_versions = {body["index_version"] for _, body in answers}
    assert len(served_versions) >= 3
    for _, body in answers:  # every answer comes wholly from the version it names
        assert {r["item_id"] for r in body["results"]} <= items_of[body["index_version"]]


def test_reload_to_an_index_of_another_model_loads_that_model(index_copy, second_catalog, tmp_path):
    other = _other_checkpoint(tmp_path / "other.safetensors", dim=16)
    app = create_app(Settings(index=index_copy, device="cpu", reload_poll_s=0, admin_token=TOKEN))
    row = _rows(second_catalog)[1]
    with TestClient(app) as client:
        _build(index_copy, second_catalog, other)
        answer = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200 and answer.json()["reloaded"] is True
        health = client.get("/healthz").json()
        assert health["model"]["dim"] == 16 and health["model"]["spec"].endswith("other.safetensors")
        top = client.post("/search", files={"image": ("a.jpg", _photo(second_catalog, row))}).json()["results"][0]
        assert top["item_id"] == row["item_id"] and top["score"] == pytest.approx(1.0, abs=1e-4)


def test_a_broken_new_version_is_refused_and_the_old_one_keeps_serving(index_copy, second_catalog,
                                                                       synthetic_catalog, tiny_checkpoint):
    app = create_app(Settings(index=index_copy, device="cpu", reload_poll_s=0, admin_token=TOKEN))
    row = _rows(synthetic_catalog)[0]
    with TestClient(app) as client:
        old_version = client.get("/readyz").json()["index_version"]
        broken = _build(index_copy, second_catalog, tiny_checkpoint)
        (broken / FAISS_FILE).write_bytes(b"not a faiss index")
        answer = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 409
        assert "corrupt" in answer.json()["error"] and answer.json()["version"] == old_version
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["index_version"] == old_version
        assert ready["published_version"] == broken.name and ready["last_reload"]["error"]
        body = client.post("/search", files={"image": ("a.jpg", _photo(synthetic_catalog, row))}).json()
        assert body["results"][0]["item_id"] == row["item_id"]
        assert 'snap2shop_index_reloads_total{outcome="failed"} 1.0' in client.get("/metrics").text


def test_admin_endpoints_need_the_token(tiny_index):
    with TestClient(create_app(Settings(index=tiny_index, device="cpu", reload_poll_s=0))) as client:
        disabled = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert disabled.status_code == 403 and "SNAP2SHOP_ADMIN_TOKEN" in disabled.json()["detail"]
    with TestClient(create_app(Settings(index=tiny_index, device="cpu", reload_poll_s=0, admin_token=TOKEN))) as client:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            refused = client.post("/admin/reload", headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        same = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert same.status_code == 200 and same.json()["reloaded"] is False
        forced = client.post("/admin/reload?force=true", headers={"Authorization": f"Bearer {TOKEN}"})
        assert forced.json()["reloaded"] is True and forced.json()["version"] == forced.json()["previous"]


def test_settings_never_show_the_admin_token():
    settings = Settings.from_env({"SNAP2SHOP_ADMIN_TOKEN": TOKEN, "SNAP2SHOP_CORS_ORIGINS": "https://a.example, https://b.example"})
    assert settings.admin_token == TOKEN and TOKEN not in repr(settings)
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    with pytest.raises(ValueError, match="16 characters"):
        Settings(admin_token="short")


# --- observability --------------------------------------------------------------------------------

def test_metrics_and_stats_report_requests_steps_queue_and_index(tiny_index, synthetic_catalog):
    photo = _photo(synthetic_catalog, _rows(synthetic_catalog)[0])
    with TestClient(create_app(Settings(index=tiny_index, device="cpu", reload_poll_s=0))) as client:
        for _ in range(3):
            assert client.post("/search", files={"image": ("a.jpg", photo)}).status_code == 200
        assert client.post("/search", files={"image": ("a.jpg", b"not a photo")}).status_code == 400
        client.get("/items/nope")
        text = client.get("/metrics").text
        version = client.get("/readyz").json()["index_version"]
        stats = client.get("/stats").json()
    assert 'snap2shop_http_requests_total{method="POST",route="/search",status="200"} 3.0' in text
    assert 'snap2shop_http_requests_total{method="POST",route="/search",status="400"} 1.0' in text
    assert 'snap2shop_http_requests_total{method="GET",route="/items/{item_id}",status="404"} 1.0' in text
    for step in ("read", "decode", "queue", "embed", "search", "metadata"):
        assert f'snap2shop_search_step_duration_seconds_count{{step="{step}"}} 3.0' in text
    assert "snap2shop_embed_queue_depth 0.0" in text and "snap2shop_searches_in_flight" in text
    assert "snap2shop_index_vectors 24.0" in text and "snap2shop_index_items 12.0" in text
    assert 'snap2shop_index_info{checksum="' in text and f'version="{version}"' in text
    assert stats["steps_ms"]["embed"]["count"] == 3 and stats["steps_ms"]["total"]["p99_ms"] > 0
    assert stats["index_version"] == version and stats["queue_depth"] == 0 and stats["mean_batch_size"] == 1


def test_request_ids_are_returned_and_logged(tiny_index, synthetic_catalog, caplog):
    photo = _photo(synthetic_catalog, _rows(synthetic_catalog)[0])
    with TestClient(create_app(Settings(index=tiny_index, device="cpu", reload_poll_s=0))) as client:
        with caplog.at_level(logging.INFO, logger="snap2shop.access"):
            mine = client.post("/search", files={"image": ("a.jpg", photo)}, headers={"X-Request-ID": "shop-42.a"})
            hostile = client.get("/healthz", headers={"X-Request-ID": "x" * 500})
            fresh = client.get("/healthz")
    assert mine.headers["x-request-id"] == "shop-42.a"
    assert len(hostile.headers["x-request-id"]) == 32 and hostile.headers["x-request-id"] != fresh.headers["x-request-id"]
    logged = {r.request_id: r for r in caplog.records if hasattr(r, "request_id")}
    assert logged["shop-42.a"].route == "/search" and logged["shop-42.a"].status == 200
    assert set(logged["shop-42.a"].timings_ms) >= {"decode_ms", "embed_ms", "search_ms", "batch_size"}
    assert fresh.headers["x-request-id"] in logged


def test_json_log_lines_carry_the_request_fields():
    from service.observability import JsonLogFormatter

    record = logging.LogRecord("snap2shop.access", logging.INFO, __file__, 1, "GET %s", ("/healthz",), None)
    record.request_id, record.status = "abc", 200
    line = json.loads(JsonLogFormatter().format(record))
    assert line["message"] == "GET /healthz" and line["request_id"] == "abc" and line["status"] == 200
    assert line["level"] == "info" and line["logger"] == "snap2shop.access"


# --- security and errors --------------------------------------------------------------------------

def test_cors_is_closed_by_default_and_opens_to_configured_origins(tiny_index):
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(Settings(index=tiny_index, device="cpu", reload_poll_s=0))) as client:
        assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": "https://evil.example"}).headers
        assert "access-control-allow-origin" not in client.options("/search", headers=preflight).headers
    app = create_app(Settings(index=tiny_index, device="cpu", reload_poll_s=0, cors_origins=("https://shop.example",)))
    with TestClient(app) as client:
        allowed = client.options("/search", headers=preflight)
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://shop.example"
        other = client.options("/search", headers=preflight | {"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        assert client.get("/healthz", headers={"Origin": "https://shop.example"}).headers[
            "access-control-allow-origin"] == "https://shop.example"


@pytest.mark.parametrize("item_id", ["../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd",
                                     "....//....//etc/passwd", "/etc/passwd", "..\\..\\etc\\passwd", "%00", "a%00.jpg"])
def test_item_images_cannot_reach_files_outside_the_index(tiny_index, item_id):
    with TestClient(create_app(Settings(index=tiny_index, device="cpu", reload_poll_s=0))) as client:
        response = client.get(f"/items/{item_id}/image")
    assert response.status_code == 404
    assert b"root:" not in response.content and response.headers["content-type"] == "application/json"


def test_an_internal_error_is_a_500_with_a_request_id_and_no_traceback(tiny_index, synthetic_catalog, monkeypatch, caplog):
    photo = _photo(synthetic_catalog, _rows(synthetic_catalog)[0])
    app = create_app(Settings(index=tiny_index, device="cpu", reload_poll_s=0))
    with TestClient(app, raise_server_exceptions=False) as client:
        engine = app.state.services.holder.engine

        def explode(*args, **kwargs):
            raise RuntimeError("secret internal detail")

        monkeypatch.setattr(engine, "search_vector", explode)
        with caplog.at_level(logging.ERROR, logger="snap2shop.service"):
            response = client.post("/search", files={"image": ("a.jpg", photo)})
        monkeypatch.undo()
        assert response.status_code == 500
        body = response.json()
        assert "secret" not in response.text and "Traceback" not in response.text
        assert body["request_id"] and response.headers["x-request-id"] == body["request_id"]
        assert any(getattr(r, "request_id", None) == body["request_id"] and r.exc_info for r in caplog.records)
        assert client.post("/search", files={"image": ("a.jpg", photo)}).status_code == 200
