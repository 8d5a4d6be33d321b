"""The PostgreSQL `Ledger`: plan history, credits, adjustments and statements (pg migration 0002).

`PostgresLedger` is a base class of `PostgresStore`, as `SqliteLedger` is of `SqliteStore`.

Closing a period once, fleet-wide: every replica's scheduler may run the statement engine at
the same moment. Each `write_statements` transaction first takes the transaction-level
advisory lock `BILLING_LOCK`, so the fleet's statement writes run one at a time and each
sees what the previous one committed (read committed reads after the lock is granted). Under
the lock it keeps only customers whose latest final statement is still the one the run saw
(`CustomerWrite.final_head`), and the unique (customer, period start) key with its
draft-only upsert does the rest: a statement is finalised once, by one replica. Statements,
their credit burns and the manual adjustments they take commit together with the cutoff
(watermark) they were computed at; a replica that dies mid-close loses its open transaction
with its session, server side, so nothing is half-written and the next run completes it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from billing.credits import CreditGrant
from billing.cycles import Period
from billing.meters import Meter, quantity
from billing.statement import ManualAdjustment, StatementStatus
from billing.store import pg_meters
from billing.store.base import Customer, StoreError, fold_rows
from billing.store.epochs import pg_in_epochs
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
from billing.store.pg_connection import Connection, PostgresDatabase
from billing.store.pg_snapshot import PostgresLedgerSnapshot
from billing.store.sqlite_snapshot import (
    STORED_COLUMNS,
    adjustment_from_row,
    grant_from_row,
    stored_from_row,
)

# Any fixed bigint names the lock; this one spells "mp:bills" so that it reads in pg_locks.
BILLING_LOCK = int.from_bytes(b"mp:bills", "big")

_CUSTOMER = "SELECT id, created_at_ms, plan, deleted_at_ms FROM customers WHERE id = $1"
_NEW_CUSTOMER = (
    "INSERT INTO customers (id, created_at_ms) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING"
)
_CYCLES = "SELECT plan, effective_from_ms, cycle, timezone FROM plan_cycles"
_GRANT = """
    SELECT grant_id, meter, credits, effective_at_ms, expires_at_ms, created_at_ms
    FROM credit_grants WHERE customer_id = $1 AND grant_id = $2"""
_ADJUSTMENTS = """
    SELECT adjustment_id, amount, description, created_at_ms, statement_id
    FROM manual_adjustments WHERE customer_id = $1"""
# A draft is replaced by a final or by a draft computed from at least as many events; a
# final row is never touched (the schema's trigger refuses it too).
_UPSERT_STATEMENT = """
    INSERT INTO statements (id, customer_id, period_start_ms, period_end_ms, status, cutoff_ms,
                            plan, currency, total_minor, rollover, finalized_at_ms, record)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (id) DO UPDATE SET
        period_end_ms = excluded.period_end_ms, status = excluded.status,
        cutoff_ms = excluded.cutoff_ms, plan = excluded.plan, currency = excluded.currency,
        total_minor = excluded.total_minor, rollover = excluded.rollover,
        finalized_at_ms = excluded.finalized_at_ms, record = excluded.record
    WHERE statements.status = 'draft'
      AND (excluded.status = 'final' OR statements.cutoff_ms <= excluded.cutoff_ms)"""
_RAW = f"""
    SELECT seq, timestamp_ms, metadata FROM events AS e
    WHERE customer_id = $1 AND event_name = $2 AND timestamp_ms >= $3 AND timestamp_ms < $4
      AND ingested_at_ms <= $5 AND {pg_in_epochs("e", "$3", "$4")}
    ORDER BY seq"""


class PostgresLedger(PostgresDatabase):
    """The billing tables of a PostgreSQL store; see the module docstring."""

    _meters: dict[str, Meter]
    _bucket_ms: int

    @asynccontextmanager
    async def billing_snapshot(self) -> AsyncIterator[PostgresLedgerSnapshot]:
        """See `Ledger.billing_snapshot`. Raises StoreError while the shared aggregates were
        built with other meter definitions than this replica's (billing would read them
        wrongly; see billing/store/pg_meters.py)."""
        async with self._snapshot() as conn:
            await pg_meters.refuse_if_stale(conn, self._meters.values(), self._bucket_ms)
            yield PostgresLedgerSnapshot(conn, self._meters, self._bucket_ms)

    # ------------------------------------------------------------ plans, customers

    async def record_cycles(self, current: Sequence[CycleRecord]) -> list[CycleRecord]:
        """See `Ledger.record_cycles`; replicas starting together record a change once."""
        async with self._transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", BILLING_LOCK)
            latest = {row[0]: CycleRecord(*row)
                      for row in await conn.fetch(f"{_CYCLES} ORDER BY plan, effective_from_ms")}
            changed = [r for r in current if (r.cycle, r.timezone) != cycle_definition(latest, r)]
            if changed:
                await conn.executemany(
                    "INSERT INTO plan_cycles VALUES ($1, $2, $3, $4) ON CONFLICT (plan,"
                    " effective_from_ms) DO UPDATE SET cycle = excluded.cycle,"
                    " timezone = excluded.timezone",
                    [(r.plan, r.effective_from_ms, r.cycle, r.timezone) for r in changed],
                )
            rows = await conn.fetch(f"{_CYCLES} ORDER BY effective_from_ms, plan")
        return [CycleRecord(*row) for row in rows]

    async def assign_plan(
        self, customer_id: str, plan: str | None, effective_from_ms: int, now_ms: int
    ) -> Customer:
        """See `Ledger.assign_plan`."""
        async with self._transaction() as conn:
            await conn.execute(_NEW_CUSTOMER, customer_id, now_ms)
            await conn.execute(
                "DELETE FROM plan_assignments WHERE customer_id = $1 AND effective_from_ms >= $2",
                customer_id, effective_from_ms,
            )
            await conn.execute("INSERT INTO plan_assignments VALUES ($1, $2, $3, $4)",
                               customer_id, effective_from_ms, plan, now_ms)
            await conn.execute("UPDATE customers SET plan = $1 WHERE id = $2", plan, customer_id)
            return Customer(*await _one(conn, _CUSTOMER, customer_id))

    async def delete_customer(self, customer_id: str, now_ms: int) -> Customer | None:
        """See `Ledger.delete_customer`."""
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE customers SET deleted_at_ms = $1 WHERE id = $2 AND deleted_at_ms IS NULL",
                now_ms, customer_id,
            )
            revoked = await conn.execute(
                "UPDATE api_keys SET revoked_at_ms = $1 WHERE customer_id = $2"
                " AND revoked_at_ms IS NULL",
                now_ms, customer_id,
            )
            if revoked != "UPDATE 0":  # asyncpg returns the command tag
                await conn.execute("UPDATE key_version SET version = version + 1")
            row = await conn.fetchrow(_CUSTOMER, customer_id)
        return None if row is None else Customer(*row)

    # ------------------------------------------------------------- credits, manual

    async def add_grant(self, customer_id: str, grant: CreditGrant) -> tuple[CreditGrant, bool]:
        """See `Ledger.add_grant`."""
        async with self._transaction() as conn:
            status = await conn.execute(
                "INSERT INTO credit_grants VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT DO NOTHING",
                customer_id, grant.grant_id, grant.meter, str(grant.credits),
                grant.effective_at_ms, grant.expires_at_ms, grant.created_at_ms,
            )
            stored = grant_from_row(await _one(conn, _GRANT, customer_id, grant.grant_id))
        if grant_fields(stored) != grant_fields(grant):
            raise Conflict(f"grant {grant.grant_id!r} exists with other fields")
        return stored, status == "INSERT 0 1"

    async def grant_balances(self, customer_id: str) -> list[GrantBalance]:
        """See `Ledger.grant_balances`."""
        rows = await self._read(
            "SELECT g.grant_id, g.meter, g.credits, g.effective_at_ms, g.expires_at_ms,"
            " g.created_at_ms, ARRAY(SELECT b.credits FROM credit_burns AS b"
            "   WHERE b.customer_id = g.customer_id AND b.grant_id = g.grant_id)"
            " FROM credit_grants AS g WHERE g.customer_id = $1"
            " ORDER BY g.created_at_ms, g.grant_id",
            customer_id,
        )
        return [GrantBalance(grant_from_row(row[:6]), exact_sum(row[6])) for row in rows]

    async def add_adjustment(
        self, customer_id: str, adjustment: ManualAdjustment
    ) -> tuple[AdjustmentEntry, bool]:
        """See `Ledger.add_adjustment`."""
        a = adjustment
        async with self._transaction() as conn:
            status = await conn.execute(
                "INSERT INTO manual_adjustments VALUES ($1, $2, $3, $4, $5, NULL)"
                " ON CONFLICT DO NOTHING",
                customer_id, a.adjustment_id, str(a.amount), a.description, a.created_at_ms,
            )
            row = await _one(conn, f"{_ADJUSTMENTS} AND adjustment_id = $2", customer_id,
                             a.adjustment_id)
        stored = adjustment_from_row(row[:4])
        if (stored.amount, stored.description) != (a.amount, a.description):
            raise Conflict(f"adjustment {a.adjustment_id!r} exists with other fields")
        return AdjustmentEntry(stored, row[4]), status == "INSERT 0 1"

    async def list_adjustments(self, customer_id: str) -> list[AdjustmentEntry]:
        """See `Ledger.list_adjustments`."""
        rows = await self._read(f"{_ADJUSTMENTS} ORDER BY created_at_ms, adjustment_id",
                                customer_id)
        return [AdjustmentEntry(adjustment_from_row(row[:4]), row[4]) for row in rows]

    # ------------------------------------------------------------------ statements

    async def write_statements(self, writes: Sequence[CustomerWrite]) -> WriteResult:
        """See `Ledger.write_statements`: one transaction under the fleet's billing lock
        (module docstring); raises StoreError (nothing written) when a manual adjustment
        was taken by another statement meanwhile."""
        async with self._transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", BILLING_LOCK)
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
        rows = await self._read(f"SELECT {STORED_COLUMNS} FROM statements WHERE id = $1",
                                statement_id)
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
        conditions = {"customer_id = $%d": customer_id, "status = $%d": status,
                      "finalized_at_ms > $%d": finalized_after_ms}
        used = [(sql, value) for sql, value in conditions.items() if value is not None]
        where = " AND ".join(sql % n for n, (sql, _) in enumerate(used, 1)) or "true"
        rows = await self._read(
            f"SELECT {STORED_COLUMNS} FROM statements WHERE {where}"
            " ORDER BY finalized_at_ms NULLS LAST, period_start_ms, customer_id"
            f" LIMIT ${len(used) + 1} OFFSET ${len(used) + 2}",
            *(value for _, value in used), limit, offset,
        )
        return [stored_from_row(row) for row in rows]

    async def final_statements(self, after_id: str, limit: int) -> list[StoredStatement]:
        """See `Ledger.final_statements`."""
        rows = await self._read(
            f"SELECT {STORED_COLUMNS} FROM statements WHERE status = 'final' AND id > $1"
            " ORDER BY id LIMIT $2",
            after_id, limit,
        )
        return [stored_from_row(row) for row in rows]

    async def statement_counts(self) -> dict[StatementStatus, int]:
        """See `Ledger.statement_counts`."""
        rows = await self._read("SELECT status, count(*) FROM statements GROUP BY status")
        counts: dict[StatementStatus, int] = {"draft": 0, "final": 0}
        counts.update({row[0]: int(row[1]) for row in rows})
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
            rows = await self._read(_RAW, customer_id, meter.event_name, period.start_ms,
                                    period.end_ms, cutoff_ms)
            found[name] = quantity(meter.aggregation, fold_rows(meter, rows))
        return found


# ------------------------------------------------------------------- helpers



async def _write(conn: Connection, statements: Sequence[StatementWrite]) -> None:
    """Upsert the statements with their burns and the manual adjustments they take."""
    if not statements:
        return
    # Drafts' burns go first: once a row is final, the schema keeps its burns forever.
    await conn.execute("DELETE FROM credit_burns WHERE statement_id = ANY($1::text[])",
                       [s.head.statement_id for s in statements])
    await conn.executemany(_UPSERT_STATEMENT, [_statement_row(s) for s in statements])
    burns = [(s.head.statement_id, s.head.customer_id, grant_id, str(credits))
             for s in statements for grant_id, credits in s.burns]
    if burns:
        await conn.executemany("INSERT INTO credit_burns VALUES ($1, $2, $3, $4)", burns)
    for s in statements:
        for adjustment_id in s.manual_ids:
            taken = await conn.execute(
                "UPDATE manual_adjustments SET statement_id = $1 WHERE customer_id = $2"
                " AND adjustment_id = $3 AND statement_id IS NULL",
                s.head.statement_id, s.head.customer_id, adjustment_id,
            )
            if taken != "UPDATE 1":
                raise StoreError(f"manual adjustment {adjustment_id!r} of "
                                 f"{s.head.customer_id!r} was taken by another statement")


def _statement_row(s: StatementWrite) -> tuple[Any, ...]:
    head = s.head
    rollover = json.dumps({meter: str(credits) for meter, credits in head.rollover.items()})
    return (head.statement_id, head.customer_id, head.period.start_ms, head.period.end_ms,
            head.status, head.cutoff_ms, head.plan, s.currency, s.total_minor, rollover,
            s.finalized_at_ms, s.record)


async def _final_heads(conn: Connection, customers: Sequence[str]) -> dict[str, int]:
    """customer -> period start of its latest final statement (absent: none)."""
    rows = await conn.fetch(
        "SELECT customer_id, max(period_start_ms) FROM statements WHERE status = 'final'"
        " AND customer_id = ANY($1::text[]) GROUP BY customer_id",
        list(customers),
    )
    return {row[0]: row[1] for row in rows}


async def _statuses(conn: Connection, ids: Sequence[str]) -> dict[str, tuple[StatementStatus, int]]:
    """statement id -> (status, cutoff) of those stored."""
    rows = await conn.fetch(
        "SELECT id, status, cutoff_ms FROM statements WHERE id = ANY($1::text[])", list(ids)
    )
    return {row[0]: (row[1], row[2]) for row in rows}


async def _one(conn: Connection, sql: str, *args: Any) -> Sequence[Any]:
    """The row the query must find (it was written in this transaction)."""
    row = await conn.fetchrow(sql, *args)
    assert row is not None  # inserted or already there, in this transaction
    return row


