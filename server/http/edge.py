"""The HTTP edge below the app: aiohttp's own parser errors as JSON, a cap on
connections still sending their request head (slowloris), a header timeout,
and security headers on every response.

aiohttp answers parser errors (a 100 KB header, a bad request line) itself, in
``RequestHandler.handle_error``, before any middleware runs, as text/plain; and
it holds a connection that never finishes its head for the whole keep-alive
timeout. Neither is reachable from the app, so :class:`EdgeAppRunner` serves
the app through :class:`EdgeServer`, whose protocol is
:class:`EdgeRequestHandler`. ``huddle serve`` runs through :func:`serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Protocol

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from server.config import Config, HttpSettings

logger = logging.getLogger(__name__)

#: No version: a banner with versions only helps whoever scans for old ones.
SERVER_HEADER = "huddle"
# aiohttp's default is 3630 s (longer than any proxy's); run_app's is 75 s.
KEEPALIVE_TIMEOUT_S = 75.0

_PARSER_CODES = {400: "bad_request", 413: "payload_too_large", 431: "headers_too_large"}


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def raw_error(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response, for the paths that have no request object."""
    body = error_body(code, message)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        f"Server: {SERVER_HEADER}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "\r\n"
    )
    return head.encode() + body


class EdgeRequestHandler(RequestHandler):
    """aiohttp's protocol, with JSON parser errors and the slow-head limits."""

    __slots__ = ("_edge", "_head_timer", "_pending_key")

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge = manager
        self._pending_key: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple):
            return  # a Unix socket: no address to count by
        key = str(peer[0])
        if not self._edge.admit_pending(key):
            self._refuse(
                transport,
                503,
                "too_many_pending_connections",
                "too many connections from this address are still sending their request",
            )
            return
        self._pending_key = key
        self._head_timer = asyncio.get_running_loop().call_later(
            self._edge.settings.header_timeout_s, self._head_too_slow, transport
        )

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # _request_count counts complete request heads (and parser errors, which
        # are answered and closed): either way the head is no longer pending.
        if self._pending_key is not None and (self._request_count or self._upgraded):
            self._head_done()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._head_done()
        super().connection_lost(exc)

    def _head_done(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._pending_key is not None:
            self._edge.release_pending(self._pending_key)
            self._pending_key = None

    def _head_too_slow(self, transport: asyncio.BaseTransport) -> None:
        self._head_timer = None
        if self._pending_key is None:
            return
        # Debug only: a slow client must not be able to flood the log either.
        logger.debug(
            "closing a connection from %s: no request head within %g s (HUDDLE_HEADER_TIMEOUT)",
            self._pending_key,
            self._edge.settings.header_timeout_s,
        )
        self._head_done()
        self._refuse(transport, 408, "request_timeout", "the request head did not arrive in time")

    def _refuse(self, transport: asyncio.BaseTransport, status: int, code: str, msg: str) -> None:
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(raw_error(status, code, msg))
        self.force_close()  # closes the transport once the write has been flushed

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's parser errors (and any error that escaped the app) as the
        JSON error of docs/api.md, instead of aiohttp's text/plain page."""
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            # A client's malformed request is its problem, not an error of ours.
            logger.debug("bad request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; cannot send an error response")
        if status >= 500:
            code, text = "internal_error", "an unexpected error occurred"
        else:
            code = _PARSER_CODES.get(status, "bad_request")
            text = f"the request could not be parsed: {message or HTTPStatus(status).phrase}"
        response = web.Response(
            status=status, body=error_body(code, text), content_type="application/json"
        )
        response.headers["Server"] = SERVER_HEADER
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.force_close()
        return response


class EdgeServer(web.Server):
    """aiohttp's low-level server, building :class:`EdgeRequestHandler`s and
    counting per address the connections still sending their request head."""

    def __init__(self, *args: Any, settings: HttpSettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self._pending: Counter[str] = Counter()
        # Addresses at the cap: warned about once until they drop below it, so
        # refused connections cannot flood the log.
        self._capped: set[str] = set()

    def pending(self, key: str) -> int:
        return self._pending[key]

    def admit_pending(self, key: str) -> bool:
        if self._pending[key] >= self.settings.max_pending_per_ip:
            if key not in self._capped:
                self._capped.add(key)
                logger.warning(
                    "refusing connections from %s: %d of its connections are still sending "
                    "their request head (HUDDLE_MAX_PENDING_PER_IP)",
                    key,
                    self._pending[key],
                )
            return False
        self._pending[key] += 1
        return True

    def release_pending(self, key: str) -> None:
        self._pending[key] -= 1
        if self._pending[key] <= 0:
            del self._pending[key]
        if self._pending[key] < self.settings.max_pending_per_ip:
            self._capped.discard(key)

    def __call__(self) -> RequestHandler:
        # The same arguments web.Server passes its RequestHandler.
        return EdgeRequestHandler(self, loop=self._loop, **self._kwargs)


class EdgeAppRunner(web.AppRunner):
    """An AppRunner serving the app through :class:`EdgeServer`."""

    def __init__(self, app: web.Application, *, settings: HttpSettings, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_TIMEOUT_S)
        super().__init__(app, **kwargs)
        self._settings = settings

    async def _make_server(self) -> web.Server:
        # The base class runs the app's startup and builds its Server; rebuild
        # that server as an EdgeServer with exactly the same handler and options.
        base = await super()._make_server()
        return EdgeServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            settings=self._settings,
            **base._kwargs,
        )


def security_headers(
    settings: HttpSettings,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An ``on_response_prepare`` hook: the headers every response carries.

    The client page (``/`` and ``/static/``) gets a CSP that allows exactly
    what static/ loads: its own module scripts and stylesheet, a ``data:``
    favicon, camera/microphone streams, fetch and WebSocket to its own origin.
    Framing follows ``HUDDLE_FRAME_ANCESTORS``. API responses get a CSP that
    allows nothing and may not be framed.
    """
    ancestors = " ".join(settings.frame_ancestors)
    client_csp = (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        f"frame-ancestors {ancestors}"
    )
    # X-Frame-Options for browsers without frame-ancestors; it cannot name other
    # origins, so it is only sent when it says the same as the CSP.
    client_xfo = {"'self'": "SAMEORIGIN", "'none'": "DENY"}.get(ancestors)

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers["Server"] = SERVER_HEADER
        headers["X-Content-Type-Options"] = "nosniff"
        # The client's URL can carry ?token=: never send it on as a Referer.
        headers["Referrer-Policy"] = "no-referrer"
        if request.path == "/" or request.path.startswith("/static/"):
            headers["Content-Security-Policy"] = client_csp
            if client_xfo is not None:
                headers["X-Frame-Options"] = client_xfo
        else:
            headers["Content-Security-Policy"] = "default-src 'none'; frame-ancestors 'none'"
            headers["X-Frame-Options"] = "DENY"

    return on_prepare


class Terminable(Protocol):
    """What SIGTERM does first (a drain), and how it then stops the server."""

    def bind_stop(self, stop: Callable[[], None]) -> None: ...

    def terminate(self) -> None: ...


def serve(
    app: web.Application,
    config: Config,
    *,
    on_ready: Callable[[], None],
    on_term: Terminable | None = None,
) -> None:
    """Run ``app`` on ``config.host``/``config.port`` until SIGTERM/SIGINT, then
    shut down gracefully: aiohttp's ``run_app``, with :class:`EdgeAppRunner`.

    With ``on_term``, SIGTERM calls its ``terminate`` (a drain), which stops the
    server through the ``stop`` it was bound to; a second SIGTERM stops at once.
    SIGINT always stops at once."""

    async def main() -> None:
        runner = EdgeAppRunner(
            app,
            settings=config.http,
            handle_signals=True,
            shutdown_timeout=config.limits.shutdown_timeout_s,
            access_log=None,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, config.host, config.port).start()
            stopped = asyncio.Event()
            if on_term is not None:
                on_term.bind_stop(stopped.set)
                terms = 0

                def on_sigterm() -> None:
                    nonlocal terms
                    terms += 1
                    if terms == 1:
                        on_term.terminate()
                    else:
                        stopped.set()

                # Replaces aiohttp's handler (GracefulExit), installed by setup().
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
            on_ready()
            await stopped.wait()  # or until SIGINT (SIGTERM without on_term) raises GracefulExit
        finally:
            await runner.cleanup()

    loop = asyncio.new_event_loop()
    main_task = loop.create_task(main())
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main_task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main_task.done():
                main_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main_task)
        finally:
            _cancel_remaining(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )
