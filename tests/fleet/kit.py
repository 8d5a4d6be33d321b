"""Configurations of fleet-mode replicas for the tests of this folder (no tests here)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import write_config

RULES = """\
rules:
  - name: calls
    match: {path: /v1/**}
    event_name: api.call
    metadata:
      rid: ${request.query.rid}
"""
PASSWORD_VAR = "METERPROXY_FLEET_TEST_PGPASSWORD"  # trust auth ignores it; ${env.} carries it


def fleet_config(directory: Path, upstream: str, database_url: str,
                 durability: str = "batched", cycle: str = "2s") -> Path:
    """A replica's configuration file in `directory` (created; its spool file is there too):
    storage.url is `database_url` with the password taken from ${env.PASSWORD_VAR}; billing
    periods of `cycle` with a 1 s grace; meters api_calls (count of api.call, one per proxied
    request) and units (sum of job.done's units, ingested)."""
    directory.mkdir()
    path = write_config(directory, upstream, rules=RULES, proxy_extra=f"durability: {durability}")
    user, _, rest = database_url.removeprefix("postgresql://").partition("@")
    url = f"postgresql://{user}:${{env.{PASSWORD_VAR}}}@{rest}"
    text = path.read_text()
    for old, new in (
        ("  flush_interval: 10ms", f"  url: {url}\n  flush_interval: 10ms"),
        ("cycle: 30s", f"cycle: {cycle}"),
        ("    event_name: bandwidth\n    aggregation: {type: sum, key: bytes}",
         "    event_name: job.done\n    aggregation: {type: sum, key: units}"),
        ("  - name: egress_bytes", "  - name: units"),
        ('      - {meter: api_calls, price_per_unit: "0.01"}',
         '      - {meter: api_calls, price_per_unit: "0.01"}\n'
         '      - {meter: units, price_per_unit: "0.5"}'),
        ("  default_plan: basic",
         "  default_plan: basic\n  grace_period: 1s\n  ingest_window: {past: 1s, future: 1m}"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path
