"""The whole configuration: read a file once into frozen values, or say what is wrong.

`load_config(path)` returns a `Config` or raises `ConfigError` whose problems carry
`FILE:LINE: path: message`. Each section is parsed by the layer that owns it:
rules/ (rules, customers), billing/ (meters, plans, billing) and this module
(proxy, admin, metrics, storage).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from yarl import URL

from billing.meters import Meter, parse_meters
from billing.plans import BillingSettings, Plan, parse_billing, parse_plans
from billing.settings import ConfigError, Problem, Problems, Section
from billing.store.pg_url import check_url
from billing.writer import OnFull
from proxy.gc_schedule import POLICIES, GcPolicy
from proxy.yamlfile import line_for, parse_yaml
from rules.identify import CustomersConfig
from rules.load import parse_customers, parse_rules
from rules.paths import HeaderGlob
from rules.ruleset import RuleSet

DEFAULT_ADMIN_TOKEN = "dev-admin-token"
MIN_PUBLIC_TOKEN_CHARS = 32
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
WriterPlace = Literal["process", "thread"]


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        """Parse "127.0.0.1:8080", "[::1]:8080" or ":8080" (all interfaces)."""
        host, sep, port = text.strip().rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8080, got {text!r}")
        host = host.strip("[]") or "0.0.0.0"
        return cls(host, int(port))

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ProxySettings:
    listen: Listen
    upstream: URL
    host_header: str  # client | upstream
    trusted_proxies: tuple[IpNetwork, ...]
    connect_timeout_s: float
    read_timeout_s: float
    client_timeout_s: float  # idle client connection / next chunk of a request body
    max_request_body: int
    inspect_body_limit: int
    strip_response_headers: tuple[HeaderGlob, ...]
    drain_after_disconnect_s: float
    max_concurrent_drains: int
    shutdown_timeout_s: float
    durability: str  # batched | strict
    max_connections: int
    server_timing: bool
    access_log: bool
    gc: GcPolicy = "tuned"  # proxy/gc_schedule.py

    _trust: dict[str, bool] = field(default_factory=dict, init=False, compare=False, repr=False)

    def is_trusted(self, peer: str | None) -> bool:
        """Whether `peer` is in trusted_proxies; answered from a per-address memo, since
        a sidecar sees the same few peers on every request."""
        if not peer:
            return False
        trusted = self._trust.get(peer)
        if trusted is None:
            if len(self._trust) >= _TRUST_MEMO_SIZE:
                self._trust.clear()
            trusted = self._trust[peer] = _in_networks(peer, self.trusted_proxies)
        return trusted


_TRUST_MEMO_SIZE = 4096


def _in_networks(peer: str, networks: tuple[IpNetwork, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    return any(address in network for network in networks)


@dataclass(frozen=True)
class AdminSettings:
    listen: Listen
    token: str
    ingest_token: str
    business_id: str


@dataclass(frozen=True)
class MetricsSettings:
    listen: Listen | None
    customer_labels: bool
    max_customers: int
    usage_reconcile_ms: int  # how often the open-usage table is read whole from the store


@dataclass(frozen=True)
class StorageSettings:
    path: str
    url: str
    flush_interval_ms: int
    on_full: OnFull
    max_pending: int
    writer: WriterPlace = "thread"  # where appends run; "process": proxy/store_process.py


@dataclass(frozen=True)
class Config:
    filename: str
    proxy: ProxySettings
    admin: AdminSettings
    metrics: MetricsSettings
    storage: StorageSettings
    customers: CustomersConfig
    rules: RuleSet
    meters: tuple[Meter, ...]
    plans: tuple[Plan, ...]
    billing: BillingSettings
    warnings: tuple[Problem, ...] = ()


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raise ConfigError naming file, line and field."""
    filename = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem("", f"cannot read: {exc.strerror or exc}")], filename) from exc
    return parse_config(text, filename, environ)


def parse_config(text: str, filename: str, environ: Mapping[str, str] | None = None) -> Config:
    data, lines = parse_yaml(text, filename)
    problems = Problems()
    root = Section(data, "", problems, environ)
    config = _parse_sections(root)
    root.done()
    located = [replace(p, line=line_for(lines, p.path)) for p in problems.errors]
    if located:
        raise ConfigError(located, filename)
    warnings = tuple(replace(p, line=line_for(lines, p.path)) for p in problems.warnings)
    return replace(config, filename=filename, warnings=warnings)


def _parse_sections(root: Section) -> Config:
    proxy = _parse_proxy(root.section("proxy", required=True))
    meters = parse_meters(root)
    plans = parse_plans(root, meters)
    return Config(
        filename="",
        proxy=proxy,
        admin=_parse_admin(root.section("admin")),
        metrics=_parse_metrics(root.section("metrics")),
        storage=_parse_storage(root.section("storage")),
        customers=parse_customers(root),
        rules=parse_rules(root, proxy.inspect_body_limit),
        meters=meters,
        plans=plans,
        billing=parse_billing(root, plans),
    )


