"""ASGI middleware in front of everything `inkloop serve` answers (REST API and Gradio UI alike).

- `BodyLimit`: refuses a request body over ``max_bytes`` with 413, by Content-Length up front and by
  counting the bytes as they arrive, so a chunked body (no Content-Length) is bounded too.
- `AccessGuard`: who may talk to the server.
  * Bound to loopback: the Host header must name this server (``localhost``, ``127.0.0.1`` or
    ``[::1]`` with its port), which defeats DNS rebinding; a state-changing request (POST, PUT,
    PATCH, DELETE, and every websocket) must come without an Origin or from this same origin, so a
    web page elsewhere cannot act for the person. Anything else is 403 and reaches no route.
  * With a token (required when bound to any other interface): every request carries
    ``Authorization: Bearer <token>`` or the session cookie that ``/login`` sets once the token was
    typed into its form (the UI asks for it once per browser); otherwise 401 (a browser is sent to
    ``/login``). State-changing requests with an Origin must still be same-origin.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from fastapi import HTTPException

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
COOKIE = "inkloop_session"
LOGIN_PATH = "/login"


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine."""
    h = (host or "").strip().strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclass
class AccessSettings:
    """Who may use the server (`inkloop serve`)."""

    host: str = "127.0.0.1"
    """The interface the server is bound to."""
    port: int = 7860
    """The port it listens on (part of every allowed Host and Origin)."""
    token: str | None = None
    """The access token; required when `host` is not loopback (--token / INKLOOP_TOKEN)."""

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def allowed_hosts(self) -> set[str]:
        names = ("localhost", "127.0.0.1", "[::1]")
        hosts = {f"{n}:{self.port}" for n in names}
        if self.port == 80:
            hosts |= set(names)
        return hosts


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers") or []:
        out.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
    return out


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


async def _send_html(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = text.encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


async def _refuse(scope: Scope, send: Send, status: int, message: str, headers=()) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:100]})
    else:
        await _send_json(send, status, {"error": message}, list(headers))


# ----------------------------------------------------------------------------- body size
class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes the limit (an HTTPException, so FastAPI's body
    parsing re-raises it and the app's handler answers 413)."""

    def __init__(self, max_bytes: int):
        super().__init__(status_code=413, detail=f"request body over {max_bytes} bytes")


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = _headers(scope).get("content-length")
        if length is not None:
            try:
                n = int(length)
                if n < 0:
                    raise ValueError
            except ValueError:
                return await _send_json(send, 400, {"error": "invalid Content-Length header"})
            if n > self.max_bytes:
                return await _send_json(send, 413, {"error": f"request body over {self.max_bytes} bytes"})
        seen = 0
        started = False

        async def counted() -> dict[str, Any]:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body") or b"")
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return msg

        async def watch(msg: dict[str, Any]) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted, watch)
        except BodyTooLarge:
            if not started:
                await _send_json(send, 413, {"error": f"request body over {self.max_bytes} bytes"})
        except Exception as e:  # a framework that wrapped our exception (FastAPI: "error parsing the body")
            if not started and isinstance(e.__cause__ or e.__context__, BodyTooLarge):
                await _send_json(send, 413, {"error": f"request body over {self.max_bytes} bytes"})
            else:
                raise


# ----------------------------------------------------------------------------- access
_LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>inkloop: sign in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28em;margin:4em auto;padding:0 1em}}
input{{font-size:1em;padding:.4em;width:100%;box-sizing:border-box;margin:.5em 0}}</style></head>
<body><h1>inkloop</h1><p>This server needs its access token (the one it was started with:
<code>--token</code> or <code>INKLOOP_TOKEN</code>).</p>{error}
<form method="post" action="/login"><input type="password" name="token" autofocus
placeholder="access token" autocomplete="current-password"><input type="submit" value="Sign in"></form>
</body></html>"""


class AccessGuard:
    def __init__(self, app, settings: AccessSettings):
        if not settings.loopback and not settings.token:
            raise ValueError(f"binding {settings.host} exposes inkloop to the network: an access token is required")
        self.app, self.settings = app, settings
        self._hosts = settings.allowed_hosts()
        self._session = (hmac.new(settings.token.encode(), b"inkloop-session", hashlib.sha256).hexdigest()
                         if settings.token else None)

    # -- checks
    def _host_ok(self, host: str | None) -> bool:
        if not self.settings.loopback:
            return True  # exposed: the token is the check (any name may reach the machine)
        return (host or "").lower() in self._hosts

    def _origin_ok(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True  # not a browser's cross-site request (curl, the CLI, same-origin GET)
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (sandboxed frames, file://) and the like
        netloc = parts.netloc.lower()
        if self.settings.loopback:
            return netloc in self._hosts and netloc == (host or "").lower()
        return netloc == (host or "").lower()

    def _authorised(self, headers: dict[str, str]) -> bool:
        if self.settings.token is None:
            return True
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(),
                                                                    self.settings.token.encode()):
            return True
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self._session.encode()):
                return True
        return False

    # -- the middleware
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        host, origin = headers.get("host"), headers.get("origin")
        method = scope.get("method", "GET").upper()
        if not self._host_ok(host):
            return await _refuse(scope, send, 403, f"Host {host!r} is not this server; use http://127.0.0.1:"
                                                   f"{self.settings.port}/")
        if (scope["type"] == "websocket" or method in STATE_CHANGING) and not self._origin_ok(origin, host):
            return await _refuse(scope, send, 403, f"cross-origin request from {origin!r} refused")
        path = scope.get("path", "")
        if self.settings.token is not None and path == LOGIN_PATH and scope["type"] == "http":
            return await self._login(scope, receive, send, method)
        if not self._authorised(headers):
            if scope["type"] == "http" and method == "GET" and "text/html" in headers.get("accept", ""):
                return await _send_html(send, 303, "", [(b"location", LOGIN_PATH.encode())])
            return await _refuse(scope, send, 401, "this server needs its access token: "
                                                   "send 'Authorization: Bearer <token>'",
                                 [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send, method: str) -> None:
        if method == "GET":
            return await _send_html(send, 200, _LOGIN_PAGE.format(error=""))
        if method != "POST":
            return await _send_json(send, 405, {"error": "use GET or POST"})
        body, more = b"", True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            body += msg.get("body") or b""
            more = msg.get("more_body", False)
            if len(body) > 10_000:
                return await _send_json(send, 413, {"error": "login form too large"})
        try:
            typed = parse_qs(body.decode("utf-8"), max_num_fields=5).get("token", [""])[0]
        except (UnicodeDecodeError, ValueError):
            typed = ""
        if not hmac.compare_digest(typed.encode(), self.settings.token.encode()):
            page = _LOGIN_PAGE.format(error=f"<p style='color:#b00'>{html.escape('That is not the token.')}</p>")
            return await _send_html(send, 401, page)
        cookie = f"{COOKIE}={self._session}; Path=/; HttpOnly; SameSite=Strict"
        await _send_html(send, 303, "", [(b"location", b"/"), (b"set-cookie", cookie.encode())])
