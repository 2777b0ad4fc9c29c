"""Hostile and odd uploads to POST /search: each gets a 4xx whose JSON `detail` is one sentence
naming the problem, or a correct answer; and after every test, `still_serving` checks that a
normal search still finds its item. docs/uploads.md describes the same cases for people.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from PIL import Image

from model.preprocessing import SUPPORTED_FORMATS
from service.app import create_app
from service.settings import Settings
from service.uploads import explain_validation_error

MAX_UPLOAD = 200_000
BOUNDARY = b"snap2shop-test-boundary"


@dataclass(frozen=True)
class CataloguePhoto:
    item_id: str
    data: bytes

    @property
    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.data)).convert("RGB")


@pytest.fixture(scope="module")
def client(tiny_index):
    app = create_app(Settings(index=tiny_index, device="cpu", max_upload_bytes=MAX_UPLOAD))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def catalogue(synthetic_catalog) -> list[CataloguePhoto]:
    with synthetic_catalog.open() as handle:
        rows = list(csv.DictReader(handle))
    return [CataloguePhoto(row["item_id"], (synthetic_catalog.parent / row["path"]).read_bytes()) for row in rows]


@pytest.fixture(autouse=True)
def still_serving(client, catalogue):
    yield
    reference = catalogue[0]
    response = client.post("/search?k=1", files={"image": ("check.jpg", reference.data, "image/jpeg")})
    assert response.status_code == 200, f"a normal search failed after this case: {response.text}"
    assert response.json()["results"][0]["item_id"] == reference.item_id


# --------------------------------------------------------------------------------------------
# helpers


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _search(client, data: bytes, *, filename: str = "photo.jpg", content_type: str = "image/jpeg",
            query: str = ""):
    return client.post(f"/search{query}", files={"image": (filename, data, content_type)})


def _part(payload: bytes, disposition: bytes = b'form-data; name="image"; filename="photo.jpg"',
          content_type: bytes | None = b"image/jpeg") -> bytes:
    headers = b"Content-Disposition: " + disposition + b"\r\n"
    if content_type is not None:
        headers += b"Content-Type: " + content_type + b"\r\n"
    return b"--" + BOUNDARY + b"\r\n" + headers + b"\r\n" + payload + b"\r\n"


def _post_parts(client, *parts: bytes, query: str = ""):
    body = b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"
    return client.post(f"/search{query}", content=body,
                       headers={"content-type": "multipart/form-data; boundary=" + BOUNDARY.decode()})


def _refused(response, status: int, *phrases: str) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str), f"detail must be one sentence, got {detail!r}"
    for phrase in phrases:
        assert phrase in detail, f"{phrase!r} not in {detail!r}"
    return detail


def _answer(response, k: int = 3) -> list[dict]:
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    ids = [r["item_id"] for r in results]
    scores = [r["score"] for r in results]
    assert len(ids) == k and len(set(ids)) == k
    assert scores == sorted(scores, reverse=True) and all(-1.001 <= s <= 1.001 for s in scores)
    return results


def _finds_first(response, item_id: str) -> float:
    top = _answer(response)[0]
    assert top["item_id"] == item_id
    return top["score"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _with_png_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG (or APNG) with its IHDR claiming width x height: the pixel data no longer matches."""
    data = bytearray(png)
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def _png_16bit_rgb(img: Image.Image) -> bytes:
    """Pillow writes 16-bit PNGs only in greyscale, so the colour one is assembled by hand."""
    rgb16 = np.asarray(img, dtype=np.uint16) * 257
    height, width, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


