"""The proxy's client-facing HTTP server: a connection cap and quiet bad requests.

aiohttp's parser (llhttp, strict mode) already refuses request smuggling shapes:
Content-Length with Transfer-Encoding, duplicate lengths, obsolete line folding,
bad chunk sizes, oversized lines and headers. What it does not do is cap
connections, and it logs every malformed request as an error with a traceback,
which a hostile client could use to flood the logs; both are handled here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("meterproxy.proxy")


class _QuietBadRequests(logging.Filter):
    """Turn aiohttp's error log of a malformed request into a counted debug line."""

    def __init__(self, on_bad_request: Callable[[], None]) -> None:
        super().__init__()
        self.on_bad_request = on_bad_request

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            self.on_bad_request()
            log.debug("malformed request refused: %s", exc.message)
            return False
        return True


class ProxyServer(web.Server):
    """web.Server that refuses connections beyond `max_connections` (closed at once)."""

    def __init__(
        self,
        handler: Any,
        *,
        max_connections: int,
        on_refused: Callable[[], None],
        on_bad_request: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        # A logger of this server's own (not registered, so never shared between servers)
        # that propagates to meterproxy's handlers.
        logger = logging.Logger("meterproxy.http")
        logger.parent = logging.getLogger("meterproxy")
        logger.addFilter(_QuietBadRequests(on_bad_request))
        super().__init__(handler, logger=logger, **kwargs)
        self.max_connections = max_connections
        self.on_refused = on_refused

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if len(self._connections) > self.max_connections:
            self.on_refused()
            transport.close()
