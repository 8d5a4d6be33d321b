"""Which headers cross the proxy, in each direction (RFC 9110 section 7.6.1)."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from rules.paths import HeaderGlob

# Hop-by-hop: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
FORWARDED = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")
CUSTOMER_HEADER = "X-Meterproxy-Customer"


def connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Header names listed in `Connection`: hop-by-hop for this message only."""
    values = headers.getall("connection", ())
    if not values:
        return frozenset()
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


def upstream_request_headers(
    headers: CIMultiDictProxy[str],
    *,
    drop: frozenset[str],
    peer: str | None,
    trusted: bool,
    scheme: str,
    customer_id: str | None,
    host: str | None,
) -> CIMultiDict[str]:
    """The headers sent upstream: hop-by-hop and key headers removed, X-Forwarded-* set.

    `drop` holds lower-case names to remove (API-key headers). From an untrusted peer
    the client's X-Forwarded-* are replaced, from a trusted one appended to.
    `host` replaces the Host header when not None.
    """
    skip = HOP_BY_HOP | connection_tokens(headers) | drop
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in skip or lower == "x-meterproxy-customer":
            continue
        if not trusted and lower in FORWARDED:
            continue
        out.add(name, value)
    if host is not None:
        out["Host"] = host
    _set_forwarded(out, headers, peer, trusted, scheme)
    if customer_id is not None:
        out[CUSTOMER_HEADER] = customer_id
    return out


def _set_forwarded(
    out: CIMultiDict[str],
    original: CIMultiDictProxy[str],
    peer: str | None,
    trusted: bool,
    scheme: str,
) -> None:
    prior = original.get("x-forwarded-for") if trusted else None
    if peer:
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    if not (trusted and "x-forwarded-proto" in original):
        out["X-Forwarded-Proto"] = scheme
    if not (trusted and "x-forwarded-host" in original) and "host" in original:
        out["X-Forwarded-Host"] = original["host"]


def client_response_headers(
    headers: CIMultiDictProxy[str], strip: tuple[HeaderGlob, ...]
) -> CIMultiDict[str]:
    """The upstream's headers as the client gets them: hop-by-hop and stripped removed."""
    tokens = connection_tokens(headers)
    skip = HOP_BY_HOP | tokens if tokens else HOP_BY_HOP
    stripped = _stripped_names(strip) if strip else None
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in skip:
            continue
        if stripped is not None:
            gone = stripped.get(lower)
            if gone is None:
                gone = _remember(stripped, lower, any(g.match(lower) for g in strip))
            if gone:
                continue
        out.add(name, value)
    return out


# Header names repeat across responses: each is matched against a configuration's globs
# once. Memos by the identity of the globs tuple (a configuration keeps its tuple; a reload
# brings a new one), so a request hashes no glob.
_MEMOS: dict[int, tuple[tuple[HeaderGlob, ...], dict[str, bool]]] = {}
_MAX_MEMOS = 8
_MAX_NAMES = 4096


def _stripped_names(globs: tuple[HeaderGlob, ...]) -> dict[str, bool]:
    entry = _MEMOS.get(id(globs))
    if entry is None or entry[0] is not globs:
        if len(_MEMOS) >= _MAX_MEMOS:
            _MEMOS.clear()
        entry = _MEMOS[id(globs)] = (globs, {})
    return entry[1]


def _remember(memo: dict[str, bool], lower_name: str, stripped: bool) -> bool:
    if len(memo) < _MAX_NAMES:  # bounded: a hostile upstream may invent names
        memo[lower_name] = stripped
    return stripped
