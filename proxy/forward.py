"""Forwarding one exchange: identify, stream both ways through the body taps, emit events.

The handler is the hot path. It allocates one `Exchange`, never buffers a body (the
taps keep at most the bounded JSON prefix a rule needs), and hands the events to
the writer without awaiting it (unless `durability: strict`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict
from yarl import URL

from billing.events import UsageEvent
from billing.writer import EventsRejected, StoreUnavailable
from proxy.errors import (
    BodyTooLarge,
    ProxyError,
    RequestTimeout,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_response,
)
from proxy.headers import client_response_headers, upstream_request_headers
from proxy.logs import FirstTime, log_access
from proxy.metrics import NO_RULE, status_class
from proxy.state import ProxyState
from proxy.websocket import is_websocket_upgrade, relay_websocket
from rules.exchange import Exchange
from rules.identify import Verdict, identify_request, identify_response
from rules.jsonselect import BodyTap
from rules.paths import normalize_path

log = logging.getLogger("meterproxy.proxy")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# How long a response head waits for its first body chunk so that both leave in one
# socket write: servers commonly send the head and the first chunk (an SSE stream's first
# event) a few tens of microseconds apart, and a head sent alone costs the client one more
# wake-up before the chunk (about 0.1 ms here). An upstream slower than this gets its
# head relayed alone, as at once.
HEAD_GRACE_S = 0.0005


class RelayResponse(web.StreamResponse):
    """A StreamResponse that adds no Content-Type or Server the upstream did not send.

    Its headers wait in aiohttp's buffer until the first body write (one socket write
    for headers and body), or until `_stream` is about to wait on the upstream.
    """

    _send_headers_immediately = False

    def __init__(self, status: int, reason: str | None, headers: Any, absent: tuple[str, ...]):
        super().__init__(status=status, reason=reason, headers=headers)
        self._absent = absent

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        # aiohttp fills in these two by default; a transparent proxy must not.
        for name in self._absent:
            self.headers.popall(name, None)


class _Timing:
    """Time spent waiting on the upstream or the client, to compute our own overhead."""

    __slots__ = ("start", "waiting")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.waiting = 0.0

    def overhead_s(self, now: float) -> float:
        """Seconds of our own work until `now` (a time.perf_counter() reading)."""
        return max(0.0, now - self.start - self.waiting)


class Forwarder:
    """The proxy listener's request handler. `state` is swapped whole on reload."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        # A rule error recurs on every matching exchange: warn once per (rule, reason,
        # field), then log at debug level; meterproxy_rule_errors_total counts them all.
        self._rule_errors_seen = FirstTime()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        state = self.state
        timing = _Timing()
        raw_path = request.raw_path
        path, _, query = raw_path.partition("?")
        x = Exchange(request.method, path, normalize_path(path), query, request.headers, _now_ms())
        response: web.StreamResponse | None = None
        try:
            response = await self._handle(state, request, x, raw_path, timing)
            return response
        finally:
            self._finish(state, x, timing, response)

    async def _handle(
        self,
        state: ProxyState,
        request: web.BaseRequest,
        x: Exchange,
        raw_path: str,
        timing: _Timing,
    ) -> web.StreamResponse:
        refusal = self._admit(state, request, x)
        if refusal is not None:
            return refusal
        if is_websocket_upgrade(request):
            return await self._websocket(state, request, x, raw_path, timing)
        tap = self._request_tap(state, request, x)
        body = _RequestBody(state, request, x, tap) if request.body_exists else None
        try:
            upstream = await self._send(state, request, x, raw_path, body, timing)
        except ProxyError as exc:
            return self._error(state, x, exc)
        if x.request_json is None and tap is not None:
            x.request_json = tap.finish(complete=True)
        async with upstream:
            return await self._relay(state, request, x, upstream, timing)

    # ---------------------------------------------------------------- admission

    def _admit(
        self, state: ProxyState, request: web.BaseRequest, x: Exchange
    ) -> web.StreamResponse | None:
        """Identify the customer and check limits; a response here ends the exchange."""
        customers = state.customers
        if customers.is_public(x.norm_path) or _is_preflight(request):
            return None
        verdict, customer = identify_request(
            customers,
            request.headers,
            lambda: x.query,
            state.is_trusted(request.remote),
            state.keys,
        )
        if verdict is Verdict.BAD_KEY:
            state.metrics.count_proxy_error("bad_key")
            return _unauthorized("invalid_api_key", "the API key is unknown or revoked")
        if verdict is Verdict.UNKNOWN:
            state.metrics.unidentified.inc()
            if customers.unidentified == "reject":
                state.metrics.count_proxy_error("unidentified")
                return _unauthorized("unidentified", "no customer could be identified")
        x.customer_id = customer
        declared = request.content_length
        if declared is not None and declared > state.settings.max_request_body:
            return self._error(state, x, BodyTooLarge(_too_large_message(state)))
        x.candidates = state.rules.candidates(x.method, x.norm_path)
        if x.candidates and state.reject_when_full and not state.writer.accepting():
            state.metrics.count_proxy_error("store_unavailable")
            x.candidates = []
            return error_response(
                503,
                "store_unavailable",
                "usage cannot be recorded right now; retry later",
                headers={"Retry-After": "5"},
            )
        return None

    def _request_tap(
        self, state: ProxyState, request: web.BaseRequest, x: Exchange
    ) -> BodyTap | None:
        paths = state.rules.request_json
        if paths is None or not x.candidates or not state.rules.needs_request_json(x.candidates):
            return None
        headers = request.headers
        return paths.tap(headers.get("content-type"), headers.get("content-encoding"))

    # ------------------------------------------------------------------ request

    async def _websocket(
        self,
        state: ProxyState,
        request: web.BaseRequest,
        x: Exchange,
        raw_path: str,
        timing: _Timing,
    ) -> web.StreamResponse:
        try:
            return await relay_websocket(
                request,
                x,
                state.session,
                URL(state.upstream_base + raw_path, encoded=True),
                self._upstream_headers(state, request, x),
                state.settings.connect_timeout_s,
            )
        except ProxyError as exc:
            return self._error(state, x, exc)
        finally:
            # A socket's lifetime is the peers' business, not our overhead.
            timing.waiting = time.perf_counter() - timing.start

    def _upstream_headers(
        self, state: ProxyState, request: web.BaseRequest, x: Exchange
    ) -> CIMultiDict[str]:
        return upstream_request_headers(
            request.headers,
            drop=state.customers.api_key_headers,
            peer=request.remote,
            trusted=state.is_trusted(request.remote),
            scheme=request.scheme,
            customer_id=x.customer_id,
            host=state.upstream_host,
        )

    async def _send(
        self,
        state: ProxyState,
        request: web.BaseRequest,
        x: Exchange,
        raw_path: str,
        body: _RequestBody | None,
        timing: _Timing,
    ) -> aiohttp.ClientResponse:
        headers = self._upstream_headers(state, request, x)
        expect100 = headers.popall("expect", None) is not None and body is not None
        began = time.perf_counter()
        try:
            return await state.session.request(
                request.method,
                URL(state.upstream_base + raw_path, encoded=True),
                headers=headers,
                data=body,
                expect100=expect100,
                allow_redirects=False,
                auto_decompress=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
                timeout=state.timeout,
            )
        except (aiohttp.ConnectionTimeoutError, aiohttp.SocketTimeoutError, TimeoutError) as exc:
            if body is not None and body.error is not None:
                raise body.error from exc
            raise UpstreamTimeout(
                f"the upstream did not answer in time ({exc.__class__.__name__})"
            ) from exc
        except aiohttp.ClientError as exc:
            if body is not None and body.error is not None:
                raise body.error from exc
            raise UpstreamUnreachable(f"the upstream could not be reached: {_short(exc)}") from exc
        except ProxyError:
            raise
        finally:
            timing.waiting += time.perf_counter() - began

    # ----------------------------------------------------------------- response

    async def _relay(
        self,
        state: ProxyState,
        request: web.BaseRequest,
        x: Exchange,
        upstream: aiohttp.ClientResponse,
        timing: _Timing,
    ) -> web.StreamResponse:
        x.status = upstream.status
        x.response_headers = upstream.headers
        if x.customer_id is None and state.customers.response_sources:
            x.customer_id = identify_response(state.customers, upstream.headers)
        tap = self._response_tap(state, x, upstream)
        response = self._client_response(state, upstream, timing)
        # Only builds the head: RelayResponse sends it with the first write.
        writer = await response.prepare(request)
        assert writer is not None  # a fresh response is never prepared already
        await self._stream(state, request, x, upstream, _Relay(response, writer), tap, timing)
        return response

    def _response_tap(
        self, state: ProxyState, x: Exchange, upstream: aiohttp.ClientResponse
    ) -> BodyTap | None:
        paths = state.rules.response_json
        if (
            paths is None
            or x.customer_id is None
            or not state.rules.needs_response_json(x.candidates)
        ):
            return None
        headers = upstream.headers
        return paths.tap(headers.get("content-type"), headers.get("content-encoding"))

    def _client_response(
        self, state: ProxyState, upstream: aiohttp.ClientResponse, timing: _Timing
    ) -> RelayResponse:
        headers = client_response_headers(upstream.headers, state.settings.strip_response_headers)
        if state.settings.server_timing:
            # Headers leave before the body: this covers our work until the response headers
            # (added beside any Server-Timing of the upstream's).
            dur_ms = timing.overhead_s(time.perf_counter()) * 1000
            headers.add("Server-Timing", f"meterproxy;dur={dur_ms:.3f}")
        absent = tuple(h for h in ("Content-Type", "Server") if h not in upstream.headers)
        return RelayResponse(upstream.status, upstream.reason, headers, absent)

    async def _stream(
        self,
        state: ProxyState,
        request: web.BaseRequest,
        x: Exchange,
        upstream: aiohttp.ClientResponse,
        out: _Relay,
        tap: BodyTap | None,
        timing: _Timing,
    ) -> None:
        content = upstream.content
        # strict durability holds back the last chunk until the events are on disk
        held: bytes | None = None
        strict = state.settings.durability == "strict"
        while True:
            began = time.perf_counter()
            try:
                chunk = await _next_chunk(content, out.head_pending, x.response_bytes)
            except (aiohttp.ClientError, TimeoutError):
                x.aborted = True  # upstream broke off mid-body: the client sees it cut short
                state.metrics.count_proxy_error("upstream_broken")
                _abort_client(request)
                self._finish_tap(x, tap, complete=False)
                return
            finally:
                timing.waiting += time.perf_counter() - began
            if chunk is None:  # the upstream makes us wait: the client gets the head now
                if not await self._write(state, x, upstream, out, tap, b"", timing):
                    return
                continue
            if not chunk:
                break
            x.response_bytes += len(chunk)
            if tap is not None:
                tap.feed(chunk)
            if strict:
                previous, held = held, chunk
                if previous is None:
                    continue
                chunk = previous
            # A body that ended with this chunk goes out with the end of the response: a
            # small response costs one socket write (head, body and chunked terminator).
            last = held is None and content.at_eof()
            if not await self._write(state, x, upstream, out, tap, chunk, timing, last=last):
                return
            if last:
                self._finish_tap(x, tap, complete=True)
                return
        self._finish_tap(x, tap, complete=True)
        if strict and not await self._commit(state, request, x, timing):
            return
        await self._write(state, x, upstream, out, tap, held or b"", timing, last=True)

    async def _write(
        self,
        state: ProxyState,
        x: Exchange,
        upstream: aiohttp.ClientResponse,
        out: _Relay,
        tap: BodyTap | None,
        chunk: bytes,
        timing: _Timing,
        *,
        last: bool = False,
    ) -> bool:
        """Write one chunk (b"": the head alone), with the end of the response when
        `last`; False when the client is gone (then drain the upstream)."""
        began = time.perf_counter()
        try:
            await out.write(chunk, last)
            return True
        except ConnectionError:
            x.response_bytes -= len(chunk)
            x.aborted = True
            if not last or chunk:
                await self._drain(state, x, upstream, tap, timing)
            return False
        finally:
            timing.waiting += time.perf_counter() - began

    async def _commit(
        self, state: ProxyState, request: web.BaseRequest, x: Exchange, timing: _Timing
    ) -> bool:
        """durability: strict: store the events before the response's last byte.

        False when the store cannot take them: the client's response is cut short,
        so no client ever holds a complete response whose usage was not recorded.
        """
        x.duration_ms = int((time.perf_counter() - timing.start) * 1000)
        events = self._events(state, x)
        x.emitted = True
        began = time.perf_counter()
        try:
            await state.writer.submit_durable(events)
            return True
        except (StoreUnavailable, EventsRejected) as exc:
            log.error(
                "strict durability: events not stored (%s), cutting %s %s",
                exc,
                x.method,
                x.path,
                extra=_lost(x, events),
            )
            x.aborted = True
            _abort_client(request)
            return False
        finally:
            timing.waiting += time.perf_counter() - began

    async def _drain(
        self,
        state: ProxyState,
        x: Exchange,
        upstream: aiohttp.ClientResponse,
        tap: BodyTap | None,
        timing: _Timing,
    ) -> None:
        """The client left: keep reading (bounded) so the upstream's usage still counts."""
        budget = state.settings.drain_after_disconnect_s
        if tap is None or budget <= 0 or state.drains.locked():
            self._finish_tap(x, tap, complete=False)
            return
        complete = False
        began = time.perf_counter()
        async with state.drains:
            try:
                async with asyncio.timeout(budget):
                    async for chunk in upstream.content.iter_any():
                        tap.feed(chunk)
                complete = True
            except (aiohttp.ClientError, TimeoutError):
                pass
        timing.waiting += time.perf_counter() - began
        self._finish_tap(x, tap, complete=complete)

    @staticmethod
    def _finish_tap(x: Exchange, tap: BodyTap | None, complete: bool) -> None:
        if tap is not None:
            x.response_json = tap.finish(complete=complete)

    # ------------------------------------------------------------------ errors

    def _error(self, state: ProxyState, x: Exchange, exc: ProxyError) -> web.Response:
        """meterproxy's own answer: counted, and no rule emits for it."""
        state.metrics.count_proxy_error(exc.reason)
        x.candidates = []
        log.warning(
            "%s %s: %s",
            x.method,
            x.path,
            exc,
            extra={"reason": exc.reason, "customer": x.customer_id},
        )
        response = exc.response()
        if isinstance(exc, BodyTooLarge | RequestTimeout):
            # The rest of the body is unread (or never coming): end the connection.
            response.force_close()
        return response

    # ------------------------------------------------------------------- finish

    def _finish(
        self,
        state: ProxyState,
        x: Exchange,
        timing: _Timing,
        response: web.StreamResponse | None,
    ) -> None:
        """Emit the exchange's events (unless strict mode did), metrics and the access-log
        line. `response` None: the handler ended without one (client gone). Never raises."""
        now = time.perf_counter()
        total = now - timing.start
        metrics = state.metrics
        metrics.request_duration.observe(total)
        metrics.overhead.observe(timing.overhead_s(now))
        if not x.emitted:
            x.duration_ms = int(total * 1000)
            self._emit(state, x)
        if state.settings.access_log:
            status = x.status if x.status is not None or response is None else response.status
            log_access(x.method, x.path, status, _body_bytes(x, response), total, x.customer_id)

    def _emit(self, state: ProxyState, x: Exchange) -> None:
        try:
            events = self._events(state, x)
        except Exception:  # a rule must never break proxying; count and log
            log.exception("emitting events failed for %s %s", x.method, x.path, extra=_lost(x, []))
            state.metrics.count_rule_error(NO_RULE, "error")
            return
        try:
            state.writer.submit(events)
        except StoreUnavailable:
            log.error(
                "store unavailable: events of %s %s not queued",
                x.method,
                x.path,
                extra=_lost(x, events),
            )

    def _events(self, state: ProxyState, x: Exchange) -> list[UsageEvent]:
        """Count the exchange per matching rule and build its events (none unidentified)."""
        metrics = state.metrics
        cls = status_class(x.status)
        matched = state.rules.matched(x) if x.candidates else []
        if not matched:
            metrics.count_request(NO_RULE, cls)
            return []
        for rule, _ in matched:
            metrics.count_request(rule.name, cls)
        if x.customer_id is None:
            return []
        return state.rules.events(
            x,
            lambda rule, reason, key: self._rule_error(state, x, rule, reason, key),
            matched=matched,
        )

    def _rule_error(self, state: ProxyState, x: Exchange, rule: str, reason: str, key: str) -> None:
        state.metrics.count_rule_error(rule, reason)
        first = self._rule_errors_seen.first((rule, reason, key))
        level = logging.WARNING if first else logging.DEBUG
        if log.isEnabledFor(level):
            later = " (counted in meterproxy_rule_errors_total, logged at debug level)"
            log.log(
                level,
                "rule %s: metadata %s: %s%s",
                rule,
                key,
                reason,
                later if first else "",
                extra={"rule": rule, "field": key, "reason": reason, "customer": x.customer_id},
            )


