"""billing/verify.py and the `meterproxy verify` and `rebuild` commands on a real file."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from billing.engine import StatementEngine
from billing.statement import ManualAdjustment
from billing.store.sqlite import SqliteStore
from billing.verify import verify
from proxy.app import store_for
from proxy.config import Config, load_config
from tests.billing.test_engine_kit import DAY, FEB, GRACE, JAN, Clock, event
from tests.proxy.test_cli import run_cli

CONFIG = """\
proxy: {{listen: "127.0.0.1:0", upstream: "http://127.0.0.1:9"}}
admin: {{listen: "127.0.0.1:0", token: test-token}}
storage: {{path: {db}}}
meters:
  - {{name: api_calls, event_name: api.call, aggregation: {{type: count}}}}
  - {{name: peak_seats, event_name: seats.reported, aggregation: {{type: max, key: seats}}}}
plans:
  - name: pro
    currency: USD
    cycle: monthly
    fixed_price: "49.00"
    prices:
      - {{meter: api_calls, price_per_unit: "0.01", free_threshold: 2}}
      - {{meter: peak_seats, price_per_unit: "2", free_threshold: 5}}
billing: {{default_plan: pro, grace_period: 1h}}
"""


async def statements(config: Config, clock: Clock, corrupt: str | None = None) -> None:
    """Bill January and February for a, b and c (late usage of January for a, a manual
    line for b); with `corrupt`, that customer's aggregates are damaged before February is
    final."""
    store = store_for(config, clock)
    await store.open()
    engine = StatementEngine(store, config.plans, config.billing,
                             [m.name for m in config.meters], clock=clock)
    await engine.open()
    try:
        events = [event(c, "api.call", JAN.start_ms + i * DAY) for c in "abc" for i in range(4)]
        await store.append([*events, event("a", "seats.reported", JAN.start_ms, seats=9)],
                           JAN.start_ms + 5 * DAY)
        for at in (JAN.end_ms, JAN.end_ms + GRACE):
            await engine.close(at)
        await store.append([event("a", "seats.reported", JAN.start_ms + DAY, seats=12),
                            event("c", "api.call", FEB.start_ms + DAY)], FEB.start_ms + 2 * DAY)
        await store.add_adjustment("b", ManualAdjustment("m1", Decimal(3), "Setup", FEB.start_ms))
        if corrupt:
            with sqlite3.connect(config.storage.path) as conn:
                conn.execute("UPDATE meter_aggregates SET count = count + 5, value = value + 5"
                             " WHERE customer_id = ?", (corrupt,))
        for at in (FEB.end_ms, FEB.end_ms + GRACE):
            await engine.close(at)
    finally:
        await store.close()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "meterproxy.yaml"
    path.write_text(CONFIG.format(db=tmp_path / "billing.db"))
    return load_config(path)


async def verified(config: Config) -> list[tuple[str, tuple[str, ...]]]:
    store: SqliteStore = store_for(config)
    await store.open()
    try:
        return [(d.customer_id, d.problems) async for d in verify(store, config.billing.timezone)
                if d is not None]
    finally:
        await store.close()


async def test_statements_recompute_identically_from_the_raw_events(config: Config) -> None:
    await statements(config, Clock())
    assert await verified(config) == []
    with sqlite3.connect(config.storage.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM statements WHERE status = 'final'"
                            ).fetchone() == (6,)


async def test_a_statement_built_from_damaged_aggregates_is_reported(config: Config) -> None:
    await statements(config, Clock(), corrupt="c")
    [(customer, problems)] = await verified(config)
    assert customer == "c"
    assert any(p.startswith("line api_calls: quantity 6 -> 1") for p in problems), problems


async def test_the_verify_command_exits_1_on_a_difference(config: Config) -> None:
    await statements(config, Clock(), corrupt="c")
    code, out, _ = await run_cli("verify", "-c", config.filename)
    assert code == 1
    lines = out.splitlines()
    assert lines[-1] == "6 final statements verified, 1 differ"
    assert all("(c)" in line for line in lines[:-1])
    # rebuilding the aggregates repairs what later statements read, not final ones
    assert (await run_cli("rebuild", "-c", config.filename))[0] == 0
    assert (await run_cli("verify", "-c", config.filename))[0] == 1


async def test_the_verify_command_exits_0_when_everything_agrees(config: Config) -> None:
    await statements(config, Clock())
    assert await run_cli("verify", "-c", config.filename) == (
        0, "6 final statements verified, 0 differ\n", "")
