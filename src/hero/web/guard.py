"""The server's gate: everything between a connection and the app (ASGI middleware, body reader, HTTP protocol).

Protection, in the order it applies:

* connections (``SlowClientProtocol``, uvicorn's h11 protocol with deadlines): a connection must deliver a complete
  request head within ``HEADER_TIMEOUT`` s of opening (or of its previous response), else it gets 408 and is
  closed; beyond ``MAX_WAITING`` connections waiting for their head, a new one closes the oldest of them (those
  waiting for over ``EVICT_AFTER`` s), so clients that open connections and never finish a request cannot pile
  up, and there is no overall connection cap for them to fill (uvicorn's ``limit_concurrency`` counted stuck
  connections, so 128 of them locked the page out with 503s);
* a Host header outside the allow-list, or one that does not parse, gets 400 (DNS rebinding);
* every request needs the token, as the cookie set from the printed URL (401 otherwise; the token is accepted in
  the URL of the page only, and moves into an HttpOnly, SameSite=Strict cookie);
* a POST must come from the page's own origin (403 otherwise): an ``Origin`` header, when present, must be exactly
  ``http://`` + the Host the request came to (scheme, host and port: another port on 127.0.0.1 is another origin
  even though it is the same *site*, so SameSite cookies alone do not stop it), and ``Sec-Fetch-Site``, when
  present, must be ``same-origin``. A POST with neither header is accepted: every current browser sends
  ``Origin`` on a POST made by ``fetch``, same-origin ones included, so a request without it is not from a
  browser, and a non-browser client holding the cookie is not a cross-site forgery;
* a POST must be JSON (415), with a well-formed Content-Length (400) of at most ``MAX_BODY`` bytes (413), read in
  full within ``BODY_TIMEOUT`` s (408), nested at most ``MAX_JSON_DEPTH`` deep, without duplicate keys or
  NaN/Infinity (400) (``read_json``);
* every response carries the security headers below.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["BODY_TIMEOUT", "EVICT_AFTER", "HEADER_TIMEOUT", "MAX_BODY", "MAX_JSON_DEPTH", "MAX_WAITING", "Guard",
           "RequestError", "SlowClientProtocol", "error_response", "json_depth", "load_token", "parse_json",
           "read_body", "read_json", "split_host"]

MAX_BODY = 64 * 1024  # a 64-image submission is < 1 kB; anything near this is not from the page
MAX_JSON_DEPTH = 8  # the deepest body the page sends is 3 ({"winners": [[w, l]]}); json.loads recurses per level
HEADER_TIMEOUT = 5.0  # s for a request head: a browser sends it in one packet, a slow-loris client never finishes
BODY_TIMEOUT = 5.0  # s for the whole body (≤ 64 kB over loopback takes microseconds)
MAX_WAITING = 64  # connections waiting for a request head at once; a browser keeps about 6 per host
EVICT_AFTER = 1.0  # s a connection may wait before it can be closed to make room (a browser sends in ms)
_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"), (b"cache-control", b"no-store"),
            (b"content-security-policy", b"default-src 'self'; img-src 'self'; frame-ancestors 'none'")]
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9.\-_]+)(?::([0-9]{1,5}))?")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,12}")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def load_token(run_dir: str | Path) -> str:
    """The run's web token, created once (mode 0600) so a restarted server keeps the open page's cookie valid."""
    path = Path(run_dir) / ".web-token"
    if path.is_file():
        token = path.read_text().strip()
        if len(token) >= 16:
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def split_host(value: str) -> tuple[str, int | None] | None:
    """(host name, port or None) of a Host header value ("127.0.0.1:8765", "[::1]:8765"); None if malformed."""
    m = _HOST.fullmatch(value.strip().lower())
    if m is None:
        return None
    port = int(m.group(2)) if m.group(2) else None
    if port is not None and not 0 < port < 65536:
        return None
    return m.group(1).strip("[]"), port


def _host_name(host: str) -> str:
    """The name part of an allow-list entry (a bare name, or one with a port or brackets)."""
    parsed = split_host(host)
    return parsed[0] if parsed else host.strip().lower().strip("[]")


def _origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin header; None unless it is a plain http(s) origin ("null" is not)."""
    try:
        parts = urlsplit(value.strip().lower())
        port = parts.port
    except ValueError:  # a port that is not a number
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment \
            or parts.username is not None:
        return None
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, default if port is None else port  # ":0" is port 0, not the default


