"""The SQLite `Ledger`: plan history, credits, adjustments and statements (migration 0002).

`SqliteLedger` is a base class of `SqliteStore`; it uses the store's connections
(`SqliteFile`) and its meters. Writes go through the store's one writer; the engine's reads
go through `billing_snapshot()` on the billing reader (billing/store/sqlite_snapshot.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import aiosqlite

from billing.credits import CreditGrant
from billing.cycles import Period
from billing.meters import Meter, quantity
from billing.statement import ManualAdjustment, StatementStatus
from billing.store.base import Customer, StoreError, fold_rows
from billing.store.epochs import sqlite_in_epochs
from billing.store.ledger import (
    AdjustmentEntry,
    Conflict,
    CustomerWrite,
    CycleRecord,
    GrantBalance,
    StatementWrite,
    StoredStatement,
    WriteResult,
    cycle_definition,
    exact_sum,
    grant_fields,
    replaces,
)
from billing.store.sqlite_conn import SqliteFile
from billing.store.sqlite_snapshot import (
    STORED_COLUMNS,
    SqliteLedgerSnapshot,
    adjustment_from_row,
    grant_from_row,
    stored_from_row,
)

_CUSTOMER = "SELECT id, created_at_ms, plan, deleted_at_ms FROM customers WHERE id = ?"
_NEW_CUSTOMER = "INSERT INTO customers (id, created_at_ms) VALUES (?, ?) ON CONFLICT DO NOTHING"
# A draft is replaced by a final or by a draft computed from at least as many events; a
# final row is never touched (the schema's trigger refuses it too).
_UPSERT_STATEMENT = """
    INSERT INTO statements (id, customer_id, period_start_ms, period_end_ms, status, cutoff_ms,
                            plan, currency, total_minor, rollover, finalized_at_ms, record)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET
        period_end_ms = excluded.period_end_ms, status = excluded.status,
        cutoff_ms = excluded.cutoff_ms, plan = excluded.plan, currency = excluded.currency,
        total_minor = excluded.total_minor, rollover = excluded.rollover,
        finalized_at_ms = excluded.finalized_at_ms, record = excluded.record
    WHERE statements.status = 'draft'
      AND (excluded.status = 'final' OR statements.cutoff_ms <= excluded.cutoff_ms)"""
_RAW = f"""
    SELECT seq, timestamp_ms, metadata FROM events AS e
    WHERE customer_id = ?1 AND event_name = ?2 AND timestamp_ms >= ?3 AND timestamp_ms < ?4
      AND ingested_at_ms <= ?5 AND {sqlite_in_epochs("e", "?3", "?4")}
    ORDER BY seq"""


class SqliteLedger(SqliteFile):
    """The billing tables of a SQLite store; see the module docstring."""

    _meters: dict[str, Meter]
    _bucket_ms: int

    @asynccontextmanager
    async def billing_snapshot(self) -> AsyncIterator[SqliteLedgerSnapshot]:
        """See `Ledger.billing_snapshot`."""
        async with self._snapshot(billing=True) as conn:
            yield SqliteLedgerSnapshot(conn, self._meters, self._bucket_ms)

    # ------------------------------------------------------------ plans, customers

    async def record_cycles(self, current: Sequence[CycleRecord]) -> list[CycleRecord]:
        """See `Ledger.record_cycles`."""
        async with self._transaction() as conn:
            latest: dict[str, CycleRecord] = {}
            for row in await conn.execute_fetchall(
                "SELECT plan, effective_from_ms, cycle, timezone FROM plan_cycles"
                " ORDER BY plan, effective_from_ms"
            ):
                latest[row[0]] = CycleRecord(*row)
            changed = [r for r in current if (r.cycle, r.timezone) != cycle_definition(latest, r)]
            await conn.executemany(
                "INSERT OR REPLACE INTO plan_cycles VALUES (?, ?, ?, ?)",
                [(r.plan, r.effective_from_ms, r.cycle, r.timezone) for r in changed],
            )
            rows = await conn.execute_fetchall(
                "SELECT plan, effective_from_ms, cycle, timezone FROM plan_cycles"
                " ORDER BY effective_from_ms, plan"
            )
        return [CycleRecord(*row) for row in rows]

    async def assign_plan(
        self, customer_id: str, plan: str | None, effective_from_ms: int, now_ms: int
    ) -> Customer:
        """See `Ledger.assign_plan`."""
        async with self._transaction() as conn:
            await conn.execute(_NEW_CUSTOMER, (customer_id, now_ms))
            await conn.execute(
                "DELETE FROM plan_assignments WHERE customer_id = ? AND effective_from_ms >= ?",
                (customer_id, effective_from_ms),
            )
            await conn.execute(
                "INSERT INTO plan_assignments VALUES (?, ?, ?, ?)",
                (customer_id, effective_from_ms, plan, now_ms),
            )
            await conn.execute("UPDATE customers SET plan = ? WHERE id = ?", (plan, customer_id))
            return await _customer(conn, customer_id)

    async def delete_customer(self, customer_id: str, now_ms: int) -> Customer | None:
        """See `Ledger.delete_customer`."""
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE customers SET deleted_at_ms = ? WHERE id = ? AND deleted_at_ms IS NULL",
                (now_ms, customer_id),
            )
            cursor = await conn.execute(
                "UPDATE api_keys SET revoked_at_ms = ? WHERE customer_id = ?"
                " AND revoked_at_ms IS NULL",
                (now_ms, customer_id),
            )
            if cursor.rowcount:
                await conn.execute("UPDATE key_version SET version = version + 1")
            rows = list(await conn.execute_fetchall(_CUSTOMER, (customer_id,)))
        return Customer(*rows[0]) if rows else None

    # ------------------------------------------------------------- credits, manual

    async def add_grant(self, customer_id: str, grant: CreditGrant) -> tuple[CreditGrant, bool]:
        """See `Ledger.add_grant`."""
        async with self._transaction() as conn:
            cursor = await conn.execute(
                "INSERT INTO credit_grants VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (customer_id, grant.grant_id, grant.meter, str(grant.credits),
                 grant.effective_at_ms, grant.expires_at_ms, grant.created_at_ms),
            )
            rows = await conn.execute_fetchall(
                "SELECT grant_id, meter, credits, effective_at_ms, expires_at_ms, created_at_ms"
                " FROM credit_grants WHERE customer_id = ? AND grant_id = ?",
                (customer_id, grant.grant_id),
            )
        stored = grant_from_row(next(iter(rows)))
        if grant_fields(stored) != grant_fields(grant):
            raise Conflict(f"grant {grant.grant_id!r} exists with other fields")
        return stored, cursor.rowcount == 1

    async def grant_balances(self, customer_id: str) -> list[GrantBalance]:
        """See `Ledger.grant_balances`."""
        rows = await self._read(
            "SELECT g.grant_id, g.meter, g.credits, g.effective_at_ms, g.expires_at_ms,"
            " g.created_at_ms, (SELECT json_group_array(b.credits) FROM credit_burns AS b"
            "   WHERE b.customer_id = g.customer_id AND b.grant_id = g.grant_id)"
            " FROM credit_grants AS g WHERE g.customer_id = ?"
            " ORDER BY g.created_at_ms, g.grant_id",
            (customer_id,),
        )
        return [GrantBalance(grant_from_row(row[:6]), exact_sum(json.loads(row[6])))
                for row in rows]

    async def add_adjustment(
        self, customer_id: str, adjustment: ManualAdjustment
    ) -> tuple[AdjustmentEntry, bool]:
        """See `Ledger.add_adjustment`."""
        a = adjustment
        async with self._transaction() as conn:
            cursor = await conn.execute(
                "INSERT INTO manual_adjustments VALUES (?, ?, ?, ?, ?, NULL)"
                " ON CONFLICT DO NOTHING",
                (customer_id, a.adjustment_id, str(a.amount), a.description, a.created_at_ms),
            )
            rows = await conn.execute_fetchall(
                "SELECT adjustment_id, amount, description, created_at_ms, statement_id"
                " FROM manual_adjustments WHERE customer_id = ? AND adjustment_id = ?",
                (customer_id, a.adjustment_id),
            )
        row = next(iter(rows))
        stored = adjustment_from_row(row[:4])
        if (stored.amount, stored.description) != (a.amount, a.description):
            raise Conflict(f"adjustment {a.adjustment_id!r} exists with other fields")
        return AdjustmentEntry(stored, row[4]), cursor.rowcount == 1

    async def list_adjustments(self, customer_id: str) -> list[AdjustmentEntry]:
        """See `Ledger.list_adjustments`."""
        rows = await self._read(
            "SELECT adjustment_id, amount, description, created_at_ms, statement_id"
            " FROM manual_adjustments WHERE customer_id = ? ORDER BY created_at_ms, adjustment_id",
            (customer_id,),
        )
        return [AdjustmentEntry(adjustment_from_row(row[:4]), row[4]) for row in rows]

    # ------------------------------------------------------------------ statements

    async def write_statements(self, writes: Sequence[CustomerWrite]) -> WriteResult:
        """See `Ledger.write_statements`: one transaction; raises StoreError (nothing
        written) when a manual adjustment was taken by another statement meanwhile."""
        async with self._transaction() as conn:
            heads = await _final_heads(conn, [w.customer_id for w in writes])
            kept = [w for w in writes if heads.get(w.customer_id) == w.final_head]
            existing = await _statuses(conn, [s.head.statement_id for w in kept
                                              for s in w.statements])
            chosen = [statement for write in kept for statement in write.statements
                      if replaces(existing.get(statement.head.statement_id), statement)]
            await _write(conn, chosen)
        drafted = sum(s.head.status == "draft" and s.head.statement_id not in existing
                      for s in chosen)
        finalized = sum(s.head.status == "final" for s in chosen)
        return WriteResult(drafted, finalized, len(writes) - len(kept))

    async def get_statement(self, statement_id: str) -> StoredStatement | None:
        """See `Ledger.get_statement`."""
        rows = await self._read(f"SELECT {STORED_COLUMNS} FROM statements WHERE id = ?",
                                (statement_id,))
        return next((stored_from_row(row) for row in rows), None)

    async def list_statements(
        self,
        *,
        customer_id: str | None,
        status: StatementStatus | None,
        finalized_after_ms: int | None,
        limit: int,
        offset: int = 0,
    ) -> list[StoredStatement]:
        """See `Ledger.list_statements`."""
        conditions = {"customer_id = ?": customer_id, "status = ?": status,
                      "finalized_at_ms > ?": finalized_after_ms}
        used = {sql: value for sql, value in conditions.items() if value is not None}
        where = " AND ".join(used) or "1"
        rows = await self._read(
            f"SELECT {STORED_COLUMNS} FROM statements WHERE {where}"
            " ORDER BY finalized_at_ms IS NULL, finalized_at_ms, period_start_ms, customer_id"
            " LIMIT ? OFFSET ?",
            (*used.values(), limit, offset),
        )
        return [stored_from_row(row) for row in rows]

    async def final_statements(self, after_id: str, limit: int) -> list[StoredStatement]:
        """See `Ledger.final_statements`."""
        rows = await self._read(
            f"SELECT {STORED_COLUMNS} FROM statements WHERE status = 'final' AND id > ?"
            " ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [stored_from_row(row) for row in rows]

    async def statement_counts(self) -> dict[StatementStatus, int]:
        """See `Ledger.statement_counts`."""
        rows = await self._read("SELECT status, COUNT(*) FROM statements GROUP BY status")
        counts: dict[StatementStatus, int] = {"draft": 0, "final": 0}
        counts.update({row[0]: row[1] for row in rows})
        return counts

    async def raw_quantities(
        self, customer_id: str, meters: Sequence[str], period: Period, cutoff_ms: int
    ) -> dict[str, Decimal]:
        """See `Ledger.raw_quantities`. Raises KeyError for an unknown meter."""
        found: dict[str, Decimal] = {}
        for name in meters:
            meter = self._meters.get(name)
            if meter is None:
                raise KeyError(f"unknown meter {name!r}")
            rows = await self._read(_RAW, (customer_id, meter.event_name, period.start_ms,
                                           period.end_ms, cutoff_ms))
            found[name] = quantity(meter.aggregation, fold_rows(meter, rows))
        return found


# ------------------------------------------------------------------- helpers


async def _customer(conn: aiosqlite.Connection, customer_id: str) -> Customer:
    rows = await conn.execute_fetchall(_CUSTOMER, (customer_id,))
    return Customer(*next(iter(rows)))


async def _final_heads(conn: aiosqlite.Connection, customers: Sequence[str]) -> dict[str, int]:
    """customer -> period start of its latest final statement (absent: none)."""
    rows = await conn.execute_fetchall(
        "SELECT customer_id, MAX(period_start_ms) FROM statements WHERE status = 'final'"
        " AND customer_id IN (SELECT value FROM json_each(?)) GROUP BY customer_id",
        (json.dumps(list(customers)),),
    )
    return {row[0]: row[1] for row in rows}


async def _statuses(
    conn: aiosqlite.Connection, ids: Sequence[str]
) -> dict[str, tuple[StatementStatus, int]]:
    """statement id -> (status, cutoff) of those stored."""
    rows = await conn.execute_fetchall(
        "SELECT id, status, cutoff_ms FROM statements"
        " WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(list(ids)),),
    )
    return {row[0]: (row[1], row[2]) for row in rows}



async def _write(conn: aiosqlite.Connection, statements: Sequence[StatementWrite]) -> None:
    """Upsert the statements with their burns and the manual adjustments they take."""
    ids = [(s.head.statement_id,) for s in statements]
    # Drafts' burns go first: once a row is final, the schema keeps its burns forever.
    await conn.executemany("DELETE FROM credit_burns WHERE statement_id = ?", ids)
    await conn.executemany(_UPSERT_STATEMENT, [_statement_row(s) for s in statements])
    await conn.executemany(
        "INSERT INTO credit_burns VALUES (?, ?, ?, ?)",
        [(s.head.statement_id, s.head.customer_id, grant_id, str(credits))
         for s in statements for grant_id, credits in s.burns],
    )
    for s in statements:
        for adjustment_id in s.manual_ids:
            cursor = await conn.execute(
                "UPDATE manual_adjustments SET statement_id = ? WHERE customer_id = ?"
                " AND adjustment_id = ? AND statement_id IS NULL",
                (s.head.statement_id, s.head.customer_id, adjustment_id),
            )
            if cursor.rowcount != 1:
                raise StoreError(f"manual adjustment {adjustment_id!r} of "
                                 f"{s.head.customer_id!r} was taken by another statement")


def _statement_row(s: StatementWrite) -> tuple[Any, ...]:
    head = s.head
    rollover = json.dumps({meter: str(credits) for meter, credits in head.rollover.items()})
    return (head.statement_id, head.customer_id, head.period.start_ms, head.period.end_ms,
            head.status, head.cutoff_ms, head.plan, s.currency, s.total_minor, rollover,
            s.finalized_at_ms, s.record)
