"""Property-based fuzzing of the web API (hypothesis, through the Starlette TestClient).

Each example is one request: a random method and path (with random number strings in the image paths), a
random Cookie (the right token, a wrong one, none, garbage), Host, Origin, Sec-Fetch-Site and Content-Type,
and a random body (JSON of every type, submission-shaped bodies with bad, huge, negative, float or boolean
values and wrong or missing keys, raw text: deep nesting, duplicate keys, NaN, over-long integers, bad UTF-8,
over-size and chunked bodies). Two rounds wait meanwhile, a good/best one and a pairwise one.

The properties: no answer is a 5xx; a request leaves the feedback log (every SQLite row) unchanged unless it
was answered 2xx and is a valid, authenticated, same-origin submission by an independent check written here;
and nothing is 2xx without the right token cookie and an allowed Host (the login's 303 is not a 2xx).

``HERO_FUZZ_N`` sets the number of requests (default 300, about 10 s); run with ``-s`` to see the counts.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from webutil import PROMPT, WaitingRound, dump_log, make_run

from hero.web.guard import MAX_BODY
from hero.web.server import create_app
from hero.web.session import RoundSpec, Session

N = int(os.environ.get("HERO_FUZZ_N", "300"))
TOKEN = "fuzz-token-0123456789abcdef"
HOSTS_OK = ["127.0.0.1:8765", "localhost:8765", "[::1]:8765", "127.0.0.1"]
PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7))
SUBMIT_PATHS = {"good_best": "/api/submit", "pairs": "/api/submit-pairs"}
printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@dataclass
class Req:
    """One generated request, with what the independent check needs to know about it."""

    kind: str  # which waiting round it is aimed at: "good_best" or "pairs"
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None
    chunked: bool
    authed: bool  # carries the right token cookie
    host_ok: bool
    same_origin: bool  # Origin absent or the Host's own, Sec-Fetch-Site absent or same-origin


class Target:
    """A session with round 0 (8 images) waiting, of one kind, and a client of its app; ``reset`` starts afresh."""

    def __init__(self, base: Path, kind: str) -> None:
        self.base, self.kind, self.n = base, kind, 0
        self.session: Session | None = None
        self.reset()

    def reset(self) -> None:
        """A new run folder and session (after a valid submission was accepted, or at the start)."""
        self.close()
        self.n += 1
        run = self.base / f"{self.kind}-{self.n}"
        make_run(run, rounds=1)
        self.session = Session(run, rounds_total=1, budget=8)
        WaitingRound(self.session, RoundSpec(0, PROMPT, 8, pairs=PAIRS if self.kind == "pairs" else None))
        app = create_app(self.session, TOKEN, {"127.0.0.1", "localhost", "::1"})
        self.client = TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False,
                                 follow_redirects=False)

    def log(self) -> str:
        return dump_log(self.session.run.feedback_db) + f"\nphase={self.session.state()['phase']}"

    def close(self) -> None:
        if self.session is not None:
            self.session.finish()
            self.session.close()


# -- the independent check of a valid submission ----------------------------------------------------------------

def _strict_json(body: bytes) -> Any:
    def no_dupes(pairs: list) -> dict:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicate key")
        return dict(pairs)

    def no_constants(name: str) -> None:
        raise ValueError(name)

    return json.loads(body, object_pairs_hook=no_dupes, parse_constant=no_constants)


def _int(x: Any) -> bool:
    return type(x) is int


def _valid_good_best(p: Any) -> bool:
    if not isinstance(p, dict) or set(p) != {"round", "good", "best"} or not (_int(p["round"]) and p["round"] == 0):
        return False
    good, best = p["good"], p["best"]
    return (isinstance(good, list) and all(_int(i) and 0 <= i < 8 for i in good) and len(set(good)) == len(good)
            and _int(best) and best in good)


def _valid_pairs(p: Any) -> bool:
    if not isinstance(p, dict) or set(p) != {"round", "winners", "ties"} or not (_int(p["round"]) and p["round"] == 0):
        return False
    answers = [*p["winners"], *p["ties"]] if isinstance(p["winners"], list) and isinstance(p["ties"], list) else None
    if answers is None or not all(isinstance(a, list) and len(a) == 2 and all(map(_int, a)) for a in answers):
        return False
    return sorted(tuple(sorted(a)) for a in answers) == sorted(PAIRS)


def valid_submission(req: Req) -> bool:
    """Whether the server should accept ``req`` (by this file's own reading of the rules in docs/web.md)."""
    if not (req.authed and req.host_ok and req.same_origin and req.method == "POST" and req.body is not None
            and req.path == SUBMIT_PATHS[req.kind] and len(req.body) <= MAX_BODY
            and req.headers.get("content-type", "").split(";")[0] == "application/json"):
        return False
    try:
        payload = _strict_json(req.body)
    except (ValueError, RecursionError):
        return False
    return _valid_good_best(payload) if req.kind == "good_best" else _valid_pairs(payload)


# -- strategies ---------------------------------------------------------------------------------------------------

ints = st.one_of(st.integers(-3, 10), st.integers(-2**70, 2**70),
                 st.sampled_from([2**31 - 1, 2**31, 2**63, -2**63 - 1]), st.booleans(),
                 st.floats(allow_nan=False, allow_infinity=False), printable, st.none())
index_lists = st.one_of(st.lists(ints, max_size=6), st.lists(st.integers(0, 7), max_size=9), ints)
pair_lists = st.one_of(st.lists(st.lists(ints, min_size=0, max_size=3), max_size=6),
                       st.lists(st.sampled_from([[1, 0], [2, 3], [4, 5], [7, 6], [0, 1], [6, 7], [3, 2]]),
                                max_size=5), ints)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**80, 2**80) | st.floats(allow_nan=False)
                           | st.text(max_size=10), lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=15)


