"""A real uvicorn server in a thread of the test process, for tests that need real sockets and
concurrency (backpressure, hot reload under load) but want to reach the app's state."""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

import uvicorn

from .conftest import free_port


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
