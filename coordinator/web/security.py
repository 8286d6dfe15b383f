"""Who may use the workspace: a start-up token, a session cookie, CSRF tokens, safe binding.

As Jupyter does, the server draws a random token at start and prints a URL carrying it. The
first request with `?token=...` opens a session: the server remembers a random session id
(sent back as an HttpOnly, SameSite=Strict cookie) and redirects to the same page without the
token, so it does not linger in the address bar or the history. Every other request needs that
cookie: without it the answer is 401, whatever the path (static files too). Each session has
its own CSRF token, embedded in every form; a POST without the matching token gets 403. A
server that listens beyond loopback must use TLS, or it refuses to start.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

COOKIE = "bridgestat_session"
LANG_COOKIE = "bridgestat_lang"
TOKEN_PARAM = "token"
CSRF_FIELD = "csrf"
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
"""Pages load only their own scripts; styles may be inline (the study report's), images may
be data: URIs (the charts)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BindError(ValueError):
    """A listening address the workspace refuses (not loopback and no TLS)."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, certfile: str | None, keyfile: str | None) -> None:
    """Refuse a non-loopback address without TLS, and half a TLS pair."""
    if bool(certfile) != bool(keyfile):
        raise BindError("--certfile and --keyfile go together: give both or neither")
    if not is_loopback(host) and not certfile:
        raise BindError(
            f"--host {host}: the workspace serves budget-spending pages; beyond loopback "
            "(127.0.0.1, ::1) it needs TLS: give --certfile and --keyfile, or keep the "
            "default --host 127.0.0.1 and use an SSH tunnel")


@dataclass(frozen=True)
class Session:
    """One browser's session: its id (the cookie), its CSRF token and who it is."""

    id: str
    csrf: str
    user: str
    opened: float


class Sessions:
    """The start-up token and the sessions it opened (in memory: a restart signs all out)."""

    def __init__(self, token: str | None = None, user: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(32)
        self.user = user
        self._sessions: dict[str, Session] = {}

    def open(self) -> Session:
        ident = secrets.token_urlsafe(32)
        user = self.user or f"session-{ident[:8]}"
        session = Session(ident, secrets.token_urlsafe(32), user, time.time())
        self._sessions[ident] = session
        return session

    def find(self, ident: str | None) -> Session | None:
        return self._sessions.get(ident) if ident else None

    def token_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def csrf_ok(session: Session, given: str | None) -> bool:
    """The form's CSRF token is the session's (compared in constant time)."""
    return given is not None and hmac.compare_digest(given.encode(), session.csrf.encode())


def cookie_value(scope: Scope, name: str) -> str | None:
    """A cookie of the request, or None."""
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # noqa: BLE001 - a malformed cookie header is no session
                return None
            if name in jar:
                return jar[name].value
    return None


class Guard:
    """ASGI middleware: opens a session for the token, refuses requests without one (401),
    adds security headers, and puts the session in `scope["session"]`."""

    def __init__(self, app: ASGIApp, sessions: Sessions, secure: bool) -> None:
        self.app, self.sessions, self.secure = app, sessions, secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                          keep_blank_values=True)
        token = next((v for k, v in query if k == TOKEN_PARAM), None)
        if token is not None and self.sessions.token_ok(token):
            await self._open_session(scope, query, send)
            return
        session = self.sessions.find(cookie_value(scope, COOKIE))
        if session is None:
            await _plain(send, 401, "401 Unauthorized: open the workspace with the URL that "
                         "`bridgestat web` printed (it carries the access token).")
            return
        scope["session"] = session
        await self.app(scope, receive, self._with_headers(send))

    async def _open_session(self, scope: Scope, query: list[tuple[str, str]],
                            send: Send) -> None:
        session = self.sessions.open()
        rest = urlencode([(k, v) for k, v in query if k != TOKEN_PARAM])
        location = scope.get("path", "/") + (f"?{rest}" if rest else "")
        cookie = f"{COOKIE}={session.id}; Path=/; HttpOnly; SameSite=Strict"
        if self.secure:
            cookie += "; Secure"
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", location.encode("latin-1")),
                                (b"set-cookie", cookie.encode("latin-1")),
                                *_security_headers()]})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    def _with_headers(send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_security_headers()]
            await send(message)
        return wrapped


def _security_headers() -> list[tuple[bytes, bytes]]:
    return [(b"content-security-policy", CSP.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cache-control", b"no-store")]


async def _plain(send: Send, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            *_security_headers()]})
    await send({"type": "http.response.body", "body": text.encode()})
