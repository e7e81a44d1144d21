"""ASGI middlewares in front of every route of `dmlm serve`: what a request may be before any route sees it.

- `BodyLimit`: a body over `max_upload_bytes` gets 413 (before a byte is read when Content-Length
  says so; a chunked body is read up to the limit and no further); a body that does not arrive
  within `receive_seconds` gets 408 and its connection is closed (a client that declares 5,000
  bytes and sends 7 cannot hold a connection, a file descriptor and a task forever); a request
  that the server's shutdown cancels (`--shutdown-seconds` ran out while it waited) gets 503 with
  Retry-After instead of uvicorn's 500 and a traceback.
- `HostCheck`: a Host header must name this server (DNS rebinding: a web page whose name is made
  to resolve to 127.0.0.1 would otherwise reach a keyless server on loopback from the visitor's
  browser). IP addresses are always allowed (a page served from an address is not rebinding),
  so are localhost, this machine's name, `--host` and `--allowed-hosts`.

The connections themselves (how many may be open, how long one may take to send its headers)
are bounded in `dmlm.serve.connections`, below ASGI.
"""

from __future__ import annotations

import asyncio
import ipaddress
from urllib.parse import urlsplit

from dmlm.serve.media import error_response


class BodyLimit:
    """ASGI middleware: a body's size and time to arrive, and the answer a cancelled request gets (see above)."""

    def __init__(self, app, max_bytes: int, seconds: float):
        self.app, self.max_bytes, self.seconds = app, max_bytes, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _reply(send, 400, "Content-Length is not a number", None)
            if size > self.max_bytes:
                return await _reply(send, 413, *_too_large(size, self.max_bytes))
        state = _Exchange(receive, send, asyncio.get_running_loop().time() + self.seconds, self.seconds)
        try:
            if declared is None and b"chunked" in headers.get(b"transfer-encoding", b""):
                receive = await self._read_chunked(state)
                if receive is None:
                    return
            else:
                receive = state.receive
            await self.app(scope, receive, state.send)
        except asyncio.CancelledError:
            if state.answered:
                return
            if state.started:
                raise
            # uvicorn cancels what is still running when --shutdown-seconds runs out: answered, not a 500
            await _reply(send, 503, "the server is shutting down; retry shortly (on its next start)", "shutting_down",
                         {"Retry-After": "5", "Connection": "close"}, "server_busy")

    async def _read_chunked(self, state: _Exchange):
        """A body without a declared length, read up to the limit; a `receive` that replays it (None: answered)."""
        chunks, total = [], 0
        while True:
            msg = await state.receive()
            if msg["type"] != "http.request":
                return None  # the client went away, or took too long (answered 408)
            chunks.append(msg.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                await _reply(state.raw_send, 413, *_too_large(total, self.max_bytes, "at least "))
                state.answered = True
                return None
            if not msg.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await state.raw_receive()

        return replay


class _Exchange:
    """One request's `receive` with the body deadline, and its `send`, silenced once the middleware has answered."""

    def __init__(self, receive, send, deadline: float, seconds: float):
        self.raw_receive, self.raw_send, self.deadline, self.seconds = receive, send, deadline, seconds
        self.body_done = self.started = self.answered = False

    async def receive(self):
        if self.body_done:  # after the body: a wait for the client to disconnect, which has no deadline
            return await self.raw_receive()
        try:
            msg = await asyncio.wait_for(self.raw_receive(), self.deadline - asyncio.get_running_loop().time())
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
            if not self.started and not self.answered:
                self.answered = True
                await _reply(self.raw_send, 408, f"the request body did not arrive within {self.seconds:g} s "
                             "(receive_seconds, set with `dmlm serve --receive-seconds`)", "receive_seconds",
                             {"Connection": "close"})
            return {"type": "http.disconnect"}  # the app stops reading; whatever it answers is dropped
        if msg["type"] != "http.request" or not msg.get("more_body"):
            self.body_done = True
        return msg

    async def send(self, message):
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self.raw_send(message)


class HostCheck:
    """ASGI middleware: 400 for a Host header that names none of `allowed` (None: any host; see above)."""

    def __init__(self, app, allowed: set[str] | None):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and self.allowed is not None:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            name = host_name(host)
            if name and not _is_ip(name) and name not in self.allowed:
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                return await _reply(send, 400, f"the Host header names {host!r}, which this server does not answer "
                                    f"to (a guard against DNS rebinding); it answers to IP addresses and "
                                    f"{', '.join(sorted(self.allowed))}; add the name with `dmlm serve "
                                    f"--allowed-hosts {name}`", "host_not_allowed")
        return await self.app(scope, receive, send)


def host_name(host: str) -> str:
    """A Host header's name, lowercased, without its port or a final dot ('[::1]:8000' -> '::1')."""
    try:
        name = urlsplit("//" + host.strip()).hostname or ""
    except ValueError:  # e.g. an unclosed '['
        return host
    return name.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


async def _reply(send, status: int, message: str, code: str | None, headers: dict | None = None,
                 kind: str = "invalid_request_error") -> None:
    r = error_response(status, message, None, code, kind, headers)
    await send({"type": "http.response.start", "status": status, "headers": r.raw_headers})
    await send({"type": "http.response.body", "body": r.body})


def _too_large(size: int, limit: int, prefix: str = "") -> tuple[str, str]:
    return (f"the request body is {prefix}{size} bytes, more than this server accepts ({limit}; max_upload_bytes, set "
            "with `dmlm serve --max-upload-bytes`)", "max_upload_bytes")
