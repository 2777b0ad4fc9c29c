"""The load benchmarks' lean HTTP client (bench/lean_http.py): the figures in the README are only as
good as its reading of each response, so it is checked against a scripted server and the real app."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from lean_http import Connection, HTTPResponseError, multipart_body  # noqa: E402


async def _scripted_server(responses: list[bytes], requests: list[bytes]):
    """Answers each request on a connection with the next scripted response; b"" closes it."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while responses:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            requests.append(head + await reader.readexactly(length))
            response = responses.pop(0)
            if not response:
                break
            writer.write(response)
            await writer.drain()
            if b"Connection: close" in response:
                break
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def run_posts(responses: list[bytes], posts: int) -> tuple[list, list[bytes]]:
    requests: list[bytes] = []

    async def main():
        server = await _scripted_server(responses, requests)
        port = server.sockets[0].getsockname()[1]
        connection, results = Connection(f"http://127.0.0.1:{port}"), []
        for n in range(posts):
            try:
                results.append(await connection.post(f"/search?k={n}", b"x" * (n + 1), "text/plain"))
            except (HTTPResponseError, asyncio.IncompleteReadError, OSError) as exc:
                results.append(type(exc))
        await connection.close()
        server.close()
        await server.wait_closed()
        return results

    return asyncio.run(main()), requests


def test_reads_length_and_chunked_bodies_over_one_kept_alive_connection():
    results, requests = run_posts([
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\ncontent-type: application/json\r\n\r\n{\"a\":1}",
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n3;x=1\r\n!!!\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    ], posts=3)
    assert results == [(200, b'{"a":1}'), (503, b"busy!!!"), (204, b"")]
    assert [r.split(b"\r\n")[0] for r in requests] == [b"POST /search?k=0 HTTP/1.1", b"POST /search?k=1 HTTP/1.1",
                                                      b"POST /search?k=2 HTTP/1.1"]
    assert [r.split(b"\r\n\r\n", 1)[1] for r in requests] == [b"x", b"xx", b"xxx"]  # bodies sent whole


def test_reconnects_after_the_server_closes_and_reports_a_dropped_response():
    results, requests = run_posts([
        b"HTTP/1.1 413 Too Large\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"",  # the server drops the connection without answering
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain",
    ], posts=4)
    assert results[:2] == [(413, b"no"), (200, b"ok")]
    assert results[2] is asyncio.IncompleteReadError  # a failure the load test counts, not a hang
    assert results[3] == (200, b"again")  # and the next post gets a fresh connection
    assert len(requests) == 4


def test_a_response_that_is_not_http_is_an_error():
    results, _ = run_posts([b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], posts=2)
    assert results == [HTTPResponseError, (200, b"")]


def test_only_plain_http_addresses():
    with pytest.raises(ValueError, match="http://host:port"):
        Connection("https://127.0.0.1:8000")


def test_the_multipart_upload_is_read_by_the_real_service(tiny_index, synthetic_catalog):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    photo = sorted((synthetic_catalog.parent / "images").glob("*.jpg"))[0]
    content_type, body = multipart_body("image", "shopper.jpg", photo.read_bytes(), "image/jpeg")
    with TestClient(create_app(Settings(index=tiny_index, device="cpu", reload_poll_s=0))) as client:
        answer = client.post("/search?k=3", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"][0]["score"] > 0.99  # the catalogue photo finds itself
        wrong_field, body = multipart_body("photo", "shopper.jpg", photo.read_bytes(), "image/jpeg")
        assert client.post("/search", content=body, headers={"Content-Type": wrong_field}).status_code == 422
