"""Customers and their API keys: `/v1/customers...`."""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import web

from billing.engine import CustomerDeleted, PlanView
from billing.events import format_timestamp
from billing.store.base import ApiKey, Customer, DuplicateKey
from proxy.admin.jsonout import json_response
from proxy.admin.params import (
    ApiError,
    bad_request,
    customer_id,
    json_body,
    not_found,
    page,
    page_of,
)
from rules.identify import hash_key

if TYPE_CHECKING:
    from proxy.admin.context import AdminContext

KEY_PREFIX_CHARS = 8
# An imported secret must travel in `Authorization: Bearer KEY`: visible ASCII only.
IMPORTED_KEY = re.compile(r"[!-~]{16,256}")


def customer_json(c: Customer, view: PlanView) -> dict[str, Any]:
    """A customer with its plan now and the change assigned for its next period."""
    pending = view.pending_from_ms
    return {
        "customer_id": c.customer_id,
        "plan": view.plan,
        "pending_plan": view.pending_plan,
        "pending_from": None if pending is None else format_timestamp(pending),
        "created_at": format_timestamp(c.created_at_ms),
        "deleted_at": format_timestamp(c.deleted_at_ms) if c.deleted_at_ms else None,
    }


def key_json(k: ApiKey) -> dict[str, Any]:
    return {
        "key_id": k.key_id,
        "prefix": k.prefix,
        "created_at": format_timestamp(k.created_at_ms),
        "revoked_at": format_timestamp(k.revoked_at_ms) if k.revoked_at_ms else None,
    }


async def customers_json(customers: list[Customer], mp: AdminContext) -> list[dict[str, Any]]:
    views = await mp.engine.plan_views(customers)
    return [customer_json(c, views[c.customer_id]) for c in customers]


async def list_customers(request: web.Request, mp: AdminContext) -> web.Response:
    limit, offset = page(request)
    customers = await mp.store.list_customers(limit, offset)
    return json_response({"items": await customers_json(customers, mp)})


async def get_customer(request: web.Request, mp: AdminContext) -> web.Response:
    customer = await mp.store.get_customer(customer_id(request))
    if customer is None:
        raise not_found("no such customer")
    return json_response((await customers_json([customer], mp))[0])


async def put_customer(request: web.Request, mp: AdminContext) -> web.Response:
    """Assign a plan (null: the default plan) from the end of the current period."""
    cid = customer_id(request)
    body = await json_body(request)
    plan = body.get("plan")
    if plan is not None and not isinstance(plan, str):
        raise bad_request("plan must be a plan's name or null")
    if plan is not None and plan not in {p.name for p in mp.config.plans}:
        raise bad_request(f"unknown plan {plan!r}", code="unknown_plan")
    try:
        customer = await mp.engine.change_plan(cid, plan)
    except CustomerDeleted:
        raise ApiError(409, "customer_deleted", "a deleted customer cannot change plan") from None
    return json_response((await customers_json([customer], mp))[0])


async def delete_customer(request: web.Request, mp: AdminContext) -> web.Response:
    """Revoke the customer's keys and end its current period now; later events are stored
    but not billed. Deleting again changes nothing."""
    customer = await mp.store.delete_customer(customer_id(request), mp.clock())
    if customer is None:
        raise not_found("no such customer")
    await mp.reload_keys()
    mp.scheduler.wake()  # its period has just ended: draft it now
    return json_response((await customers_json([customer], mp))[0])


async def create_key(request: web.Request, mp: AdminContext) -> web.Response:
    """Issue a key (or import `{"key"}`), creating the customer; 409 when the customer was
    deleted or the secret is already in use. The secret is answered once, stored hashed."""
    cid = customer_id(request)
    body = await json_body(request, required=False)
    key = body.get("key")
    if key is None:
        key = "mpk_" + secrets.token_urlsafe(32)
    elif not isinstance(key, str) or not IMPORTED_KEY.fullmatch(key):
        raise bad_request("an imported key must be 16-256 visible ASCII characters")
    existing = await mp.store.get_customer(cid)
    if existing is not None and existing.deleted_at_ms is not None:
        raise ApiError(409, "customer_deleted", "a deleted customer cannot get keys")
    key_id = "key_" + secrets.token_hex(8)
    try:
        stored = await mp.store.add_key(
            cid, key_id, hash_key(key), key[:KEY_PREFIX_CHARS], mp.clock()
        )
    except DuplicateKey:
        raise ApiError(409, "duplicate_key", "this key is already in use") from None
    await mp.reload_keys()
    return json_response(
        {"key_id": stored.key_id, "key": key, "created_at": format_timestamp(stored.created_at_ms)},
        status=201,
    )


async def list_keys(request: web.Request, mp: AdminContext) -> web.Response:
    """The customer's keys (id and first characters, revoked ones too); 404 if unknown."""
    cid = customer_id(request)
    if await mp.store.get_customer(cid) is None:
        raise not_found("no such customer")
    keys = page_of(await mp.store.list_keys(cid), request)
    return json_response({"items": [key_json(k) for k in keys]})


async def revoke_key(request: web.Request, mp: AdminContext) -> web.Response:
    cid = customer_id(request)
    key_id = request.match_info["key_id"]
    if not await mp.store.revoke_key(cid, key_id, mp.clock()):
        raise not_found("no active key with this id for this customer")
    await mp.reload_keys()
    return json_response({"key_id": key_id, "revoked": True})
