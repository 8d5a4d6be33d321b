"""Billing routes: meters, usage previews, statements, credits, manual adjustments,
billing runs."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web

from billing.credits import CreditGrant
from billing.events import format_timestamp
from billing.money import EXACT
from billing.record_codec import decode
from billing.render import statement_to_csv, statement_to_html, statement_to_json
from billing.settings import parse_decimal
from billing.statement import ManualAdjustment, StatementStatus
from billing.store.ledger import AdjustmentEntry, Conflict, GrantBalance, StoredStatement
from proxy.admin.jsonout import json_response
from proxy.admin.params import (
    ApiError,
    bad_request,
    customer_id,
    instant,
    json_body,
    not_found,
    page,
    page_of,
    time_param,
)

if TYPE_CHECKING:
    from proxy.admin.context import AdminContext

MAX_ID_CHARS = 128
MAX_DESCRIPTION_CHARS = 500
MAX_AMOUNT = Decimal(10) ** 18  # credits and amounts, like meter numbers: |x| < 10^18
FORMATS = ("json", "csv", "html")


# ---------------------------------------------------------------------- meters


async def list_meters(request: web.Request, mp: AdminContext) -> web.Response:
    """The configured meters, as Dodo Payments' meter API names their fields."""
    meters = [m.to_json() for m in mp.config.meters]
    return json_response({"items": page_of(meters, request)})


# -------------------------------------------------------------------- previews


async def usage(request: web.Request, mp: AdminContext) -> web.Response:
    """The statement of the period containing `at` (default now), as it stands."""
    cid = customer_id(request)
    now = mp.clock()
    at = time_param(request, "at")
    preview = await mp.engine.preview(cid, now if at is None else at, now)
    if preview is None:
        raise not_found("no such customer, or no billing period contains that instant")
    body = statement_to_json(preview.statement.statement, mp.config.billing.timezone)
    if not preview.stored:
        body["status"] = "draft" if preview.ended else "open"
    return json_response({"at": format_timestamp(now if at is None else at), **body})


async def run_billing(request: web.Request, mp: AdminContext) -> web.Response:
    """Draft and finalise every statement that is due, now."""
    result = await mp.engine.close()
    return json_response({"drafted": result.drafted, "finalized": result.finalized})


# ------------------------------------------------------------------ statements


async def list_statements(request: web.Request, mp: AdminContext) -> web.Response:
    limit, offset = page(request)
    status = request.query.get("status") or None
    if status not in (None, "draft", "final"):
        raise bad_request("status must be draft or final")
    found = await mp.store.list_statements(
        customer_id=request.query.get("customer_id") or None,
        status=_status(status),
        finalized_after_ms=time_param(request, "finalized_after"),
        limit=limit,
        offset=offset,
    )
    return json_response({"items": [_statement_json(s, mp) for s in found]})


async def get_statement(request: web.Request, mp: AdminContext) -> web.Response:
    """JSON by default; `?format=csv` or `?format=html` (printable, no script)."""
    fmt = request.query.get("format", "json")
    if fmt not in FORMATS:
        raise bad_request(f"format must be one of {', '.join(FORMATS)}")
    stored = await mp.store.get_statement(request.match_info["statement_id"])
    if stored is None:
        raise not_found("no statement with this id")
    tz = mp.config.billing.timezone
    statement = decode(stored.record).statement
    if fmt == "csv":
        return web.Response(text=statement_to_csv(statement, tz), content_type="text/csv",
                            charset="utf-8")
    if fmt == "html":
        return web.Response(text=statement_to_html(statement, tz), content_type="text/html",
                            charset="utf-8")
    return json_response(_statement_json(stored, mp))


def _statement_json(stored: StoredStatement, mp: AdminContext) -> dict[str, Any]:
    body = statement_to_json(decode(stored.record).statement, mp.config.billing.timezone)
    finalized = stored.finalized_at_ms
    return {**body, "finalized_at": None if finalized is None else format_timestamp(finalized)}


def _status(text: str | None) -> StatementStatus | None:
    return "draft" if text == "draft" else "final" if text == "final" else None


# --------------------------------------------------------------------- credits