@st.composite
def submission_shaped(draw) -> Any:
    """A good/best or pairs body, near a valid one: fields from ``ints``, sometimes a key dropped or added."""
    if draw(st.booleans()):
        body = {"round": draw(st.one_of(st.just(0), ints)), "good": draw(index_lists), "best": draw(ints)}
    else:
        body = {"round": draw(st.one_of(st.just(0), ints)), "winners": draw(pair_lists), "ties": draw(pair_lists)}
    if draw(st.integers(0, 5)) == 0:
        body.pop(draw(st.sampled_from(sorted(body))))
    if draw(st.integers(0, 5)) == 0:
        body[draw(st.text(max_size=8))] = draw(ints)
    return body


raw_bodies = st.one_of(
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"0" + b"}" * n),
    st.integers(4000, 6000).map(lambda n: b'{"round": ' + b"9" * n + b', "good": [0], "best": 0}'),
    st.sampled_from([b'{"round": 0, "round": 0, "good": [0], "best": 0}', b'{"round": NaN, "good": [], "best": 0}',
                     b'{"round": 0, "good": [Infinity], "best": 0}', b"", b"null", b"{", b"\xff\xfe\x00",
                     b'{"round": 0, "good": [1], "best": 1}', b'{"round": 0, "winners": [], "ties": ' +
                     b'[[0, 1], [2, 3], [4, 5], [6, 7]]}', b" " * (MAX_BODY + 1),
                     json.dumps({"round": 0, "good": [1] * (MAX_BODY // 2), "best": 1}).encode()]),
    st.binary(max_size=64),
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # allow_nan: NaN/Infinity reach the server on purpose


bodies = st.one_of(st.none(), submission_shaped().map(_dumps), json_values.map(_dumps), raw_bodies)
number_strings = st.one_of(st.integers(-5, 12).map(str), st.integers(0, 10**12).map(str),
                           st.integers(1, 5000).map(lambda n: "9" * n),
                           st.sampled_from(["00", "007", "+1", "1e3", "0x1", "\u0663", "\u00b2", "", " 1", "-0"]))


@st.composite
def paths(draw, kind: str) -> str:
    choice = draw(st.integers(0, 7))
    if choice <= 2:
        return SUBMIT_PATHS[kind] if choice < 2 else SUBMIT_PATHS["pairs" if kind == "good_best" else "good_best"]
    if choice == 3:
        return f"/api/image/{quote(draw(number_strings))}/{quote(draw(number_strings))}"
    if choice == 4:
        return f"/api/best/{quote(draw(number_strings))}"
    if choice == 5:
        return draw(st.sampled_from(["/", f"/?token={TOKEN}", "/?token=wrong", "/api/state", "/static/app.js",
                                     "/static/index.html", "/static/..%2Fserver.py", "/api/", "/api/image/0/0"]))
    return "/" + quote(draw(printable), safe="/?=&")


@st.composite
def headers(draw, path: str) -> tuple[dict[str, str], bool, bool, bool]:
    """(headers, authed, host ok, same origin): right in every respect about half the time."""
    right = draw(st.booleans())
    cookie, authed = draw(st.sampled_from([(f"hero_token={TOKEN}", True), (f"a=b; hero_token={TOKEN}", True),
                                           (None, False), ("hero_token=wrong-wrong-wrong", False),
                                           (f"hero_token={TOKEN}x", False), (f"hero_token_1={TOKEN}", False),
                                           (f'hero_token="{TOKEN}', False), ("hero_token", False)])
                          | printable.map(lambda t: (t, False))) if not right else (f"hero_token={TOKEN}", True)
    host = HOSTS_OK[0] if right else draw(st.sampled_from([*HOSTS_OK, "evil.example:8765", "127.0.0.1:abc", "",
                                                            "127.0.0.1.evil.example", "::1"]) | printable)
    origin = None if right and draw(st.booleans()) else draw(st.sampled_from(
        [None, "own", "http://127.0.0.1:1", f"https://{host}", "null", "http://evil.example"]) | printable)
    site = draw(st.sampled_from([None, "same-origin", "cross-site", "same-site", "none"]) | printable)
    ctype = "application/json" if right else draw(st.sampled_from(
        [None, "application/json", "application/json; charset=utf-8", "text/plain", "multipart/form-data"])
        | printable)
    h = {"host": host, "cookie": cookie, "origin": f"http://{host}" if origin == "own" else origin,
         "sec-fetch-site": site, "content-type": ctype}
    same_origin = origin in (None, "own") and site in (None, "same-origin")
    return {k: v for k, v in h.items() if v is not None}, authed, host in HOSTS_OK, same_origin


@st.composite
def valid_bodies(draw, kind: str) -> bytes:
    """A submission the waiting round of ``kind`` accepts (so the fuzz also reaches past every check)."""
    if kind == "good_best":
        good = draw(st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True))
        return _dumps({"round": 0, "good": good, "best": draw(st.sampled_from(good))})
    winners, ties = [], []
    for p in PAIRS:
        (ties if draw(st.booleans()) else winners).append(list(p) if draw(st.booleans()) else [p[1], p[0]])
    return _dumps({"round": 0, "winners": winners, "ties": ties})


@st.composite
def requests(draw) -> Req:
    """A random request; one in four is aimed: a POST to the round's own endpoint, body near or at a valid one."""
    kind = draw(st.sampled_from(["good_best", "pairs"]))
    aimed = draw(st.integers(0, 3)) == 0
    path = SUBMIT_PATHS[kind] if aimed else draw(paths(kind))
    method = "POST" if aimed else draw(st.sampled_from(["POST", "POST", "GET", "GET", "HEAD", "PUT", "DELETE",
                                                         "OPTIONS"]))
    hdrs, authed, host_ok, same_origin = draw(headers(path))
    if aimed:
        body = draw(st.one_of(valid_bodies(kind), submission_shaped().map(_dumps)))
    else:
        body = draw(bodies) if method in ("POST", "PUT") else None
    return Req(kind, method, path, hdrs, body, draw(st.booleans()) and body is not None, authed, host_ok, same_origin)


# -- the property -------------------------------------------------------------------------------------------------

def send(target: Target, req: Req) -> int:
    """Send ``req`` through the target's client (no cookie jar: the Cookie header is exactly the generated one)."""
    target.client.cookies.clear()  # a login's Set-Cookie must not sign later requests in
    content = None if req.body is None else (iter([req.body[:100], req.body[100:]]) if req.chunked else req.body)
    return target.client.request(req.method, req.path, headers=req.headers, content=content).status_code


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> dict[str, Target]:
    base = tmp_path_factory.mktemp("fuzz")
    out = {kind: Target(base, kind) for kind in SUBMIT_PATHS}
    yield out
    for t in out.values():
        t.close()


def test_fuzz_no_5xx_no_state_change_no_unauthenticated_success(targets):
    stats: Counter = Counter()

    @settings(max_examples=N, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(req=requests())
    def one(req: Req) -> None:
        target = targets[req.kind]
        before = target.log()
        status = send(target, req)
        changed = target.log() != before
        if changed:  # the next example (and hypothesis's replay of a failing one) starts from a waiting round
            target.reset()
        accepted = 200 <= status < 300 and req.method == "POST"
        stats["requests"] += 1
        stats[f"{status // 100}xx"] += 1
        stats["5xx"] += 0
        stats["state changes on rejected requests"] += changed and not accepted
        stats["unauthenticated 2xx"] += 200 <= status < 300 and not (req.authed and req.host_ok)
        assert status < 500, (status, req)
        assert not (200 <= status < 300) or (req.authed and req.host_ok), ("2xx without credentials", status, req)
        valid = valid_submission(req)
        stats["valid submissions refused"] += valid and not accepted
        if accepted or changed:
            assert accepted and changed and valid, ("state changed", status, req)
            stats["valid submissions accepted"] += 1
        assert accepted or not valid, ("a valid submission refused", status, req)

    one()
    print("\nfuzz:", dict(sorted(stats.items())))
    assert stats["requests"] >= N
