"""The web API: the happy path, and every bad input answered with the right 4xx and the log left unchanged."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.testclient import TestClient
from webutil import PROMPT, WaitingRound, best_spec, dump_log, submit_concurrently

from hero.runs.feedback_log import FeedbackLog
from hero.web.guard import json_depth
from hero.web.server import MAX_BODY, create_app
from hero.web.session import RoundSpec

TOKEN = "test-token-0123456789abcdef"
BASE = "http://127.0.0.1:8765"


def client(session, token: str | None = TOKEN, base: str = BASE) -> TestClient:
    """A client of the app; signed in (token cookie set through the printed URL) unless ``token`` is None."""
    c = TestClient(create_app(session, TOKEN, {"127.0.0.1", "localhost", "::1"}), base_url=base,
                   follow_redirects=False)
    if token is not None:
        c.cookies.set("hero_token", token)
    return c


def post(c: TestClient, payload, headers: dict | None = None):
    headers = {"Content-Type": "application/json", **(headers or {})}
    return c.post("/api/submit", content=json.dumps(payload), headers=headers)


@pytest.fixture
def waiting(session):
    """Round 0 (8 images, no current best) waiting for feedback."""
    return WaitingRound(session, RoundSpec(0, PROMPT, 8))


def test_login_sets_an_httponly_cookie_and_the_page_loads(session, waiting):
    c = client(session, token=None)
    res = c.get(f"/?token={TOKEN}")
    assert res.status_code == 303 and res.headers["location"] == "/"
    cookie = res.headers["set-cookie"]
    assert f"hero_token={TOKEN}" in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    page = c.get("/")
    assert page.status_code == 200 and "app.js" in page.text
    for name in ("app.js", "style.css"):
        assert c.get(f"/static/{name}").status_code == 200
    assert page.headers["x-content-type-options"] == "nosniff" and "frame-ancestors 'none'" in \
        page.headers["content-security-policy"]


def test_state_image_and_submit(session, waiting):
    c = client(session)
    state = c.get("/api/state").json()
    assert state["phase"] == "judging" and state["round"] == 0 and state["prompt"] == PROMPT
    assert state["image_ids"] == list(range(8)) and state["current_best"] is False
    assert state["progress"] == "round 1 of 2, 0 of 16 feedback"
    img = c.get("/api/image/0/7")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png" and img.content[:4] == b"\x89PNG"
    res = post(c, {"round": 0, "good": [1, 3], "best": 3})
    assert res.status_code == 200 and res.json()["feedback"] == 8
    fb = waiting.join()
    assert fb.good == [False, True, False, True, False, False, False, False] and fb.best == 3
    stored = FeedbackLog(session.run.feedback_db).get_round(0)
    assert stored.good == fb.good and stored.best == 3 and stored.source == "web"
    state = c.get("/api/state").json()
    assert state["phase"] == "learning" and state["feedback"] == 8


def test_later_round_may_keep_the_current_best_with_nothing_good(session):
    WaitingRound(session, RoundSpec(0, PROMPT, 8))
    assert post(client(session), {"round": 0, "good": [0], "best": 0}).status_code == 200
    waiting = WaitingRound(session, best_spec(session.run))
    c = client(session)
    assert c.get("/api/state").json()["current_best"] is True
    assert c.get("/api/best/1").content[:4] == b"\x89PNG" and c.get("/api/best/0").status_code == 404
    assert post(c, {"round": 1, "good": [], "best": None}).status_code == 200  # an honest "none is good"
    assert waiting.join().best is None


def test_all_good_is_accepted(session, waiting):
    assert post(client(session), {"round": 0, "good": list(range(8)), "best": 5}).status_code == 200
    assert waiting.join().good == [True] * 8


@pytest.mark.parametrize("case, payload, status", [
    ("wrong round", {"round": 1, "good": [1], "best": 1}, 409),
    ("best not among good", {"round": 0, "good": [1, 2], "best": 3}, 422),
    ("no best in the first round", {"round": 0, "good": [1, 2], "best": None}, 422),
    ("unknown image id in good", {"round": 0, "good": [1, 8], "best": 1}, 422),
    ("negative image id", {"round": 0, "good": [-1, 2], "best": 2}, 422),
    ("unknown best id", {"round": 0, "good": [1], "best": 99}, 422),
    ("an image twice", {"round": 0, "good": [1, 1], "best": 1}, 422),
    ("path-traversal id in good", {"round": 0, "good": ["../../config.yaml"], "best": 0}, 400),
    ("path-traversal best", {"round": 0, "good": [0], "best": "../0"}, 400),
    ("round as a string", {"round": "0", "good": [0], "best": 0}, 400),
    ("a boolean as an index", {"round": 0, "good": [True], "best": 0}, 400),
    ("good not a list", {"round": 0, "good": "0,1", "best": 0}, 400),
    ("missing field", {"round": 0, "good": [0]}, 400),
    ("unknown field", {"round": 0, "good": [0], "best": 0, "path": "/etc/passwd"}, 400),
    ("not an object", [0, [0], 0], 400),
])
def test_bad_submissions_change_nothing(session, waiting, case, payload, status):
    before = dump_log(session.run.feedback_db)
    res = post(client(session), payload)
    assert res.status_code == status, (case, res.text)
    assert res.json()["error"]  # a message for the person
    assert dump_log(session.run.feedback_db) == before
    assert session.state()["phase"] == "judging" and waiting.result is None


@pytest.mark.parametrize("case, kwargs, status", [
    ("missing token", {"token": None}, 401),
    ("wrong token", {"token": "not-the-token-0123456789"}, 401),
    ("bad Host header", {"base": "http://evil.example:8765"}, 400),
])
def test_requests_without_credentials_are_refused(session, waiting, case, kwargs, status):
    before = dump_log(session.run.feedback_db)
    c = client(session, **kwargs)
    assert post(c, {"round": 0, "good": [1], "best": 1}).status_code == status, case
    for path in ("/", "/api/state", "/api/image/0/0", "/static/app.js"):
        assert c.get(path).status_code == status, (case, path)
    assert dump_log(session.run.feedback_db) == before


def test_wrong_token_in_the_url_is_refused(session):
    assert client(session, token=None).get("/?token=nope-nope-nope-nope").status_code == 401


def test_malformed_and_oversized_bodies(session, waiting):
    before = dump_log(session.run.feedback_db)
    c = client(session)
    headers = {"Content-Type": "application/json"}
    assert c.post("/api/submit", content=b"{not json", headers=headers).status_code == 400
    assert c.post("/api/submit", content=b"\xff\xfe", headers=headers).status_code == 400
    big = json.dumps({"round": 0, "good": [1] * (MAX_BODY // 2), "best": 1}).encode()
    assert c.post("/api/submit", content=big, headers=headers).status_code == 413
    # Without a Content-Length (chunked), the body is cut off while it is read.
    assert c.post("/api/submit", content=iter([big[:40_000], big[40_000:]]), headers=headers).status_code == 413
    assert c.post("/api/submit", content=b'{"round":0,"good":[1],"best":1}',
                  headers={"Content-Type": "text/plain"}).status_code == 415
    assert post(c, {"round": 0, "good": [1], "best": 1}, {"Origin": "http://evil.example"}).status_code == 403
    assert c.get("/api/submit").status_code == 405
    assert dump_log(session.run.feedback_db) == before and waiting.result is None


@pytest.mark.parametrize("path", ["/api/image/0/8", "/api/image/1/0", "/api/image/0/-1", "/api/image/0/..%2F..%2Fx",
                                  "/api/image/../../config.yaml", "/api/image/0/0.png", "/api/image/00/99999999999",
                                  "/static/..%2Fserver.py", "/static/index.html", "/static/../server.py",
                                  "/api/best/0", "/etc/passwd"])
def test_images_are_served_by_id_only(session, waiting, path):
    (session.run.path / "config.yaml").write_text("secret: 1\n")
    res = client(session).get(path)
    assert res.status_code == 404, path
    assert b"secret" not in res.content and b"import" not in res.content


def test_duplicate_submission_is_refused_not_double_counted(session, waiting):
    c = client(session)
    assert post(c, {"round": 0, "good": [2], "best": 2}).status_code == 200
    waiting.join()
    before = dump_log(session.run.feedback_db)
    res = post(c, {"round": 0, "good": [2], "best": 2})  # e.g. a second tab, or Enter pressed twice
    assert res.status_code == 409 and "already submitted" in res.json()["error"]
    WaitingRound(session, best_spec(session.run))  # the next round is up: round 0 again is still refused
    assert post(c, {"round": 0, "good": [3], "best": 3}).status_code == 409
    assert dump_log(session.run.feedback_db) == before
    assert FeedbackLog(session.run.feedback_db).n_feedback() == 8


def test_concurrent_submissions_record_the_round_once(session, waiting):
    statuses = submit_concurrently(lambda: session.submit({"round": 0, "good": [4], "best": 4}), 8)
    assert statuses == [200] + [409] * 7
    assert FeedbackLog(session.run.feedback_db).rounds() == [0]


@pytest.mark.parametrize("case, headers, status", [
    ("own origin", {"Origin": BASE}, 200),
    ("own origin, Sec-Fetch-Site", {"Origin": BASE, "Sec-Fetch-Site": "same-origin"}, 200),
    ("no Origin (not a browser)", {}, 200),
    ("another port", {"Origin": "http://127.0.0.1:1"}, 403),
    ("another scheme", {"Origin": "https://127.0.0.1:8765"}, 403),
    ("another host name for the same address", {"Origin": "http://localhost:8765"}, 403),
    ("the default port", {"Origin": "http://127.0.0.1"}, 403),
    ("an opaque origin", {"Origin": "null"}, 403),
    ("a path in Origin", {"Origin": BASE + "/"}, 403),
    ("a bad port in Origin", {"Origin": "http://127.0.0.1:99999"}, 403),
    ("same site, other origin", {"Sec-Fetch-Site": "same-site"}, 403),
    ("cross-site", {"Origin": BASE, "Sec-Fetch-Site": "cross-site"}, 403),
])
def test_a_post_must_come_from_the_page_origin(session, waiting, case, headers, status):
    before = dump_log(session.run.feedback_db)
    res = post(client(session), {"round": 0, "good": [1], "best": 1}, headers)
    assert res.status_code == status, (case, res.text)
    assert (dump_log(session.run.feedback_db) == before) == (status != 200), case


def test_the_origin_is_compared_with_the_host_the_request_came_to(session, waiting):
    c = client(session, base="http://localhost:8765")
    assert post(c, {"round": 0, "good": [1], "best": 1}, {"Origin": BASE}).status_code == 403
    assert post(c, {"round": 0, "good": [1], "best": 1}, {"Origin": "http://localhost:8765"}).status_code == 200
    c = client(session, base="http://[::1]:8765")
    # Past the origin check (not 403): 409 only because round 0 was just recorded through localhost.
    assert post(c, {"round": 0, "good": [1], "best": 1}, {"Origin": "http://[::1]:8765"}).status_code == 409


@pytest.mark.parametrize("case, body, status", [
    ("round past SQLite's integers", b'{"round": 9223372036854775808, "good": [0], "best": 0}', 400),
    ("good id past 2**31", b'{"round": 0, "good": [2147483648], "best": 0}', 400),
    ("best far below zero", b'{"round": 0, "good": [0], "best": -9223372036854775809}', 400),
    ("an over-long integer", b'{"round": 0, "good": [0], "best": ' + b"9" * 5000 + b"}", 400),
    ("a float", b'{"round": 0.0, "good": [0], "best": 0}', 400),
    ("NaN", b'{"round": 0, "good": [0], "best": NaN}', 400),
    ("Infinity", b'{"round": 0, "good": [0], "best": -Infinity}', 400),
    ("a duplicate key", b'{"round": 0, "good": [0], "best": 0, "best": 1}', 400),
    ("nested 1,000 deep", b"[" * 1000 + b"]" * 1000, 400),
    ("nested 9 deep in good", b'{"round": 0, "good": [[[[[[[[0]]]]]]]], "best": 0}', 400),
    ("brackets inside a string do not count", b'{"round": 0, "good": [0], "best": "[[[[[[[[[[[["}', 400),
    ("empty", b"", 400),
])
def test_malformed_json_is_400_and_changes_nothing(session, waiting, case, body, status):
    before = dump_log(session.run.feedback_db)
    res = client(session).post("/api/submit", content=body, headers={"Content-Type": "application/json"})
    assert res.status_code == status and res.json()["error"], (case, res.text)
    assert dump_log(session.run.feedback_db) == before and waiting.result is None


def test_json_depth_skips_strings():
    assert json_depth(b'{"a": [[1], "]]]]"], "b": "\\"[[["}') == 3 and json_depth(b"7") == 0


@pytest.mark.parametrize("headers, status", [
    ({"Host": "127.0.0.1:abc"}, 400),
    ({"Host": "127.0.0.1:99999"}, 400),
    ({"Host": "::1"}, 400),
    ({"Content-Length": "\u00b2"}, 400),  # str.isdigit() says yes, int() says no: it used to be a 500
    ({"Content-Length": "-1"}, 400),
    ({"Content-Length": str(MAX_BODY + 1)}, 413),
])
def test_bad_headers_are_4xx(session, waiting, headers, status):
    before = dump_log(session.run.feedback_db)
    scope_headers = [(b"content-type", b"application/json"), (b"cookie", f"hero_token={TOKEN}".encode())]
    scope_headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
    if "Host" not in headers:
        scope_headers.append((b"host", b"127.0.0.1:8765"))
    assert asgi_status(create_app(session, TOKEN, {"127.0.0.1"}), "POST", "/api/submit", scope_headers) == status
    assert dump_log(session.run.feedback_db) == before


def asgi_status(app, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"{}") -> int:
    """The status ``app`` answers to a raw ASGI request (headers exactly as given, unlike an HTTP client's)."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": headers, "scheme": "http", "server": ("127.0.0.1", 8765), "client": ("127.0.0.1", 1),
             "http_version": "1.1", "root_path": "", "asgi": {"version": "3.0"}}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"]