async def grant_credits(request: web.Request, mp: AdminContext) -> web.Response:
    """Grant credits; a retry with the same grant_id returns the first grant (200)."""
    cid = await _existing_customer(request, mp, active=True)
    body = await json_body(request)
    now = mp.clock()
    meter = body.get("meter")
    if not isinstance(meter, str):
        raise bad_request("meter must be a meter's name")
    if meter not in {m.name for m in mp.config.meters}:
        raise bad_request(f"unknown meter {meter!r}", code="unknown_meter")
    effective = _instant(body, "effective_at")
    effective = now if effective is None else effective
    expires = _instant(body, "expires_at")
    if expires is not None and expires <= effective:
        raise bad_request("expires_at must be after effective_at")
    grant = CreditGrant(_identifier(body, "grant_id"), meter,
                        _amount(body, "credits", positive=True), effective, expires, now)
    try:
        stored, created = await mp.store.add_grant(cid, grant)
    except Conflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return json_response(_grant_json(GrantBalance(stored, Decimal(0)), now),
                         status=201 if created else 200)


async def list_credits(request: web.Request, mp: AdminContext) -> web.Response:
    """The customer's grants with what statements burned and what remains."""
    cid = await _existing_customer(request, mp)
    limit, offset = page(request)
    now = mp.clock()
    balances = (await mp.store.grant_balances(cid))[offset:offset + limit]
    return json_response({"items": [_grant_json(b, now) for b in balances]})


def _grant_json(balance: GrantBalance, now: int) -> dict[str, Any]:
    g = balance.grant
    return {
        "grant_id": g.grant_id,
        "meter": g.meter,
        "credits": g.credits,
        "burned": balance.burned,
        "remaining": EXACT.subtract(g.credits, balance.burned),
        "effective_at": format_timestamp(g.effective_at_ms),
        "expires_at": None if g.expires_at_ms is None else format_timestamp(g.expires_at_ms),
        "expired": g.expires_at_ms is not None and g.expires_at_ms <= now,
        "created_at": format_timestamp(g.created_at_ms),
    }


# ----------------------------------------------------------------- adjustments


async def add_adjustment(request: web.Request, mp: AdminContext) -> web.Response:
    """A manual line on the customer's next final statement; idempotent by adjustment_id."""
    cid = await _existing_customer(request, mp)
    body = await json_body(request)
    description = body.get("description")
    if not isinstance(description, str) or not 1 <= len(description) <= MAX_DESCRIPTION_CHARS:
        raise bad_request(f"description must be 1-{MAX_DESCRIPTION_CHARS} characters")
    adjustment = ManualAdjustment(_identifier(body, "adjustment_id"), _amount(body, "amount"),
                                  description, mp.clock())
    try:
        entry, created = await mp.store.add_adjustment(cid, adjustment)
    except Conflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return json_response(_adjustment_json(entry), status=201 if created else 200)


async def list_adjustments(request: web.Request, mp: AdminContext) -> web.Response:
    cid = await _existing_customer(request, mp)
    limit, offset = page(request)
    entries = (await mp.store.list_adjustments(cid))[offset:offset + limit]
    return json_response({"items": [_adjustment_json(e) for e in entries]})


def _adjustment_json(entry: AdjustmentEntry) -> dict[str, Any]:
    a = entry.adjustment
    return {"adjustment_id": a.adjustment_id, "amount": a.amount,
            "description": a.description, "created_at": format_timestamp(a.created_at_ms),
            "statement_id": entry.statement_id}


# ------------------------------------------------------------------- helpers


async def _existing_customer(request: web.Request, mp: AdminContext, active: bool = False) -> str:
    """The path's customer id; 404 when unknown, 409 when deleted and `active` is asked."""
    cid = customer_id(request)
    customer = await mp.store.get_customer(cid)
    if customer is None:
        raise not_found("no such customer")
    if active and customer.deleted_at_ms is not None:
        raise ApiError(409, "customer_deleted", "the customer was deleted")
    return cid


def _identifier(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise bad_request(f"{key} must be a string of 1-{MAX_ID_CHARS} characters")
    return value


def _amount(body: dict[str, Any], key: str, positive: bool = False) -> Decimal:
    try:
        value = parse_decimal(body.get(key))
    except ValueError as exc:
        raise bad_request(f"{key}: {exc}") from None
    if positive and value <= 0:
        raise bad_request(f"{key} must be more than 0")
    if abs(value) >= MAX_AMOUNT:
        raise bad_request(f"{key} must be less than 10^18 in magnitude")
    return value


def _instant(body: dict[str, Any], key: str) -> int | None:
    """An optional ISO-8601 instant of the body; None when absent (see params.instant)."""
    value = body.get(key)
    return None if value is None else instant(value, key)