def _cross_origin(headers: dict[str, str], host: tuple[str, int | None]) -> str | None:
    """Why a POST is not from the page's own origin (``http://`` + the Host it came to), or None when it is."""
    origin = headers.get("origin")
    if origin is not None and _origin(origin) != ("http", host[0], 80 if host[1] is None else host[1]):
        return f"cross-origin request from {origin[:100]} refused"
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() != "same-origin":
        return f"cross-origin request (Sec-Fetch-Site: {site[:40]}) refused"
    return None


class Guard:
    """ASGI middleware: Host allow-list, token cookie, same-origin JSON POSTs, body size, security headers."""

    def __init__(self, app, token: str, cookie: str, allowed_hosts: Iterable[str]) -> None:
        self.app, self.token, self.cookie = app, token, cookie
        self.allowed = {_host_name(h) for h in allowed_hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        response = self._reject(scope, headers)
        if response is None and scope["path"] == "/" and scope["method"] == "GET":
            response = self._login(scope)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + _HEADERS
            await send(message)

        if response is not None:
            return await response(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)

    def _reject(self, scope, headers: dict[str, str]) -> Response | None:
        api = scope["path"].startswith("/api/")
        host = split_host(headers.get("host", ""))
        if host is None or host[0] not in self.allowed:
            return _error(400, "bad Host header: this server only answers to " + ", ".join(sorted(self.allowed)), api)
        if not self._has_token(headers) and not _query_token(scope):
            return _error(401, "missing or wrong token: open the URL that hero printed (it ends in ?token=...)", api)
        if scope["method"] == "POST":
            refused = _cross_origin(headers, host)
            if refused is not None:
                return _error(403, refused, api)
            if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return _error(415, "the body must be JSON (Content-Type: application/json)", api)
            length = headers.get("content-length")
            if length is not None and not _CONTENT_LENGTH.fullmatch(length.strip()):
                return _error(400, "bad Content-Length header", api)
            if length is not None and int(length) > MAX_BODY:
                return _error(413, f"request body too large (limit {MAX_BODY} bytes)", api)
        return None

    def _has_token(self, headers: dict[str, str]) -> bool:
        jar = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is just "no token"
            return False
        morsel = jar.get(self.cookie)
        return morsel is not None and hmac.compare_digest(morsel.value.encode(), self.token.encode())

    def _login(self, scope) -> Response | None:
        given = _query_token(scope)
        if given is None:
            return None
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return _error(401, "wrong token: open the URL that hero printed", api=False)
        # The token moves from the URL (history, screen) into an HttpOnly cookie for this origin only.
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
        return response


def _query_token(scope) -> str | None:
    if scope["path"] != "/" or scope["method"] != "GET":
        return None  # the token is accepted in the URL of the page only, never in API calls
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


def _error(status: int, message: str, api: bool = True, close: bool = False) -> Response:
    """The error answer: JSON ``{error, status}`` for the API, text for the page; ``close`` ends the connection."""
    headers = {"connection": "close"} if close else None  # the unread rest of a body must not become a request
    if api:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)
    return PlainTextResponse(f"{status}: {message}\n", status_code=status, headers=headers)


error_response = _error  # the app's handlers answer errors in the same shape