class _Relay:
    """The client's response as `_stream` writes it: head, chunks, end."""

    __slots__ = ("head_pending", "response", "writer")

    def __init__(self, response: RelayResponse, writer: AbstractStreamWriter) -> None:
        self.response = response
        self.writer = writer
        self.head_pending = True  # the head is still in aiohttp's buffer

    async def write(self, chunk: bytes, last: bool) -> None:
        """Send `chunk` (with the head if still pending); `last` ends the response.
        ConnectionError when the client is gone."""
        if last:
            await self.response.write_eof(chunk)
        elif chunk:
            await self.response.write(chunk)
        else:
            self.writer.send_headers()
        self.head_pending = False


async def _next_chunk(
    content: aiohttp.StreamReader, head_pending: bool, consumed: int
) -> bytes | None:
    """The upstream's next chunk (b"" at its end); None when the head is still to go and
    no chunk came within HEAD_GRACE_S. Raises what reading raises."""
    if not head_pending or _buffered(content, consumed):
        return await content.readany()
    grace = asyncio.timeout(HEAD_GRACE_S)
    try:
        async with grace:
            return await content.readany()
    except TimeoutError:
        if grace.expired():  # ours, not the upstream read timeout
            return None
        raise


def _buffered(content: aiohttp.StreamReader, consumed: int) -> bool:
    """Whether reading `content` now returns without waiting: bytes beyond the
    `consumed` ones arrived, or its end did."""
    return content.total_bytes > consumed or content.is_eof()


