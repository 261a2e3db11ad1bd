"""``freshet replay``'s readiness probe: plain ``urllib`` against a replica's ``/readyz`` and ``/v1/state``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from freshet.broker import free_port
from freshet.recovery import ready_state, replica_url

STATE = {"digest": "d1", "started_from_snapshot": "/r/snapshot-0000000001", "offsets": {"0": 4}}


@pytest.fixture
def replica() -> Iterator[tuple[str, list[int]]]:
    """A stand-in replica whose ``/readyz`` answers the status codes in ``codes``, one per request."""
    codes = [503, 200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = (codes.pop(0) if len(codes) > 1 else codes[0]) if self.path == "/readyz" else 200
            body = json.dumps(STATE if self.path == "/v1/state" else {"ready": code == 200}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", codes
    finally:
        server.shutdown()


def test_not_ready_until_readyz_says_200_then_the_state(replica) -> None:
    url, _ = replica
    assert ready_state(url) is None, "503 from /readyz: still replaying"
    assert ready_state(url) == STATE


def test_nothing_listening_is_not_ready() -> None:
    assert ready_state(f"http://127.0.0.1:{free_port()}", timeout_s=0.5) is None


@pytest.mark.parametrize(
    ("serve_args", "environ", "url"),
    [
        (["--port=8123"], {}, "http://127.0.0.1:8123"),
        (
            ["--models", "m", "--host", "10.0.0.2", "--port", "81"],
            {"FRESHET_PORT": "9"},
            "http://10.0.0.2:81",
        ),
        ([], {"FRESHET_HOST": "::", "FRESHET_PORT": "9"}, "http://127.0.0.1:9"),
        (["--portal", "1"], {}, "http://127.0.0.1:8000"),
    ],
)
def test_the_replicas_address_comes_from_its_serve_arguments(serve_args, environ, url) -> None:
    assert replica_url(serve_args, environ) == url
