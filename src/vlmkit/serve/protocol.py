"""uvicorn's HTTP/1.1 protocol with the changes `vlmkit serve` needs against slow and greedy clients, and
malformed requests answered in OpenAI's error shape; uvicorn's server that stops generating when it shuts down.

uvicorn closes a keep-alive connection that stays idle after a response (`timeout_keep_alive`), but
not a new connection that never sends a request, nor one that sends its headers a byte at a time, nor
one that sends its headers and then stalls in the body: each holds a file descriptor and a place under
the connection limit for as long as the client likes, and a few hundred of them make the server answer
503. Here a connection must complete its request line and headers within `HEADER_TIMEOUT` seconds of
opening or of the previous response, and its body within `body_timeout` seconds of the headers (408
beyond); one client address may hold `max_connections_per_client` connections (more are closed at
once), so one client cannot fill the limit alone; and `/health` is answered even at the limit, so a
supervisor tells a busy server from a dead one.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0
# After SIGTERM, requests still running this long (a body or a media fetch arriving) are cancelled.
SHUTDOWN_GRACE = 3.0


class StoppingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM or Ctrl-C waits for every request in flight to finish: here the
    engine's `shut_down` is called first, so generations stop at their next token and their requests are
    answered 503 at once, and the process exits in seconds instead of after the longest generation."""

    def __init__(self, config: uvicorn.Config, shut_down: Callable[[], None]):
        super().__init__(config)
        self.shut_down = shut_down

    async def shutdown(self, sockets: list | None = None) -> None:
        self.shut_down()
        await super().shutdown(sockets)


def timed_protocol(body_timeout: float, max_connections_per_client: int) -> type[TimedH11Protocol]:
    """The protocol class for one server (its own count of connections per client address)."""
    settings = {"body_timeout": body_timeout, "max_connections_per_client": max_connections_per_client,
                "open_per_client": Counter()}  # fmt: skip
    return type("TimedH11Protocol", (TimedH11Protocol,), settings)


class TimedH11Protocol(H11Protocol):
    body_timeout: float = 60.0
    max_connections_per_client: int = 128
    open_per_client: Counter[str] = Counter()  # open connections per client address, of this server
    header_timer: asyncio.TimerHandle | None = None
    body_timer: asyncio.TimerHandle | None = None
    address: str | None = None  # the client's address, while counted in `open_per_client`
    _limit: int | None = None

    @property  # uvicorn reads it when a request's headers are in: 503 when as many connections are open
    def limit_concurrency(self) -> int | None:  # type: ignore[override]
        if self.scope is not None and self.scope["path"] == "/health":
            return None  # a supervisor's probe is answered even when the server is full
        return self._limit

    @limit_concurrency.setter
    def limit_concurrency(self, value: int | None) -> None:
        self._limit = value

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else None
        if address is not None and self.open_per_client[address] >= self.max_connections_per_client:
            self.transport.close()  # before reading anything: one client must not hold every connection
            return
        if address is not None:
            self.address = address
            self.open_per_client[address] += 1
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._cancel_header_timer()
        if self.conn.their_state is h11.SEND_BODY:
            if self.body_timer is None:
                self.body_timer = self.loop.call_later(self.body_timeout, self._body_too_slow)
        else:
            self._cancel_body_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE:  # waiting for the next request on this connection
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        if self.address is not None:
            self.open_per_client[self.address] -= 1
            if self.open_per_client[self.address] <= 0:
                del self.open_per_client[self.address]
            self.address = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse: OpenAI's error shape (uvicorn's own answer is plain text)."""
        self._send_error_and_close(400, b"Bad Request", f"malformed HTTP request ({msg})")

    def _send_error_and_close(self, status: int, reason: bytes, message: str) -> None:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        data = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (b"connection", b"close"),
        ]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason)))
            self.transport.write(self.conn.send(h11.Data(data=data)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # a response was already started on this connection
            pass
        self.transport.close()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self.header_timer = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _cancel_body_timer(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def _body_too_slow(self) -> None:
        """The body did not arrive in time: answer 408 and close; the handler waiting for the body is told
        the client is gone (its own answer is dropped)."""
        self.body_timer = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.response_started = True  # the handler can no longer start one of its own
            self._send_error_and_close(
                408, b"Request Timeout",
                f"the request body did not arrive within {self.body_timeout:g} s (--body-timeout); send it at once",
            )  # fmt: skip
        else:
            self.transport.close()
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()
