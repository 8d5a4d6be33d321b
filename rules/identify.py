"""Finding the customer of an exchange: API keys, then request and response selectors."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from rules.paths import PathGlob
from rules.selectors import Selector

_CUSTOMER_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


def valid_customer_id(value: object) -> bool:
    return isinstance(value, str) and _CUSTOMER_ID.match(value) is not None


def hash_key(key: str) -> bytes:
    """The only form in which an API key is ever stored or compared."""
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class ApiKeySource:
    header: str  # lower-case header name
    scheme: str | None  # e.g. "bearer" (compared case-insensitively), None: the raw value


@dataclass(frozen=True, slots=True)
class SelectorSource:
    selector: Selector  # request.header / request.query (request time) or response.header


Source = ApiKeySource | SelectorSource


@dataclass(frozen=True, slots=True)
class CustomersConfig:
    sources: tuple[Source, ...]
    unidentified: Literal["reject", "pass"]
    public_paths: tuple[PathGlob, ...]
    # Derived once here: every request reads them.
    api_key_headers: frozenset[str] = field(init=False, repr=False, compare=False)
    """Headers that carry keys: removed before the request is forwarded."""
    response_sources: tuple[SelectorSource, ...] = field(init=False, repr=False, compare=False)
    """Sources read from the response (allowed only with `unidentified: pass`)."""

    def __post_init__(self) -> None:
        keys = frozenset(s.header for s in self.sources if isinstance(s, ApiKeySource))
        late = tuple(
            s
            for s in self.sources
            if isinstance(s, SelectorSource) and s.selector.phase != "request"
        )
        object.__setattr__(self, "api_key_headers", keys)
        object.__setattr__(self, "response_sources", late)

    def is_public(self, norm_path: str) -> bool:
        if not self.public_paths:
            return False
        return any(glob.match(norm_path) is not None for glob in self.public_paths)


class Verdict(Enum):
    FOUND = "found"
    BAD_KEY = "bad_key"  # a key was presented but is unknown or revoked: 401, no fallback
    UNKNOWN = "unknown"  # no source yielded a customer (response sources may still)


class KeyRing:
    """Active API keys by hash; replaced whole when keys change, never edited in place.

    Entries are indexed by the first 8 bytes of the digest and the full digest is
    then compared with `hmac.compare_digest`, so no code path compares key-derived
    material with an early exit.
    """

    def __init__(self, hashes: Mapping[bytes, tuple[str, str]] | None = None) -> None:
        self._by_prefix: dict[bytes, list[tuple[bytes, str]]] = {}
        for digest, (customer_id, _key_id) in (hashes or {}).items():
            self._by_prefix.setdefault(digest[:8], []).append((digest, customer_id))
        self._size = len(hashes or {})

    def __len__(self) -> int:
        return self._size

    def customer_for(self, key: str) -> str | None:
        digest = hash_key(key)
        found = None
        for stored, customer_id in self._by_prefix.get(digest[:8], ()):
            if hmac.compare_digest(stored, digest):
                found = customer_id
        return found


def identify_request(
    config: CustomersConfig,
    headers: Any,
    query: Callable[[], Any],
    trusted_peer: bool,
    keys: KeyRing,
) -> tuple[Verdict, str | None]:
    """Apply the request-time sources in order; the first that yields a valid id wins.

    `query` gives the parsed query string; it is called only if a source needs it.
    """
    for source in config.sources:
        if isinstance(source, ApiKeySource):
            presented = _presented_key(headers.get(source.header), source.scheme)
            if presented is None:
                continue
            customer = keys.customer_for(presented)
            return (Verdict.FOUND, customer) if customer else (Verdict.BAD_KEY, None)
        selector = source.selector
        if selector.source == "request.header":
            if not trusted_peer:
                continue
            value = headers.get(selector.arg)
        elif selector.source == "request.query":
            value = query().get(selector.arg)
        else:
            continue
        if valid_customer_id(value):
            return Verdict.FOUND, value
    return Verdict.UNKNOWN, None


def identify_response(config: CustomersConfig, response_headers: Any) -> str | None:
    """Apply the response-time sources (allowed only with `unidentified: pass`)."""
    for source in config.response_sources:
        value = response_headers.get(source.selector.arg) if response_headers else None
        if valid_customer_id(value):
            return str(value)
    return None


def _presented_key(value: str | None, scheme: str | None) -> str | None:
    if not value:
        return None
    if scheme is None:
        return value.strip() or None
    given, _, token = value.strip().partition(" ")
    if given.lower() != scheme or not token.strip():
        return None
    return token.strip()