def _with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    data = bytearray(jpeg)
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif_with_first_frame_size(width: int, height: int) -> bytes:
    data = bytearray(_encode(Image.new("P", (4, 4)), "GIF"))
    descriptor = data.find(b"\x2c", 13)  # image separator after the header and palette
    data[descriptor + 5:descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def _animated_webp_with_canvas(width: int, height: int) -> bytes:
    frames = [Image.new("RGB", (16, 16), (200, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 200))]
    data = bytearray(_encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    vp8x = data.find(b"VP8X")
    data[vp8x + 12:vp8x + 15] = (width - 1).to_bytes(3, "little")
    data[vp8x + 15:vp8x + 18] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def _tiff_with_size(width: int, height: int) -> bytes:
    data = bytearray(_encode(Image.new("RGB", (4, 4)), "TIFF"))
    endian = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(endian + "I", data[4:8])[0]
    for index in range(struct.unpack(endian + "H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * index
        tag, kind = struct.unpack(endian + "HH", data[entry:entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = width if tag == 256 else height
            data[entry + 8:entry + 12] = (struct.pack(endian + "HH", value, 0) if kind == 3
                                          else struct.pack(endian + "I", value))
    return bytes(data)


def _psd_header() -> bytes:
    """A minimal Photoshop file: 3 channels, 8 bits, RGB, raw data."""
    return (b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 24, 32, 8, 3) + struct.pack(">III", 0, 0, 0)
            + struct.pack(">H", 0) + bytes(24 * 32 * 3))


def _exif_rotated(img: Image.Image, orientation: int, fmt: str = "JPEG", **kwargs) -> bytes:
    """The photo as a phone stores it: sensor pixels sideways, and the tag that says how to turn them."""
    sideways = img.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(sideways, fmt, exif=exif.tobytes(), **kwargs)


# --------------------------------------------------------------------------------------------
# the request itself is malformed


def test_create_app_installs_the_validation_error_handler(tiny_index):
    app = create_app(Settings(index=tiny_index, device="cpu"))
    assert app.exception_handlers.get(RequestValidationError) is explain_validation_error


def test_request_without_a_body(client):
    _refused(client.post("/search"), 422, "no body", "multipart/form-data", "`image`")


def test_form_without_the_image_field(client):
    response = _post_parts(client, _part(b"3", b'form-data; name="k"', content_type=None))
    _refused(response, 422, "no field `image`", "got `k`")


def test_photo_under_the_wrong_field_name(client, catalogue):
    response = client.post("/search", files={"picture": ("a.jpg", catalogue[0].data, "image/jpeg")})
    _refused(response, 422, "no field `image`", "got `picture`")


def test_photo_sent_as_a_text_value_is_not_echoed_back(client, catalogue):
    # A part without a filename is a text field to every multipart parser.
    response = _post_parts(client, _part(catalogue[0].data, b'form-data; name="image"'))
    _refused(response, 422, "must be a file", "filename")
    assert len(response.content) < 1000  # FastAPI's default error would quote the whole photo


def test_browser_form_with_no_file_chosen(client):
    response = _post_parts(client, _part(b"", b'form-data; name="image"; filename=""',
                                         content_type=b"application/octet-stream"))
    _refused(response, 422, "holds no file")


@pytest.mark.parametrize("content_type, body, named", [
    ("image/jpeg", None, "image/jpeg"),
    ("application/json", b'{"image": "https://example.com/a.jpg"}', "application/json"),
    ("application/x-www-form-urlencoded", b"image=photo.jpg", "application/x-www-form-urlencoded"),
    ("text/plain", b"a photo", "text/plain"),
    (None, b"some bytes", "without a Content-Type"),
], ids=["raw-jpeg", "json", "urlencoded", "text", "no-content-type"])
def test_body_that_is_not_a_multipart_form(client, catalogue, content_type, body, named):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/search", content=catalogue[0].data if body is None else body, headers=headers)
    _refused(response, 422, "expected a multipart/form-data upload", "field `image`", named)


def test_multipart_without_a_boundary(client, catalogue):
    response = client.post("/search", content=catalogue[0].data, headers={"content-type": "multipart/form-data"})
    _refused(response, 400, "boundary")


def test_garbled_multipart(client):
    response = client.post("/search", content=b"this is not what the boundary promised",
                           headers={"content-type": "multipart/form-data; boundary=" + BOUNDARY.decode()})
    _refused(response, 400, "multipart")


def test_multipart_cut_off_before_its_closing_boundary(client, catalogue):
    body = _part(catalogue[0].data)[: -len(catalogue[0].data) // 2]
    response = client.post("/search", content=body,
                           headers={"content-type": "multipart/form-data; boundary=" + BOUNDARY.decode()})
    _refused(response, 422, "cut off")


def test_several_photos_in_one_request(client, catalogue):
    response = client.post("/search", files=[("image", ("a.jpg", catalogue[0].data, "image/jpeg")),
                                             ("image", ("b.jpg", catalogue[2].data, "image/jpeg"))])
    _refused(response, 422, "one photo per request", "2 files")


def test_zero_byte_file(client):
    _refused(_search(client, b""), 400, "empty")


# --------------------------------------------------------------------------------------------
# too large: refused while streaming


def test_upload_over_the_limit(client):
    response = _search(client, b"\xff\xd8" + b"\x00" * (MAX_UPLOAD + 10))
    _refused(response, 413, str(MAX_UPLOAD))


def test_chunked_upload_over_the_limit(client):
    def chunks():
        yield _part(b"")[:-2]  # the part's headers, then its content streamed
        for _ in range(40):
            yield b"\xff" * 10_000
        yield b"\r\n--" + BOUNDARY + b"--\r\n"

    response = client.post("/search", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=" + BOUNDARY.decode()})
    _refused(response, 413, str(MAX_UPLOAD))


def _post_through_asgi(client, headers: list[tuple[bytes, bytes]], chunks) -> tuple[int, dict, int]:
    """POST /search straight into the ASGI app, counting the body chunks it pulls (TestClient
    would read a generator body whole before the app sees any of it)."""
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/search", "raw_path": b"/search", "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
             "server": ("testserver", 80), "state": {}}

    async def call() -> None:
        await client.app(scope, receive, send)

    client.portal.call(call)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled


def test_streamed_upload_is_refused_once_past_the_limit_not_after_reading_it_all(client):
    chunk_size, total_chunks = 10_000, 100  # 1 MB offered, 200 kB allowed
    chunks = iter([_part(b"")[:-2]] + [b"\xff" * chunk_size] * total_chunks)
    headers = [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)]
    status, body, pulled = _post_through_asgi(client, headers, chunks)
    assert status == 413 and str(MAX_UPLOAD) in body["detail"]
    assert pulled <= MAX_UPLOAD // chunk_size + 2 < total_chunks


def test_declared_length_over_the_limit_is_refused_before_reading_the_body(client):
    chunks = iter([b"\x00" * 1000] * 10)
    headers = [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY),
               (b"content-length", str(10 ** 9).encode())]
    status, body, pulled = _post_through_asgi(client, headers, chunks)
    assert status == 413 and str(MAX_UPLOAD) in body["detail"]
    assert pulled == 0


# --------------------------------------------------------------------------------------------
# the part's content type and file name do not matter: the bytes are sniffed


@pytest.mark.parametrize("content_type", [b"application/octet-stream", b"text/plain", b"image/png", None],
                         ids=["octet-stream", "text-plain", "wrong-image-type", "none"])
def test_real_jpeg_with_a_wrong_or_missing_content_type(client, catalogue, content_type):
    response = _post_parts(client, _part(catalogue[4].data, content_type=content_type), query="?k=3")
    _finds_first(response, catalogue[4].item_id)


@pytest.mark.parametrize("filename", [
    b"\xff\xfe\xe9t\xe9 \x81.jpg",  # not UTF-8 at all
    "фото 📷.jpg".encode(),
    b"../../etc/passwd",
    b"",
    b"no-extension",
], ids=["not-utf8", "utf8-emoji", "path-traversal", "empty", "no-extension"])
def test_odd_file_names(client, catalogue, filename):
    response = _post_parts(client, _part(catalogue[6].data, b'form-data; name="image"; filename="' + filename + b'"'),
                           query="?k=3")
    _finds_first(response, catalogue[6].item_id)


# --------------------------------------------------------------------------------------------
# not photos, disguised as .jpg


@pytest.mark.parametrize("payload, named", [
    (b"Dear shop, here is my photo.\nRegards\n", "this is plain text"),
    (b"<!DOCTYPE html><html><body><img src='a.jpg'></body></html>", "this is an HTML page"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "this is a PDF document"),
    (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 40, "this is a ZIP archive"),
    (gzip.compress(b"hello"), "this is a gzip archive"),
    (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 40, "this is a video"),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>',
     "unsupported image format SVG"),
    (b'<?xml version="1.0"?>\n<order><item>dress</item></order>', "this is an XML document"),
    (b'{"image": "https://example.com/dress.jpg"}', "this is JSON text"),
    (b"data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD", "base64"),
    (b"/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAMCAgICAgMCAgIDAwMDBAYEBAQEBAgGBgUGCQgKCgkICQkKDA8MCgsOCwkJDRENDg8QEBEQCgwSExIQEw8QEBD",
     "base64"),
    (bytes(range(256)) * 4, "not an image, or not a supported format"),
], ids=["text", "html", "pdf", "zip", "gzip", "mp4", "svg", "xml", "json", "data-url", "base64-jpeg", "random-bytes"])
def test_non_photos_are_named(client, payload, named):
    detail = _refused(_search(client, payload), 400, named)
    if "base64" not in named:
        assert "supported: JPEG, PNG" in detail


@pytest.mark.parametrize("fmt, make", [
    ("ICO", lambda img: _encode(img, "ICO")),
    ("EPS", lambda img: _encode(img, "EPS")),
    ("PSD", lambda img: _psd_header()),
    ("TGA", lambda img: _encode(img, "TGA")),
    ("JPEG2000", lambda img: _encode(img, "JPEG2000")),
    ("PPM", lambda img: _encode(img, "PPM")),
    ("PCX", lambda img: _encode(img, "PCX")),
    ("QOI", lambda img: _encode(img, "QOI")),
])
def test_unsupported_image_formats_are_named(client, catalogue, fmt, make):
    _refused(_search(client, make(catalogue[0].image)), 400, f"unsupported image format {fmt}",
             "supported: JPEG, PNG")


# --------------------------------------------------------------------------------------------
# damaged photos


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "HEIF"])
def test_truncated_photos(client, catalogue, fmt):
    data = _encode(catalogue[0].image, fmt)
    _refused(_search(client, data[: len(data) // 2]), 400, "corrupt or truncated")


def test_png_with_a_compressed_text_bomb(client):
    # 5 kB of zTXt that would inflate to 5 MB of metadata: Pillow stops at 1 MB
    png = _encode(Image.new("RGB", (8, 8), (10, 200, 10)), "PNG")
    bomb = png[:33] + _png_chunk(b"zTXt", b"note\x00\x00" + zlib.compress(b"\x00" * 5_000_000, 9)) + png[33:]
    assert len(bomb) < MAX_UPLOAD
    _refused(_search(client, bomb, filename="bomb.png"), 400, "corrupt", "too large")


def test_jpeg_with_garbage_after_its_end_marker(client, catalogue):
    data = catalogue[8].data + b"\x00garbage appended by a broken uploader\xff\xd9" * 20
    _finds_first(_search(client, data, query="?k=3"), catalogue[8].item_id)


def _exif_with_text_resolution(orientation: int) -> bytes:
    """EXIF whose XResolution is stored as text instead of a fraction, as some editors write it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x011A] = 72.0
    raw = bytearray(exif.tobytes())
    entry = raw.find(b"\x01\x1a\x00\x05")  # big-endian tag 0x011A, type RATIONAL
    raw[entry + 2:entry + 4] = b"\x00\x02"  # ... now type ASCII
    return bytes(raw)


def test_jpeg_with_damaged_exif_is_still_turned_upright(client, catalogue):
    # Pillow's ImageOps.exif_transpose raised TypeError on this EXIF: a 500 for a good photo.
    photo = catalogue[8]
    sideways = photo.image.transpose(Image.Transpose.ROTATE_90)
    data = _encode(sideways, "JPEG", quality=95, exif=_exif_with_text_resolution(6))
    _finds_first(_search(client, data, query="?k=3"), photo.item_id)


# --------------------------------------------------------------------------------------------
# decompression bombs: a small file declaring a huge image, refused from its header. The error
# naming the declared size is the proof: decoding the pixel data would fail as truncated.


@pytest.mark.parametrize("make, named", [
    (lambda: _with_png_size(_encode(Image.new("L", (4, 4)), "PNG"), 8000, 6000), "8000x6000 pixels"),
    (lambda: _with_png_size(_encode(Image.new("L", (4, 4)), "PNG"), 20_000, 20_000), "400000000 pixels"),
    (lambda: _with_png_size(_encode(Image.new("RGB", (4, 4)), "PNG", save_all=True,
                                    append_images=[Image.new("RGB", (4, 4), "red")]), 8000, 6000),
     "8000x6000 pixels"),
    (lambda: _with_jpeg_size(_encode(Image.new("RGB", (8, 8)), "JPEG"), 9000, 9000), "9000x9000 pixels"),
    (lambda: _with_jpeg_size(_encode(Image.new("RGB", (8, 8)), "JPEG"), 65_000, 65_000), "4225000000 pixels"),
    (lambda: _gif_with_first_frame_size(60_000, 60_000), "3600000000 pixels"),
    (lambda: _animated_webp_with_canvas(10_000, 8000), "10000x8000 pixels"),
    (lambda: _tiff_with_size(10_000, 10_000), "100000000 pixels"),
], ids=["png-48M", "png-400M", "apng", "jpeg-81M", "jpeg-4G", "gif-first-frame", "animated-webp-canvas",
        "tiff"])
def test_decompression_bombs_are_refused_from_the_header(client, make, named):
    data = make()
    assert len(data) < 10_000
    _refused(_search(client, data), 400, named, "more than the 40000000 allowed")


# --------------------------------------------------------------------------------------------
# odd but valid photos get a correct answer


@pytest.mark.parametrize("size", [(1, 1), (10_000, 10), (10, 10_000), (2, 3000)],
                         ids=["1x1", "10000x10", "10x10000", "2x3000"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_extreme_sizes_and_aspect_ratios(client, size, fmt):
    gradient = np.linspace(0, 255, size[0] * size[1]).reshape(size[1], size[0]).astype(np.uint8)
    img = Image.merge("RGB", [Image.fromarray(gradient)] * 2 + [Image.new("L", size, 90)])
    _answer(_search(client, _encode(img, fmt), query="?k=3"))


CATALOGUE_ENCODINGS = {
    "png": lambda img: _encode(img, "PNG"),
    "png-16bit": _png_16bit_rgb,
    "webp": lambda img: _encode(img, "WEBP", quality=90),
    "webp-lossless": lambda img: _encode(img, "WEBP", lossless=True),
    "heic": lambda img: _encode(img, "HEIF", quality=90),
    "avif": lambda img: _encode(img, "AVIF", quality=90),
    "tiff": lambda img: _encode(img, "TIFF"),
    "tiff-lzw": lambda img: _encode(img, "TIFF", compression="tiff_lzw"),
    "bmp": lambda img: _encode(img, "BMP"),
    "gif": lambda img: _encode(img, "GIF"),
    "progressive-jpeg": lambda img: _encode(img, "JPEG", quality=95, progressive=True),
    "cmyk-jpeg": lambda img: _encode(img.convert("CMYK"), "JPEG", quality=95),
    "mpo": lambda img: _encode(img, "MPO", save_all=True, append_images=[img.rotate(90)]),
}


@pytest.mark.parametrize("encoding", CATALOGUE_ENCODINGS)
def test_catalogue_photo_in_another_format_finds_its_item_first(client, catalogue, encoding):
    if encoding == "avif" and "AVIF" not in SUPPORTED_FORMATS:
        pytest.skip("this Pillow build has no AVIF support")
    photo = catalogue[10]
    data = CATALOGUE_ENCODINGS[encoding](photo.image)
    score = _finds_first(_search(client, data, filename="photo", content_type="application/octet-stream",
                                 query="?k=3"), photo.item_id)
    assert score > 0.999


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_photo_is_searched_by_its_first_frame(client, catalogue, fmt):
    first, later = catalogue[12], catalogue[2]
    assert first.item_id != later.item_id
    data = _encode(first.image, fmt, save_all=True, append_images=[later.image, later.image.rotate(90)],
                   duration=200, loop=0)
    with Image.open(io.BytesIO(data)) as check:
        assert check.is_animated and check.n_frames == 3
    _finds_first(_search(client, data, filename="animated." + fmt.lower(), query="?k=3"), first.item_id)


@pytest.mark.parametrize("orientation", [6, 8])
def test_phone_photo_rotated_by_exif_matches_like_the_upright_one(client, catalogue, orientation):
    photo = catalogue[14]
    upright = _search(client, _encode(photo.image, "JPEG", quality=95), query="?k=3")
    upright_score = _finds_first(upright, photo.item_id)
    rotated = _search(client, _exif_rotated(photo.image, orientation, quality=95), query="?k=3")
    assert _finds_first(rotated, photo.item_id) == pytest.approx(upright_score, abs=2e-3)


def test_heic_from_a_phone_finds_its_item_first(client, catalogue):
    photo = catalogue[16]
    for data in (_encode(photo.image, "HEIF", quality=90), _exif_rotated(photo.image, 6, "HEIF", quality=90)):
        assert data[4:12] == b"ftypheic"
        _finds_first(_search(client, data, filename="IMG_0001.HEIC", content_type="image/heic", query="?k=3"),
                     photo.item_id)


def test_cut_out_with_a_transparent_background_finds_its_item_first(client, catalogue):
    photo = catalogue[18]
    rgba = photo.image.convert("RGBA")
    pixels = np.asarray(rgba).copy()
    studio_white = pixels[..., :3].min(axis=2) > 230
    pixels[studio_white, 3] = 0  # the studio background made transparent, as shops export cut-outs
    assert 0 < studio_white.mean() < 1
    _finds_first(_search(client, _encode(Image.fromarray(pixels, "RGBA"), "PNG"), query="?k=3"), photo.item_id)


def _palette_with_transparency() -> Image.Image:
    img = Image.new("P", (40, 60), 1)
    img.putpalette([200, 30, 30, 0, 255, 0] + [0, 0, 0] * 254)
    img.paste(0, (10, 10, 30, 50))
    img.info["transparency"] = 1
    return img


@pytest.mark.parametrize("make", [
    lambda: _encode(Image.new("L", (64, 48), 90), "JPEG"),
    lambda: _encode(Image.new("LA", (64, 48), (90, 128)), "PNG"),
    lambda: _encode(Image.new("RGBA", (64, 48), (200, 30, 30, 60)), "PNG"),
    lambda: _encode(_palette_with_transparency(), "PNG", transparency=1),
    lambda: _encode(_palette_with_transparency(), "GIF", transparency=1),
    lambda: _encode(Image.new("RGB", (64, 48), (0, 255, 0)), "PNG", transparency=(0, 255, 0)),
    lambda: _encode(Image.fromarray((np.arange(64 * 48, dtype=np.uint16) * 21).reshape(48, 64)), "PNG"),
], ids=["greyscale-jpeg", "greyscale-alpha", "rgba", "palette-transparency-png", "palette-transparency-gif",
        "rgb-colour-key", "greyscale-16bit"])
def test_other_colour_modes_get_an_answer(client, make):
    _answer(_search(client, make(), content_type="application/octet-stream", query="?k=3"))


# --------------------------------------------------------------------------------------------
# query parameters


@pytest.mark.parametrize("k", ["0", "101", "-3", "abc", "1.5", ""])
def test_k_out_of_range_or_not_a_number(client, catalogue, k):
    _refused(_search(client, catalogue[0].data, query=f"?k={k}"), 422, "`k`")


@pytest.mark.parametrize("box, named", [
    ("1,2,3", "four numbers"),
    ("a,b,c,d", "four numbers"),
    ("nan,0,40,40", "finite"),
    ("40,40,10,10", "x0 < x1"),
    ("0,0,500,500", "outside"),
    ("10,10,12,12", "at least 8x8"),
])
def test_malformed_box(client, catalogue, box, named):
    _refused(_search(client, catalogue[0].data, query=f"?box={box}"), 422, named)


def test_box_inside_the_photo_gets_an_answer(client, catalogue):
    _answer(_search(client, catalogue[0].data, query="?box=8,8,88,88&k=3"))
