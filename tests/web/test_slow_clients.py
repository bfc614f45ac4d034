"""Slow clients against the real server (uvicorn on 127.0.0.1, port 0): they are cut off, and the page keeps working.

The deadlines are shortened here (``monkeypatch``) so each test takes a few seconds; the defaults are checked
to be in the same few-seconds range.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from webutil import dump_log, waiting_server

from hero.web import guard
from hero.web.guard import MAX_WAITING, SlowClientProtocol
from hero.web.server import WebFeedback

HEAD_S = 3.0  # the head deadline in these tests
BODY_S = 3.0  # the body deadline in these tests
EVICT_S = 0.5  # how long a connection waits before it may be closed to make room, in these tests
FAST_S = 2.5  # the page's request takes less than this (on a busy machine too), well before the deadlines
N_SLOW = 140  # more than uvicorn's limit_concurrency=128 that used to lock the page out


@pytest.fixture
def live(tmp_path, monkeypatch) -> Iterator[WebFeedback]:
    """A started server with round 0 (8 images) waiting, and short deadlines."""
    monkeypatch.setattr(SlowClientProtocol, "header_timeout", HEAD_S)
    monkeypatch.setattr(SlowClientProtocol, "evict_after", EVICT_S)
    monkeypatch.setattr(guard, "BODY_TIMEOUT", BODY_S)
    with waiting_server(tmp_path / "run") as web:
        yield web


def page(web: WebFeedback) -> httpx.Client:
    """The page's own client: the token cookie, the server's origin."""
    return httpx.Client(base_url=f"http://127.0.0.1:{web.port}", timeout=5,
                        cookies={f"hero_token_{web.port}": web.token})


def connect(web: WebFeedback, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", web.port), timeout=10)
    sock.sendall(data)
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bytes | None:
    """What the server sent before closing ``sock`` within ``within`` s, or None if it is still open."""
    sock.settimeout(within)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return got


def state_answers_fast(web: WebFeedback) -> float:
    """Seconds the page's GET /api/state takes (asserting 200)."""
    t0 = time.monotonic()
    with page(web) as c:
        res = c.get("/api/state")
    assert res.status_code == 200 and res.json()["phase"] == "judging", res.text
    return time.monotonic() - t0


def unanswered(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has neither answered nor closed yet."""
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            s.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            n += 1
        finally:
            s.settimeout(10)
    return n


def eventually(condition, timeout: float = 2.0) -> bool:
    """Whether ``condition()`` becomes true within ``timeout`` s (the server's loop runs in another thread)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_defaults_are_a_few_seconds():
    assert 1 <= guard.HEADER_TIMEOUT <= 10 and 1 <= guard.BODY_TIMEOUT <= 10 and 16 <= MAX_WAITING <= 256


def test_connections_stuck_in_their_head_do_not_lock_the_page_out(live):
    head = f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\n".encode()  # no blank line: never ends
    slow = [connect(live, head) for _ in range(N_SLOW)]
    try:
        assert state_answers_fast(live) < FAST_S  # was 503 for as long as they were held
        assert unanswered(slow) == N_SLOW  # ... and they still are: the page was not just waiting them out
        time.sleep(EVICT_S + 0.1)
        # Once they have waited EVICT_S, the oldest beyond MAX_WAITING are closed as soon as a connection comes.
        assert state_answers_fast(live) < FAST_S
        assert eventually(lambda: len(live._server.server_state.connections) <= MAX_WAITING)
        answers = [closed_by_server(s, within=HEAD_S + 3) for s in slow]
        assert all(a is not None for a in answers), "a stuck connection outlived the head deadline"
        assert sum(a.startswith(b"HTTP/1.1 408") for a in answers) >= MAX_WAITING - 1  # the rest: evicted
        assert state_answers_fast(live) < FAST_S
    finally:
        for s in slow:
            s.close()


def test_a_head_trickled_byte_by_byte_is_cut_off_at_the_deadline(live):
    head = f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\nX-Slow: ".encode()
    sock = connect(live, head)
    t0 = time.monotonic()
    sock.settimeout(0.25)
    try:
        while time.monotonic() - t0 < HEAD_S + 3:
            try:
                sock.sendall(b"a")  # uvicorn's keep-alive timer alone restarts on every byte: never closed
                if sock.recv(4096) == b"":
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        assert HEAD_S - 0.5 < time.monotonic() - t0 < HEAD_S + 1.5  # cut off by the deadline, bytes or not
    finally:
        sock.close()


def test_after_a_response_the_next_head_has_a_deadline_too(live):
    request = f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\n\r\n".encode()
    sock = connect(live, request + b"GET /api/st")  # one whole request (401: no cookie), then half of a second
    t0 = time.monotonic()
    got = closed_by_server(sock, within=HEAD_S + 3)
    sock.close()
    assert got is not None and got.startswith(b"HTTP/1.1 401") and HEAD_S - 0.5 < time.monotonic() - t0 < HEAD_S + 1.5


def test_a_body_that_never_arrives_is_408_and_changes_nothing(live):
    before = dump_log(live.session.run.feedback_db)
    head = (f"POST /api/submit HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\nOrigin: http://127.0.0.1:{live.port}\r\n"
            f"Cookie: hero_token_{live.port}={live.token}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n").encode()
    stalled = [connect(live, head + b'{"round": 0') for _ in range(N_SLOW)]  # 11 of the 100 bytes promised
    try:
        assert state_answers_fast(live) < FAST_S  # their app tasks wait; no cap keeps the page out
        assert unanswered(stalled) == N_SLOW  # answered while they were all still held
        t0 = time.monotonic()
        answers = [closed_by_server(s, within=BODY_S + 3) for s in stalled]
        bad = [a for a in answers if a is None or not a.startswith(b"HTTP/1.1 408")]
        assert not bad, (len(bad), bad[:2])
        assert time.monotonic() - t0 < BODY_S + 3
    finally:
        for s in stalled:
            s.close()
    assert dump_log(live.session.run.feedback_db) == before and live.session.state()["phase"] == "judging"
