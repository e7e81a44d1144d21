"""uvicorn's h11 protocol with the two bounds on connections it lacks (`dmlm serve` runs on it).

- At most `max_connections` open at once: one past it is answered 503 (with Retry-After) and
  closed at once, so a flood of connections costs a bounded number of file descriptors. uvicorn's
  own `limit_concurrency` answers 503 only once a request's headers have arrived, and never
  closes a connection that sends none. (asyncio accepts a burst of connections in one go before
  any is refused, so a flood can hold more descriptors for one turn of the event loop; what is
  bounded is what stays open.)
- A connection with no request in progress (just opened, or after its last response) must
  complete a request's headers within `receive_seconds`, or it is closed (with 408 if it had sent
  part of them). uvicorn times out only a keep-alive connection that sends nothing; one that
  sends half a request line, or stops in the middle of a body that was already answered (413),
  would stay open for ever. A body that stalls while a route waits for it is the ASGI
  middleware's to answer (`dmlm.serve.guards.BodyLimit`: 408).

Only public hooks of the protocol are overridden (`connection_made`, `connection_lost`,
`on_response_complete`); a request in progress is `self.cycle` until its response completes.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.h11_impl import H11Protocol


def _raw_response(status: str, message: str, code: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 response that closes the connection, in the server's error shape."""
    body = json.dumps({"error": {"message": message, "type": "server_busy" if status.startswith("503") else
                                 "invalid_request_error", "param": None, "code": code}}).encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{extra}\r\n")
    return head.encode("latin-1") + body


def bounded_protocol(max_connections: int, receive_seconds: float) -> type[H11Protocol]:
    """The protocol class for `uvicorn.Config(http=...)` with these bounds."""
    refused = _raw_response("503 Service Unavailable", f"the server has {max_connections} connections open, as many "
                            "as it takes (max_connections, set with `dmlm serve --max-connections`); retry shortly",
                            "max_connections", "retry-after: 1\r\n")
    too_slow = _raw_response("408 Request Timeout", f"the request's headers did not arrive within {receive_seconds:g} s "
                             "(receive_seconds, set with `dmlm serve --receive-seconds`)", "receive_seconds")

    class BoundedH11Protocol(H11Protocol):
        _idle_timer = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(refused)
                transport.close()
                return
            self._arm()

        def connection_lost(self, exc) -> None:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self._idle_timer = self.loop.call_later(receive_seconds, self._idle_check)

        def _idle_check(self) -> None:
            self._idle_timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return  # a request in progress: its body's deadline is BodyLimit's, its answer the model's
            if self.conn.trailing_data[0]:  # part of a request arrived
                self.transport.write(too_slow)
            self.transport.close()

    return BoundedH11Protocol
