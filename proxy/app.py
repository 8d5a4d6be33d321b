"""The running meterproxy: owns the store, the writer, the listeners and every task.

`MeterProxy.start()` opens everything in dependency order; `stop()` undoes it in
reverse: readiness off, listeners closed, in-flight exchanges finished (bounded by
`proxy.shutdown_timeout`), every pending event flushed, the store closed.

Fleet mode (`storage.url`): the writer appends through a `SpoolingAppender`, which keeps
events in the local spool file (`storage.path`) while PostgreSQL is unreachable and forwards
them when it returns. A replica that starts while PostgreSQL is down proxies at once, its
events spooled and its API keys those it last read (kept in the same file), and opens
PostgreSQL in the background with capped exponential backoff; billing, key changes and the
admin API's store reads (503 until then) wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from billing.cycles import bucket_ms
from billing.engine import StatementEngine
from billing.events import now_ms
from billing.scheduler import Scheduler
from billing.store.base import StoreError
from billing.store.choice import store_at
from billing.store.key_cache import KeyCache
from billing.store.pg_connection import StoreUnreachable
from billing.store.postgres import PostgresStore
from billing.store.spool import Spool, SpoolingAppender
from billing.store.sqlite import SqliteStore
from billing.writer import EventWriter
from proxy.admin.routes import build_admin_app, build_metrics_app
from proxy.config import Config, Listen, ProxySettings
from proxy.forward import Forwarder
from proxy.listener import ProxyServer
from proxy.logs import current_format
from proxy.metrics import Metrics
from proxy.observer import MetricsObserver
from proxy.state import KeySource, ProxyState
from proxy.store_process import AppendProcess, ChildSpec
from proxy.usage_metrics import UsageCollector
from rules.identify import KeyRing

log = logging.getLogger("meterproxy")

KEY_POLL_SECONDS = 1.0
STORE_RETRY_FIRST_S = 1.0  # fleet mode started while PostgreSQL is down: first retry
STORE_RETRY_MAX_S = 30.0


class MeterProxy:
    """One meterproxy instance. Not reusable: start once, stop once."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.config = config
        self.clock = clock
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(
            self.registry,
            rule_names=config.rules.names,
            event_names={r.event_name for r in config.rules.rules}
            | {m.event_name for m in config.meters},
            meter_names=[m.name for m in config.meters],
        )
        self.store = store_for(config, clock)
        self.engine = StatementEngine(
            self.store, config.plans, config.billing, [m.name for m in config.meters], clock=clock
        )
        self.scheduler = Scheduler(self.engine, clock=clock)
        observer = MetricsObserver(self.metrics)
        self.usage_metrics = UsageCollector(
            self.engine,
            config.meters,
            clock=clock,
            max_customers=config.metrics.max_customers if config.metrics.customer_labels else None,
            reconcile_ms=config.metrics.usage_reconcile_ms,
        )
        self.registry.register(self.usage_metrics)
        # Appends run in a child process of their own with `storage.writer: process`.
        self.store_process = None if config.storage.writer == "thread" else AppendProcess(
            ChildSpec(config.storage.path, config.storage.url, config.meters,
                      store_bucket_ms(config), current_format(), logging.getLogger().level)
        )
        # Every append reaches the store through the tap, spooled ones when forwarded.
        primary = self.usage_metrics.tap(self.store_process or self.store)
        # Fleet mode: the outage spool, in the file a single instance would store events in.
        self.spool = Spool(config.storage.path) if config.storage.url else None
        self.key_cache = KeyCache(config.storage.path) if config.storage.url else None
        self.appender = None if self.spool is None else SpoolingAppender(
            primary, self.spool, clock=clock, observer=observer, primary_open=False
        )
        self.writer = EventWriter(
            self.appender or primary,
            flush_interval_ms=config.storage.flush_interval_ms,
            max_pending=config.storage.max_pending,
            on_full=config.storage.on_full,
            observer=observer,
            clock=clock,
        )
        self.metrics.store_pending.set_function(lambda: self.writer.pending)
        self.metrics.store_spooled.set_function(lambda: self.spooled)
        self.key_source = KeySource()
        self._drains = asyncio.Semaphore(config.proxy.max_concurrent_drains)
        self.draining = False
        self.ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[web.BaseRunner] = []
        self._session: aiohttp.ClientSession | None = None
        self.forwarder: Forwarder | None = None
        self.addresses: dict[str, tuple[str, int]] = {}

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        if self.appender is None:
            await self.store.open()
            await self._store_opened()
            if self.store_process is not None:  # after the parent's open: migrated, rebuilt
                await self.store_process.start()
        else:
            await self._open_fleet_store()
        self._spawn(self.writer.run(), "event-writer")
        self._session = _upstream_session(self.config)
        self.forwarder = Forwarder(self._proxy_state(self.config))
        proxy = self.config.proxy
        await self._listen(
            "proxy",
            _proxy_runner(self.forwarder, proxy, self.metrics),
            proxy.listen,
        )
        await self._listen(
            "admin", web.AppRunner(build_admin_app(self), access_log=None), self.config.admin.listen
        )
        if self.config.metrics.listen is not None:
            await self._listen(
                "metrics",
                web.AppRunner(build_metrics_app(self), access_log=None),
                self.config.metrics.listen,
            )
        self.ready = True

    async def _store_opened(self) -> None:
        """Start what needs the open store: billing, the API keys, the spool's forwarding."""
        await self.engine.open()
        await self.reload_keys()
        self._spawn(self.scheduler.run(), "billing-scheduler")
        self._spawn(self.usage_metrics.run(), "usage-metrics")
        self._spawn(self._poll_keys(), "key-refresher")
        if self.appender is not None:
            if self.store_process is not None:
                await self.store_process.start()
            self.appender.primary_opened()

    async def _open_fleet_store(self) -> None:
        """Open the spool and PostgreSQL; while PostgreSQL is unreachable, go on with the
        spool alone and keep trying in the background."""
        assert self.spool is not None and self.appender is not None
        await self.spool.open()
        self._spawn(self.appender.run(), "spool-forwarder")
        try:
            await self.store.open()
        except StoreUnreachable as exc:
            log.warning("PostgreSQL is unreachable (%s): proxying with events spooled in %s"
                        " and the API keys last read; opening it in the background", exc,
                        self.config.storage.path)
            assert self.key_cache is not None
            self.key_source.ring = KeyRing(await self.key_cache.load())
            self._spawn(self._open_store_later(), "store-opener")
            return
        await self._store_opened()

    async def _open_store_later(self) -> None:
        """Retry opening the store with capped exponential backoff until it opens."""
        delay = STORE_RETRY_FIRST_S
        while True:
            await asyncio.sleep(delay)
            try:
                await self.store.open()
                await self._store_opened()
            except StoreError as exc:
                await self.store.close()
                delay = min(delay * 2, STORE_RETRY_MAX_S)
                log.warning("opening the store failed (%s); retrying in %.0f s", exc, delay)
            else:
                log.info("the store is open: billing, API keys and spool forwarding started")
                return

    def _proxy_state(self, config: Config) -> ProxyState:
        assert self._session is not None
        return ProxyState(
            settings=config.proxy,
            customers=config.customers,
            rules=config.rules,
            metrics=self.metrics,
            writer=self.writer,
            session=self._session,
            key_source=self.key_source,
            drains=self._drains,
            reject_when_full=config.storage.on_full == "reject",
        )

    async def _listen(self, name: str, runner: web.BaseRunner, listen: Listen) -> None:
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, listen.host, listen.port, backlog=1024)
        await site.start()
        server: Any = site._server  # the bound socket tells the real port when 0 was asked
        host, port = server.sockets[0].getsockname()[:2]
        self.addresses[name] = (host, port)
        address = f"{host}:{port}"
        log.info(
            "%s listening on http://%s", name, address, extra={"listener": name, "address": address}
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    # ----------------------------------------------------------------- reload

    def reload(self, new: Config) -> None:
        """Apply a new configuration's rules, customers, proxy and admin settings.

        Listeners, storage, meters, plans and billing are fixed for the life of the
        process; a change to them is logged and applies at the next restart.
        """
        old = self.config
        fixed = [
            name
            for name, changed in (
                ("proxy.listen", old.proxy.listen != new.proxy.listen),
                ("proxy.upstream", old.proxy.upstream != new.proxy.upstream),
                ("proxy.gc", old.proxy.gc != new.proxy.gc),
                (
                    "proxy.max_concurrent_drains",
                    old.proxy.max_concurrent_drains != new.proxy.max_concurrent_drains,
                ),
                ("admin.listen", old.admin.listen != new.admin.listen),
                ("metrics", old.metrics != new.metrics),
                ("storage", old.storage != new.storage),
                ("meters", _fingerprints(old) != _fingerprints(new)),
                ("plans", old.plans != new.plans),
                ("billing", old.billing != new.billing),
            )
            if changed
        ]
        if fixed:
            log.warning("reload: %s changed and will apply at the next restart", ", ".join(fixed))
        proxy = replace(new.proxy, listen=old.proxy.listen, upstream=old.proxy.upstream,
                        gc=old.proxy.gc)
        admin = replace(new.admin, listen=old.admin.listen)
        self.config = replace(
            old,
            proxy=proxy,
            admin=admin,
            customers=new.customers,
            rules=new.rules,
            warnings=new.warnings,
        )
        self.metrics.add_names(
            rule_names=new.rules.names, event_names={r.event_name for r in new.rules.rules}
        )
        assert self.forwarder is not None
        self.forwarder.state = self._proxy_state(self.config)
        log.info("configuration reloaded from %s", new.filename)

    # ------------------------------------------------------------------- keys

    async def reload_keys(self) -> None:
        """Load the active keys into a new ring; the proxy sees it at its next request."""
        self._keys_version = await self.store.keys_version()
        hashes = await self.store.active_key_hashes()
        self.key_source.ring = KeyRing(hashes)
        if self.key_cache is not None:  # for a restart while PostgreSQL is away
            await self.key_cache.save(hashes)

    async def _poll_keys(self) -> None:
        while True:
            await asyncio.sleep(KEY_POLL_SECONDS)
            try:
                if await self.store.keys_version() != self._keys_version:
                    await self.reload_keys()
            except Exception:
                log.exception("reloading API keys failed; keeping the previous keys")

    # ------------------------------------------------------------------- stop

    async def stop(self) -> None:
        """Drain and shut down; every event of every finished exchange is flushed."""
        self.ready = False
        self.draining = True
        # The proxy first, so /readyz answers 503 while in-flight exchanges finish; then
        # the admin listener, whose in-flight ingests still reach the running writer.
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.writer.close(timeout=self.config.proxy.shutdown_timeout_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
        if self.store_process is not None:  # after the writer and the spool's forwarding
            await self.store_process.close()
        await self.store.close()
        if self.spool is not None:
            await self.spool.close()

    @property
    def spooled(self) -> int:
        """Events waiting in the outage spool (fleet mode; always 0 otherwise)."""
        return 0 if self.appender is None else self.appender.spooled

    def port(self, name: str) -> int:
        return self.addresses[name][1]


def store_for(
    config: Config, clock: Callable[[], int] = now_ms
) -> SqliteStore | PostgresStore:
    """The configured store, not opened yet: PostgreSQL when `storage.url` is set, else the
    SQLite file; its aggregate buckets fit every plan's periods."""
    return store_at(config.storage.url, config.storage.path, config.meters,
                    store_bucket_ms(config), clock)


def store_bucket_ms(config: Config) -> int:
    """The store's aggregate bucket size: every plan's period boundaries fall on one."""
    return bucket_ms([p.cycle for p in config.plans], config.billing.timezone)


def _fingerprints(config: Config) -> list[str]:
    return [m.fingerprint() for m in config.meters]


def _upstream_session(config: Config) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=config.proxy.max_connections,
        ttl_dns_cache=60,
        keepalive_timeout=30,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None),
    )


def _proxy_runner(
    forwarder: Forwarder, settings: ProxySettings, metrics: Metrics
) -> web.ServerRunner:
    server = ProxyServer(
        forwarder,
        max_connections=settings.max_connections,
        on_refused=lambda: metrics.count_proxy_error("too_many_connections"),
        on_bad_request=lambda: metrics.count_proxy_error("bad_request"),
        # A connection that completes no request within this time (slowloris) is closed.
        keepalive_timeout=settings.client_timeout_s,
        # After an early answer (413, 408) aiohttp keeps reading the unread body for this
        # long so the client sees the answer rather than a reset; a stalled client must
        # not hold the connection for long.
        lingering_time=min(2.0, settings.client_timeout_s),
        # aiohttp's access log would print the query string; forward.py writes its own.
        access_log=None,
    )
    return web.ServerRunner(server, shutdown_timeout=settings.shutdown_timeout_s)
