"""Everything a request handler needs, in one object swapped whole on reload."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp

from billing.writer import EventWriter
from proxy.config import ProxySettings
from proxy.metrics import Metrics
from rules.identify import CustomersConfig, KeyRing
from rules.ruleset import RuleSet


class KeySource:
    """The current key ring; the key refresher replaces `ring` when keys change."""

    def __init__(self, ring: KeyRing | None = None) -> None:
        self.ring = ring or KeyRing()


@dataclass
class ProxyState:
    settings: ProxySettings
    customers: CustomersConfig
    rules: RuleSet
    metrics: Metrics
    writer: EventWriter
    session: aiohttp.ClientSession
    key_source: KeySource
    drains: asyncio.Semaphore  # shared across reloads, so drains in flight keep counting
    reject_when_full: bool = True  # storage.on_full: reject answers 503 before the upstream
    timeout: aiohttp.ClientTimeout = field(init=False)
    upstream_base: str = field(init=False)
    upstream_host: str | None = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=s.connect_timeout_s, sock_read=s.read_timeout_s
        )
        self.upstream_base = str(s.upstream).rstrip("/")
        self.upstream_host = s.upstream.raw_authority if s.host_header == "upstream" else None

    @property
    def keys(self) -> KeyRing:
        return self.key_source.ring

    def is_trusted(self, peer: str | None) -> bool:
        return self.settings.is_trusted(peer)
