"""Helpers for metric tests: scrape /metrics over HTTP, as Prometheus does, and ingest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import AUTH, Running


@dataclass(frozen=True)
class Scrape:
    """One /metrics answer: its text and the parsed families by name."""

    text: str
    families: dict[str, Any]

    def samples(self, name: str) -> list[Sample]:
        """Every sample named `name` (e.g. meterproxy_requests_total), any family."""
        return [s for f in self.families.values() for s in f.samples if s.name == name]

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels; None when absent."""
        found = [s.value for s in self.samples(name) if s.labels == labels]
        return found[0] if found else None


async def scrape(running: Running, url: str | None = None) -> Scrape:
    """GET /metrics from the admin listener (or `url`) and parse it."""
    # the shared test session does not decompress; ask for plain text
    identity = {"Accept-Encoding": "identity"}
    async with running.session.get(
        url or f"{running.admin_url}/metrics", headers=identity
    ) as response:
        assert response.status == 200, await response.text()
        text = await response.text()
    return Scrape(text, {f.name: f for f in text_string_to_metric_families(text)})


async def ingest(running: Running, *events: dict[str, Any]) -> int:
    """POST /events/ingest; the number of events newly stored."""
    async with running.session.post(
        f"{running.admin_url}/events/ingest", json={"events": list(events)}, headers=AUTH
    ) as response:
        assert response.status == 200, await response.text()
        return int((await response.json())["ingested_count"])
