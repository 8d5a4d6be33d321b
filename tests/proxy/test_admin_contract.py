"""Who may call what: every route of the served OpenAPI document, walked with no token, wrong
tokens, the ingest token and the admin token, against the contract (interfaces.md, "Admin
listener"): /healthz, /readyz, /metrics and /openapi.json are open; `admin.ingest_token`
may only POST /events/ingest; everything else needs `admin.token`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxy.config import Config, load_config
from tests.conftest import ADMIN_TOKEN
from tests.proxy.admin_kit import INGEST_TOKEN, Seeds, running_admin, seed
from tests.proxy.test_billing_api import Admin

OPEN = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json")}
INGEST = {("POST", "/events/ingest")}
WRONG = {
    "no header": None,
    "empty bearer": "Bearer ",
    "another token": "Bearer not-the-token",
    "admin token plus a character": f"Bearer {ADMIN_TOKEN}x",
    "a prefix of the admin token": f"Bearer {ADMIN_TOKEN[:-1]}",
    "admin token, Basic scheme": f"Basic {ADMIN_TOKEN}",
    "admin token without a scheme": ADMIN_TOKEN,
}


@pytest.fixture
async def walk(tmp_path: Path, unused_tcp_port: int) -> AsyncIterator[tuple[Admin, Any, Seeds]]:
    """A seeded server and the document it serves."""
    async with running_admin(tmp_path, unused_tcp_port) as admin:
        seeds = await seed(admin)
        async with admin.session.get(admin.url + "/openapi.json") as r:
            yield admin, await r.json(), seeds


def routes(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m.upper(), path) for path, ops in doc["paths"].items() for m in ops]


def concrete(path: str, seeds: Seeds) -> str:
    ids = {"customer_id": seeds.customer, "event_id": seeds.event_id, "key_id": seeds.key_id,
           "statement_id": seeds.statement_id}
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


async def status_of(admin: Admin, method: str, path: str, authorization: str | None) -> int:
    """The status of one call; a 401 must carry the challenge and the JSON error."""
    headers = {} if authorization is None else {"Authorization": authorization}
    async with admin.session.request(method, admin.url + path, headers=headers) as r:
        if r.status == 401:
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert (await r.json())["error"]["code"] == "unauthorized"
        return r.status


def test_the_document_declares_the_contract_s_auth(walk: Any) -> None:
    _, doc, _ = walk
    for method, path in routes(doc):
        security = doc["paths"][path][method.lower()]["security"]
        schemes = {name for requirement in security for name in requirement}
        if (method, path) in OPEN:
            assert security == [], path
        elif (method, path) in INGEST:
            assert schemes == {"adminToken", "ingestToken"}
        else:
            assert schemes == {"adminToken"}, path


async def test_every_route_refuses_or_allows_each_token_as_the_contract_says(walk: Any) -> None:
    admin, doc, seeds = walk
    walked = routes(doc)
    assert len(walked) == 23
    for method, template in walked:
        path = concrete(template, seeds)
        is_open = (method, template) in OPEN
        for name, header in WRONG.items():
            status = await status_of(admin, method, path, header)
            assert (status == 401) != is_open, (method, template, name, status)
        ingest = await status_of(admin, method, path, f"Bearer {INGEST_TOKEN}")
        allowed = is_open or (method, template) in INGEST
        assert (ingest == 401) != allowed, (method, template, "ingest token", ingest)
    # Last, as the admin token may delete what earlier calls used.
    for method, template in walked:
        status = await status_of(admin, method, concrete(template, seeds), f"Bearer {ADMIN_TOKEN}")
        assert status != 401, (method, template)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nope", 404), ("GET", "/v1/customers/acme/nope", 404),
    ("POST", "/healthz", 405),  # an open path, but not this method
])
async def test_without_a_token_what_is_not_a_route_is_401_so_routes_cannot_be_probed(
    walk: Any, method: str, path: str, status: int
) -> None:
    admin, _, _ = walk
    assert await status_of(admin, method, path, None) == 401
    assert await status_of(admin, method, path, f"Bearer {ADMIN_TOKEN}") == status


def rotated(path: Path) -> Config:
    """The file with a new admin token and no ingest token, loaded."""
    text = path.read_text().replace(f"token: {ADMIN_TOKEN}", "token: rotated-token")
    path.write_text(text.replace(f"ingest_token: {INGEST_TOKEN}", "ingest_token: ''"))
    return load_config(path)


async def test_a_reload_changes_the_tokens_at_once(walk: Any) -> None:
    admin, _, _ = walk
    admin.mp.reload(rotated(Path(admin.mp.config.filename)))
    for token, expected in ((ADMIN_TOKEN, 401), ("rotated-token", 200)):
        assert await status_of(admin, "GET", "/v1/meters", f"Bearer {token}") == expected
    assert await status_of(admin, "POST", "/events/ingest", f"Bearer {INGEST_TOKEN}") == 401