def _listen(s: Section, key: str, default: str) -> Listen:
    text = s.text(key, default)
    try:
        return Listen.parse(text)
    except ValueError as exc:
        s.fail(key, str(exc))
        return Listen.parse(default)


def _parse_proxy(s: Section) -> ProxySettings:
    timeouts = s.section("timeouts")
    settings = ProxySettings(
        listen=_listen(s, "listen", "127.0.0.1:8080"),
        upstream=_upstream(s),
        host_header=s.choice("host_header", ("client", "upstream"), "client"),
        trusted_proxies=_networks(s),
        connect_timeout_s=timeouts.duration_ms("connect", 5_000) / 1000,
        read_timeout_s=timeouts.duration_ms("read", 300_000) / 1000,
        client_timeout_s=timeouts.duration_ms("client", 60_000) / 1000,
        max_request_body=s.size("max_request_body", 100_000_000),
        inspect_body_limit=s.size("inspect_body_limit", 1_000_000),
        strip_response_headers=_header_globs(s),
        drain_after_disconnect_s=s.duration_ms("drain_after_disconnect", 30_000) / 1000,
        max_concurrent_drains=s.integer("max_concurrent_drains", 100, minimum=0),
        shutdown_timeout_s=s.duration_ms("shutdown_timeout", 30_000) / 1000,
        durability=s.choice("durability", ("batched", "strict"), "batched"),
        max_connections=s.integer("max_connections", 10_000, minimum=1),
        server_timing=s.flag("server_timing", False),
        access_log=s.flag("access_log", False),
        gc=s.choice("gc", POLICIES, "tuned"),
    )
    timeouts.done()
    s.done()
    return settings


def _upstream(s: Section) -> URL:
    text = s.text("upstream")
    url = URL(text) if text else URL()
    if text and (url.scheme not in ("http", "https") or not url.host):
        s.fail("upstream", f"expected an http:// or https:// URL, got {text!r}")
    if text and (url.query_string or url.fragment):
        s.fail("upstream", "must not have a query string or fragment")
    return url


def _networks(s: Section) -> tuple[IpNetwork, ...]:
    out = []
    texts = s.str_list("trusted_proxies", ("127.0.0.0/8", "::1/128"))
    for i, text in enumerate(texts):
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            s.problems.add(f"{s.key_path('trusted_proxies')}[{i}]", f"not a network: {text!r}")
    return tuple(out)


def _header_globs(s: Section) -> tuple[HeaderGlob, ...]:
    out = []
    for i, text in enumerate(s.str_list("strip_response_headers")):
        try:
            out.append(HeaderGlob.compile(text.lower()))
        except ValueError as exc:
            s.problems.add(f"{s.key_path('strip_response_headers')}[{i}]", str(exc))
    return tuple(out)


def _parse_admin(s: Section) -> AdminSettings:
    settings = AdminSettings(
        listen=_listen(s, "listen", "127.0.0.1:9090"),
        token=s.text("token", DEFAULT_ADMIN_TOKEN),
        ingest_token=s.text("ingest_token", ""),
        business_id=s.text("business_id", "meterproxy"),
    )
    s.done()
    if not settings.token:
        s.fail("token", "must not be empty")
    elif not settings.listen.is_loopback and (
        settings.token == DEFAULT_ADMIN_TOKEN or len(settings.token) < MIN_PUBLIC_TOKEN_CHARS
    ):
        s.fail(
            "token",
            f"the admin listener {settings.listen} is not loopback: set a token of at least "
            f"{MIN_PUBLIC_TOKEN_CHARS} characters (not the default)",
        )
    return settings


def _parse_metrics(s: Section) -> MetricsSettings:
    listen_text = s.text("listen", "")
    listen = None
    if listen_text:
        try:
            listen = Listen.parse(listen_text)
        except ValueError as exc:
            s.fail("listen", str(exc))
    settings = MetricsSettings(
        listen=listen,
        customer_labels=s.flag("customer_labels", False),
        max_customers=s.integer("max_customers", 100, minimum=1),
        usage_reconcile_ms=s.duration_ms("usage_reconcile", 300_000),
    )
    s.done()
    if settings.usage_reconcile_ms <= 0:
        s.fail("usage_reconcile", "must be more than 0s")
    return settings


def _parse_storage(s: Section) -> StorageSettings:
    settings = StorageSettings(
        path=s.text("path", "meterproxy.db"),
        url=s.text("url", ""),
        flush_interval_ms=s.duration_ms("flush_interval", 50),
        on_full=s.choice("on_full", ("reject", "drop"), "reject"),
        max_pending=s.integer("max_pending", 100_000, minimum=1),
        writer=s.choice("writer", ("thread", "process"), "thread"),
    )
    s.done()
    if settings.url:
        try:
            check_url(settings.url)
        except ValueError as exc:
            s.fail("url", str(exc))
    if settings.flush_interval_ms <= 0:
        s.fail("flush_interval", "must be more than 0ms")
    return settings