@pytest.mark.parametrize("path", ["/api/image/0/" + "9" * 4301, "/api/best/" + "9" * 4301, "/api/image/0/1234567890",
                                  "/api/image/+1/0", "/api/image/0/0x1", "/api/image/ 0/0", "/api/best/-0"])
def test_numbers_in_a_path_are_short_ascii_digits(session, waiting, path):
    assert client(session).get(path).status_code == 404


def _set_round(session, with_best: bool) -> WaitingRound:
    """Round 0 of a prompt set: images 0-4 for "two red squares", 5-7 for "one blue circle"; with a current best
    for the first prompt only when ``with_best``."""
    png = session.run.image_path(0, 0).read_bytes() if with_best else None
    spec = RoundSpec(0, "", 8, groups=(("two red squares", 0, 5), ("one blue circle", 5, 8)),
                     group_best_pngs=(png, None))
    return WaitingRound(session, spec)


@pytest.mark.parametrize("payload, status, says", [
    ({"round": 0, "good": [1, 6], "best": 1}, 422, "2 prompts: send bests"),
    ({"round": 0, "good": [1, 6], "bests": [1]}, 422, "bests has 1 entries"),
    ({"round": 0, "good": [1, 6], "bests": [6, 1]}, 422, "must be one of its images (ids 0..4"),
    ({"round": 0, "good": [1], "bests": [1, 6]}, 422, "'one blue circle' (id 6: image 7 on the page) must also"),
    ({"round": 0, "good": [1, 6], "bests": [1, None]}, 422, "choose one best image for 'one blue circle'"),
    ({"round": 0, "good": [1, 6], "bests": "1,6"}, 400, "bests must be a list"),
    ({"round": 0, "good": [1, 6], "best": 1, "bests": [1, 6]}, 400, "expected exactly the fields round, good, bests"),
])
def test_a_bad_prompt_set_submission_is_refused_and_writes_nothing(session, payload, status, says):
    waiting = _set_round(session, with_best=True)
    c = client(session)
    res = post(c, payload)
    assert res.status_code == status and says in res.json()["error"], res.json()
    assert FeedbackLog(session.run.feedback_db).rounds() == []
    assert post(c, {"round": 0, "good": [3, 6], "bests": [None, 6]}).status_code == 200  # keeps prompt 1's best
    fb = waiting.join()
    assert fb.bests == (6,) and fb.prompts == ["two red squares"] * 5 + ["one blue circle"] * 3


def test_a_prompt_set_round_shows_its_groups_and_each_groups_current_best(session):
    _set_round(session, with_best=True)
    c = client(session)
    state = c.get("/api/state").json()
    assert state["groups"] == [{"prompt": "two red squares", "ids": [0, 1, 2, 3, 4], "current_best": True},
                               {"prompt": "one blue circle", "ids": [5, 6, 7], "current_best": False}]
    assert c.get("/api/best/0/0").content[:4] == b"\x89PNG"
    assert c.get("/api/best/0/1").status_code == 404 and c.get("/api/best/0/9").status_code == 404
    assert post(c, {"round": 0, "good": [2, 5], "bests": [2, 5]}).status_code == 200
    stored = FeedbackLog(session.run.feedback_db).get_round(0)
    assert stored.bests == (2, 5) and stored.image_prompt(5) == "one blue circle"