class _RequestBody:
    """The client's body, streamed upstream chunk by chunk through the taps.

    aiohttp's client consumes it; when the body has to stop (too large, the client
    stalled), `error` says why, so the handler answers 413 or 408 rather than 502.
    """

    def __init__(
        self, state: ProxyState, request: web.BaseRequest, x: Exchange, tap: BodyTap | None
    ) -> None:
        self.state = state
        self.request = request
        self.x = x
        self.tap = tap
        self.error: ProxyError | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        request, x, tap = self.request, self.x, self.tap
        if request.headers.get("expect", "").lower() == "100-continue":
            # aiohttp pulls the first chunk only once the upstream sent its 100.
            await request.writer.write(_CONTINUE)
        complete = False
        try:
            while chunk := await self._next():
                x.request_bytes += len(chunk)
                if x.request_bytes > self.state.settings.max_request_body:
                    raise self._stop(BodyTooLarge(_too_large_message(self.state)))
                if tap is not None:
                    tap.feed(chunk)
                yield chunk
            complete = True
        finally:
            if tap is not None:
                x.request_json = tap.finish(complete=complete)

    async def _next(self) -> bytes:
        idle = self.state.settings.client_timeout_s
        try:
            async with asyncio.timeout(idle):
                return await self.request.content.readany()
        except TimeoutError:
            raise self._stop(
                RequestTimeout(f"the client sent no body bytes for {idle:g}s")
            ) from None

    def _stop(self, error: ProxyError) -> ProxyError:
        self.error = error
        return error


_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


def _lost(x: Exchange, events: list[UsageEvent]) -> dict[str, Any]:
    """Log context of an exchange whose events were not recorded."""
    return {"customer": x.customer_id, "event_ids": [e.event_id for e in events]}


def _body_bytes(x: Exchange, response: web.StreamResponse | None) -> int:
    """Body bytes the client got: relayed ones, or the length of meterproxy's own answer."""
    if x.status is not None or response is None:
        return x.response_bytes
    return response.content_length or 0


def _short(exc: BaseException, limit: int = 200) -> str:
    """An exception's text, cut: a malformed response can carry a megabyte of it.

    Never the request URL: its query string may hold a key or token, and this text is logged.
    """
    text = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _is_preflight(request: web.BaseRequest) -> bool:
    return request.method == "OPTIONS" and "access-control-request-method" in request.headers


def _unauthorized(code: str, message: str) -> web.Response:
    return error_response(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def _too_large_message(state: ProxyState) -> str:
    return f"the request body exceeds {state.settings.max_request_body} bytes"


def _abort_client(request: web.BaseRequest) -> None:
    """Close the client connection so a cut-short body reads as cut short."""
    transport = request.transport
    if transport is not None:
        transport.close()
