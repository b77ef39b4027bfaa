"""An ASGI app served for real, by uvicorn on 127.0.0.1, for the tests that talk HTTP to it."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import uvicorn

from emprocess.workflow.local_run import free_port


@contextmanager
def serving(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free 127.0.0.1 port, in a thread of this process."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join()
