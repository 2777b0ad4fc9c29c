"""The search page in a real headless Chromium (Debian's, driven by Playwright), against a real
uvicorn process. Screenshots of the desktop and phone layouts go to test-artifacts/."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx2
import pytest

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("SNAP2SHOP_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As the workplace's probe found: headless, no sandbox as root, and no background calls home
# (the network is closed and would refuse them many at a time).
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if CHROMIUM is None:
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; .ci/run installs Debian's chromium", pytrace=False)
    pytest.skip("chromium not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tiny_index, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("web") / "service.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "service", "--index", str(tiny_index), "--port", str(port),
                                    "--device", "cpu"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(log_path.read_text())
        try:
            if httpx2.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx2.TransportError:
            time.sleep(0.3)
    yield base
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server + "/")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def rows(synthetic_catalog) -> list[dict]:
    with synthetic_catalog.open() as handle:
        return list(csv.DictReader(handle))


def _upload(page, path: Path):
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#results li")


def test_catalogue_photo_shows_its_item_first(page, synthetic_catalog, rows):
    row = rows[5]
    _upload(page, synthetic_catalog.parent / row["path"])
    first = page.locator("#results li").first
    assert first.get_attribute("data-item-id") == row["item_id"]
    assert row["title"] in first.inner_text()
    assert first.locator(".score").inner_text() == "1.000"
    page.wait_for_function("() => document.querySelector('#results li img').naturalWidth > 0")
    assert page.locator("#results li").count() == 10
    assert page.locator("#preview").is_visible()
    assert "whole photo" in page.locator("#status").inner_text()


def test_drawn_box_is_sent_in_photo_pixels(page, synthetic_catalog, rows):
    _upload(page, synthetic_catalog.parent / rows[0]["path"])
    image = page.locator("#query-image").bounding_box()
    with page.expect_request(lambda r: r.url.startswith(page.url.rstrip("/") + "/search") and "box=" in r.url) as req:
        page.mouse.move(image["x"] + 0.10 * image["width"], image["y"] + 0.20 * image["height"])
        page.mouse.down()
        page.mouse.move(image["x"] + 0.40 * image["width"], image["y"] + 0.50 * image["height"], steps=5)
        page.mouse.move(image["x"] + 0.60 * image["width"], image["y"] + 0.90 * image["height"], steps=5)
        page.mouse.up()
    box = [int(v) for v in parse_qs(urlparse(req.value.url).query)["box"][0].split(",")]
    # The catalogue photo is 96x96: the box comes in its own pixels, not in screen pixels.
    expected = [0.10 * 96, 0.20 * 96, 0.60 * 96, 0.90 * 96]
    assert all(abs(got - want) <= 2 for got, want in zip(box, expected)), box
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('selected region')")
    assert page.locator("#box").is_visible()
    assert page.locator("#clear-box-button").is_enabled()


def test_region_can_be_chosen_with_the_keyboard(page, synthetic_catalog, rows):
    _upload(page, synthetic_catalog.parent / rows[1]["path"])
    page.focus("#box-layer")
    page.keyboard.press("s")
    page.keyboard.press("ArrowRight")
    with page.expect_request(lambda r: "box=" in r.url) as req:
        page.keyboard.press("Enter")
    box = [int(v) for v in parse_qs(urlparse(req.value.url).query)["box"][0].split(",")]
    step = round(96 * 0.03)
    assert box == [19 + step, 19, 77 + step, 77]


def test_text_file_gets_a_clear_message(page):
    page.set_input_files("#file-input", files=[{"name": "notes.jpg", "mimeType": "image/jpeg",
                                                 "buffer": b"these are my shopping notes, not a photo"}])
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "not an image" in error.inner_text()
    assert page.locator("#results li").count() == 0


def test_category_filter_and_k_on_the_page(page, synthetic_catalog, rows):
    category = rows[0]["category"]
    n_items = len({r["item_id"] for r in rows if r["category"] == category})
    page.wait_for_function("() => document.querySelectorAll('#category-select option').length > 1")
    page.select_option("#k-select", "5")
    _upload(page, synthetic_catalog.parent / rows[4]["path"])
    with page.expect_request(lambda r: "category=" in r.url) as req:
        page.select_option("#category-select", category)
    assert parse_qs(urlparse(req.value.url).query)["category"] == [category]
    assert parse_qs(urlparse(req.value.url).query)["k"] == ["5"]
    page.wait_for_function(f"() => document.querySelector('#status').textContent.startsWith('{min(5, n_items)} items')")
    texts = page.locator("#results li .sub").all_inner_texts()
    assert texts and all(text.endswith(category) for text in texts)


def test_layouts_at_desktop_and_phone_width(page, synthetic_catalog, rows):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _upload(page, synthetic_catalog.parent / rows[7]["path"])
    page.wait_for_function("() => [...document.querySelectorAll('#results li img')].every(i => i.complete)")
    page.screenshot(path=str(ARTIFACTS / "search-desktop.png"), full_page=True)
    desktop_columns = _columns(page)

    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(200)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sticks out sideways
    cards = page.locator("#results li")
    assert cards.count() == 10 and cards.first.is_visible()
    assert _columns(page) == 2 < desktop_columns
    for i in range(cards.count()):
        box = cards.nth(i).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    page.screenshot(path=str(ARTIFACTS / "search-phone.png"), full_page=True)
    assert (ARTIFACTS / "search-desktop.png").stat().st_size > 10_000
    assert (ARTIFACTS / "search-phone.png").stat().st_size > 10_000


def _columns(page) -> int:
    return len(set(page.evaluate("[...document.querySelectorAll('#results li')].map(li => li.getBoundingClientRect().left)")))


def test_page_uses_no_external_resources(page, server):
    html = httpx2.get(server + "/").text
    assert "http://" not in html and "https://" not in html
    resources = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(url.startswith(server) for url in resources), resources


def test_dropping_a_photo_searches_it(page, synthetic_catalog, rows):
    row = rows[9]
    data = list((synthetic_catalog.parent / row["path"]).read_bytes())
    transfer = page.evaluate_handle(
        """(bytes) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], "dropped.jpg", { type: "image/jpeg" }));
            return dt;
        }""", data)
    page.dispatch_event("#drop-zone", "dragenter", {"dataTransfer": transfer})
    assert "dragging" in page.get_attribute("#drop-zone", "class")
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#results li")
    assert page.locator("#results li").first.get_attribute("data-item-id") == row["item_id"]
    assert "dragging" not in page.get_attribute("#drop-zone", "class")


def test_pickers_are_reachable_by_keyboard(page):
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.id")
    assert focused == "file-input"
    assert page.get_attribute("#camera-input", "capture") == "environment"
    assert page.get_attribute("#file-input", "accept") == "image/*"


@pytest.fixture(scope="module")
def adapted_server(tmp_path_factory):
    """The service over an index of a model adapted to a small catalogue (its query side finds garments)."""
    from demo.synth import generate_catalog
    from indexer.build import BuildOptions, build_index
    from model.training.adapt import AdaptConfig, adapt

    work = tmp_path_factory.mktemp("adapted-web")
    images = generate_catalog(work / "shop", n_items=16, photos_per_item=1, size=96, seed=3).parent / "images"
    model = work / "a.safetensors"
    adapt(AdaptConfig(data=images, format="catalog", out=model, cache=work / "cache", input_size=64, query_size=96, view_size=96,
                      views=1, dim=16, batch_size=8, workers=0, progress=False))
    build_index(BuildOptions(out=work / "idx", images=images, model_spec=str(model), device="cpu", workers=0,
                             progress=False))
    port = free_port()
    with open(work / "service.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "service", "--index", str(work / "idx"), "--port",
                                    str(port), "--device", "cpu"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail((work / "service.log").read_text())
        try:
            if httpx2.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx2.TransportError:
            time.sleep(0.3)
    yield base, images
    process.terminate()
    process.wait(timeout=30)


def test_the_garment_the_model_found_is_drawn_for_adjusting(browser, adapted_server, tmp_path):
    from PIL import Image

    base, images = adapted_server
    street = Image.new("RGB", (300, 240), (90, 95, 100))
    street.paste(Image.open(sorted(images.iterdir())[0]).convert("RGB").resize((120, 120)), (150, 60))
    photo = tmp_path / "street.jpg"
    street.save(photo, quality=92)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base + "/")
    _upload(page, photo)
    box = page.locator("#box")
    box.wait_for(state="visible")
    assert "found" in (box.get_attribute("class") or "")
    assert "garment found" in page.locator("#status").inner_text()
    # The found region is where adjusting starts: an arrow key turns it into the shopper's own box,
    # and the next search sends it.
    page.focus("#box-layer")
    with page.expect_request(lambda r: "/search" in r.url and "box=" in r.url):
        page.keyboard.press("ArrowRight")
        page.keyboard.press("Enter")
    assert "found" not in (box.get_attribute("class") or "")
    context.close()
    assert not errors, errors
