"""A minimal HTTP/1.1 keep-alive client for the load benchmarks.

The benchmarks run the client on the same two cores as the server, so every millisecond the client
spends is a millisecond the server does not get, and at concurrency 1 it adds straight to the measured
latency. httpx's AsyncClient costs ~4-5 ms of CPU per upload here (measured against this service:
c=1 p50 58.6 ms with httpx against 54.6 ms with this client, and 21.9 against 23.3 req/s at c=8), a
cost a shopper's phone would pay on its own CPU. This client does only what the benchmarks need:
POST a body, read a Content-Length or chunked response, reconnect when the server closes.
"""
from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit


class HTTPResponseError(Exception):
    """The server's answer was not an HTTP/1.1 response this client can read."""


def multipart_body(field: str, filename: str, data: bytes, content_type: str) -> tuple[str, bytes]:
    """(Content-Type header, body) of a multipart/form-data upload of one file."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return f"multipart/form-data; boundary={boundary}", head + data + f"\r\n--{boundary}--\r\n".encode()


class Connection:
    """One keep-alive connection to `base` (http://host:port); not for concurrent use."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http://host:port address, got {base!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, target: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """POST `body` to `target` (path and query); (status, response body)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        request = (f"POST {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: {content_type}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode()
        try:
            self._writer.write(request + body)
            status, headers = await self._read_head()
            payload = await self._read_body(headers)
        except BaseException:
            await self.close()  # a half-read response would poison the next request
            raise
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, payload

    async def _read_head(self) -> tuple[int, dict[str, str]]:
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise HTTPResponseError(f"not an HTTP/1.x status line: {status_line!r}")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return int(rest[:3]), headers

    async def _read_body(self, headers: dict[str, str]) -> bytes:
        if "content-length" in headers:
            return await self._reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self._reader.readexactly(size + 2)  # the data and its CRLF
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk[:-2])
        if headers.get("connection", "").lower() == "close":
            return await self._reader.read()
        raise HTTPResponseError("response has neither a length nor chunked encoding on a kept-alive connection")

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
