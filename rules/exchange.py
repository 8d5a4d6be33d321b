"""The record of one proxied exchange, filled by the proxy and read by rules.

The proxy creates one `Exchange` per request, fills the response side as it
streams, and hands it to `RuleSet.events()` when the exchange ends (also when it
was aborted). It is a plain mutable record on purpose: one allocation per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from multidict import CIMultiDictProxy, MultiDict, MultiDictProxy
from yarl import URL


@dataclass(slots=False)
class Exchange:
    method: str
    path: str  # as received, without the query string
    norm_path: str  # decoded and normalised: what globs match against
    query_string: str
    request_headers: CIMultiDictProxy[str]
    started_ms: int  # wall clock, the events' timestamp
    customer_id: str | None = None
    status: int | None = None
    response_headers: CIMultiDictProxy[str] | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    duration_ms: int = 0
    aborted: bool = False
    request_json: Mapping[str, Any] | None = None
    response_json: Mapping[str, Any] | None = None
    emitted: bool = False  # the proxy handed the events over already (strict durability)
    # (rule index, path captures) of every rule whose method and path matched
    candidates: list[tuple[int, dict[str, str]]] = field(default_factory=list)

    @cached_property
    def query(self) -> MultiDictProxy[str]:
        if not self.query_string:
            return MultiDictProxy(MultiDict())
        return URL.build(query_string=self.query_string, encoded=True).query
