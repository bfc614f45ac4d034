"""The server's gate (ASGI middleware) and the run's token: everything between a request and the app.

Protection: a Host header outside the allow-list gets 400 (DNS rebinding); every request needs the token, as the
cookie set from the printed URL (401 otherwise; the token is accepted in the URL of the page only, and moves into
an HttpOnly, SameSite=Strict cookie); a POST must be JSON from the page's own origin (403 otherwise), at most
``MAX_BODY`` bytes (413); every response carries the security headers below.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Iterable
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

__all__ = ["MAX_BODY", "Guard", "error_response", "load_token"]

MAX_BODY = 64 * 1024  # a 64-image submission is < 1 kB; anything near this is not from the page
_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"), (b"cache-control", b"no-store"),
            (b"content-security-policy", b"default-src 'self'; img-src 'self'; frame-ancestors 'none'")]


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


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8765
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


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
        if _host_name(headers.get("host", "")) not in self.allowed:
            return _error(400, "bad Host header: this server only answers to " + ", ".join(sorted(self.allowed)), api)
        if not self._has_token(headers) and not _query_token(scope):
            return _error(401, "missing or wrong token: open the URL that hero printed (it ends in ?token=...)", api)
        if scope["method"] == "POST":
            origin = headers.get("origin")
            if origin is not None and _host_name(origin.split("://", 1)[-1]) not in self.allowed:
                return _error(403, f"cross-origin request from {origin} refused", api)
            if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return _error(415, "the body must be JSON (Content-Type: application/json)", api)
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
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


def _error(status: int, message: str, api: bool = True) -> Response:
    if api:
        return JSONResponse({"error": message, "status": status}, status_code=status)
    return PlainTextResponse(f"{status}: {message}\n", status_code=status)


error_response = _error  # the app's handlers answer errors in the same shape