class RequestError(Exception):
    """A request body refused before it reaches the session: the HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(receive: Callable[[], Awaitable[dict]], limit: int = MAX_BODY,
                    timeout: float | None = None) -> bytes:
    """The request body, at most ``limit`` bytes (413), all of it within ``timeout`` s (408; default BODY_TIMEOUT).

    Also caps bodies sent without a Content-Length (chunked) and ones whose Content-Length promises more than
    is sent: without the deadline such a request would hold its connection and its task forever.
    """
    timeout = BODY_TIMEOUT if timeout is None else timeout  # read at call time, so a test can shorten it
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    body = bytearray()
    while True:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise RequestError(408, f"the request body did not arrive within {timeout:g} s") from None
        if message["type"] == "http.disconnect":
            raise RequestError(400, "the client closed the connection before sending the body")
        body += message.get("body", b"")
        if len(body) > limit:
            raise RequestError(413, f"request body too large (limit {limit} bytes)")
        if not message.get("more_body", False):
            return bytes(body)


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in ``body`` (brackets inside strings do not count)."""
    depth = deepest = 0
    for c in _JSON_STRING.sub(b'""', body):
        step = _BRACKETS.get(c)
        if step is not None:
            depth += step
            deepest = max(deepest, depth)
    return deepest


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):  # {"round": 0, "round": 1}: which one did the client mean?
        raise ValueError("a key appears twice in an object")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``, or RequestError 400: invalid, too deep, a duplicate key, NaN/Infinity."""
    if json_depth(body) > MAX_JSON_DEPTH:  # checked first: json.loads recurses and would blow the stack
        raise RequestError(400, f"the body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # ValueError covers bad UTF-8 and over-long integers too
        raise RequestError(400, f"the body is not valid JSON ({str(e)[:100]})") from None


async def read_json(receive: Callable[[], Awaitable[dict]]) -> Any:
    """Read (``read_body``) and parse (``parse_json``) a request's JSON body; RequestError when refused."""
    return parse_json(await read_body(receive))


class SlowClientProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head and a cap on connections waiting for one.

    A connection is *waiting* whenever no request of it is being answered: from when it opens, and again from
    each response's end (the next request, or the rest of a body the app refused unread). Waiting longer than
    ``HEADER_TIMEOUT`` s closes it (with a 408 when no response is due). uvicorn alone has no such limit: its
    keep-alive timer is cancelled by the first byte, so a client sending a byte a second stays forever.
    """

    header_timeout = HEADER_TIMEOUT
    max_waiting = MAX_WAITING
    evict_after = EVICT_AFTER

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        """Accept the connection, start its head deadline, and make room among the waiting connections."""
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0
        super().connection_made(transport)  # type: ignore[arg-type]
        self._evict_oldest()
        self._sync_deadline()

    def data_received(self, data: bytes) -> None:
        """Parse as uvicorn does; a completed head stops the deadline."""
        super().data_received(data)
        self._sync_deadline()

    def on_response_complete(self) -> None:
        """The response is out: the connection waits again (for its next request), under a fresh deadline."""
        super().on_response_complete()
        self._sync_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the deadline with the connection."""
        self._stop_deadline()
        super().connection_lost(exc)

    def _busy(self) -> bool:
        """Whether a request of this connection is being answered (its head arrived, its response is not out)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _sync_deadline(self) -> None:
        if self._busy():
            self._stop_deadline()
        elif self._deadline is None and not self.transport.is_closing():
            self._waiting_since = self.loop.time()
            self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        """The head did not arrive in time: answer 408 if nothing else is due on this connection, then close."""
        self._deadline = None
        if self.transport.is_closing() or self._busy():
            return
        if self.conn.our_state is h11.IDLE:  # no response of ours is open: a 408 cannot be mistaken for one
            self.transport.write(_TIMEOUT_408)
        self.transport.close()

    def _evict_oldest(self) -> None:
        """Close the longest-waiting connections beyond ``max_waiting`` (this new one always gets in).

        Only connections that have waited ``evict_after`` s are closed: a burst of connections is accepted
        before any of them is read, so the young ones may well have their whole head in the socket buffer.
        """
        waiting = [p for p in self.connections
                   if p is not self and isinstance(p, SlowClientProtocol) and p._deadline is not None]
        excess = len(waiting) + 1 - self.max_waiting
        if excess <= 0:
            return
        old_enough = self.loop.time() - self.evict_after
        stale = sorted((p for p in waiting if p._waiting_since <= old_enough), key=lambda p: p._waiting_since)
        for p in stale[:excess]:
            p._stop_deadline()
            p.transport.close()
