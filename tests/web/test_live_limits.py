"""Malformed input and foreign origins against the real server (uvicorn on 127.0.0.1, port 0): always a 4xx,
never a 5xx, and the feedback log unchanged."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from webutil import dump_log, waiting_server

from hero.web.server import WebFeedback

HUGE = 9223372036854775808  # 2**63: one past SQLite's INTEGER, which used to be a 500 (OverflowError)


@pytest.fixture
def live(tmp_path) -> Iterator[WebFeedback]:
    """A started server with round 0 (8 images, no current best) waiting."""
    with waiting_server(tmp_path / "run") as web:
        yield web


def page(web: WebFeedback, origin: str | None = "own") -> httpx.Client:
    """The page's client: token cookie; ``Origin`` the server's own ("own"), another one, or none (None)."""
    headers = {} if origin is None else {"Origin": f"http://127.0.0.1:{web.port}" if origin == "own" else origin}
    return httpx.Client(base_url=f"http://127.0.0.1:{web.port}", timeout=10, headers=headers,
                        cookies={f"hero_token_{web.port}": web.token})


def json_post(c: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return c.post(path, content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("path, body", [
    ("/api/submit", b'{"round": %d, "good": [0], "best": 0}' % HUGE),
    ("/api/submit", b'{"round": 0, "good": [%d], "best": 0}' % -HUGE),
    ("/api/submit", b'{"round": 0, "good": [0], "best": %d}' % HUGE),
    ("/api/submit-pairs", b'{"round": %d, "winners": [], "ties": []}' % HUGE),
    ("/api/submit-pairs", b'{"round": 0, "winners": [[%d, 0]], "ties": []}' % HUGE),
    ("/api/submit", b"[" * 1000 + b"]" * 1000),  # used to be a 500 (RecursionError)
    ("/api/submit", b'{"round": ' + b"9" * 5000 + b', "good": [0], "best": 0}'),  # over int()'s digit limit
    ("/api/submit", b'{"round": 0, "round": 0, "good": [0], "best": 0}'),
    ("/api/submit", b'{"round": NaN, "good": [0], "best": 0}'),
])
def test_malformed_bodies_are_400_and_change_nothing(live, path, body):
    before = dump_log(live.session.run.feedback_db)
    with page(live) as c:
        res = json_post(c, path, body)
    assert res.status_code == 400 and res.json()["error"], res.text
    assert dump_log(live.session.run.feedback_db) == before and live.session.state()["phase"] == "judging"


@pytest.mark.parametrize("path", ["/api/image/2/" + "9" * 4301, "/api/image/" + "9" * 4301 + "/0",
                                  "/api/best/" + "9" * 4301, "/api/image/0/1234567890", "/api/image/٠/٠"])
def test_over_long_numbers_in_a_path_are_404(live, path):
    with page(live) as c:
        assert c.get(path).status_code == 404  # the first one used to be a 500 (int()'s digit limit)
        assert c.get("/api/image/0/0").status_code == 200


@pytest.mark.parametrize("origin", ["http://127.0.0.1:1", "https://127.0.0.1:{port}", "http://localhost:{port}",
                                    "http://127.0.0.1", "null", "http://127.0.0.1:{port}/", "garbage"])
def test_a_post_from_another_origin_is_403_and_not_recorded(live, origin):
    before = dump_log(live.session.run.feedback_db)
    with page(live, origin.format(port=live.port)) as c:
        res = json_post(c, "/api/submit", b'{"round": 0, "good": [1], "best": 1}')  # valid but for its origin
    assert res.status_code == 403, res.text
    assert dump_log(live.session.run.feedback_db) == before and live.session.state()["phase"] == "judging"


def test_a_post_from_the_page_origin_is_recorded(live):
    with page(live) as c:
        res = c.post("/api/submit", content=b'{"round": 0, "good": [1], "best": 1}',
                     headers={"Content-Type": "application/json", "Sec-Fetch-Site": "same-origin"})
    assert res.status_code == 200, res.text
    assert live.session.log.get_round(0).best == 1


def test_garbage_on_the_wire_is_400(live):
    for data in (b"\x00\xff\xfe garbage\r\n\r\n", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: \xb2\r\n\r\n",
                 b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X: " + b"a" * 20_000 + b"\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
            sock.sendall(data)
            assert sock.recv(100).startswith(b"HTTP/1.1 4"), data[:40]
