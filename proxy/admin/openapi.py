"""The admin API described once: each `Operation` says how a route is served (method,
path, handler, auth) and what it reads and answers. `routes.py` registers exactly these
operations and `document()` renders the same list as OpenAPI 3.1, so the served
`/openapi.json` cannot drift from the router.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from proxy.admin.schemas import COMPONENTS, Schema, error_schema

if TYPE_CHECKING:
    from proxy.admin.context import AdminContext

Handler = Callable[[web.Request, "AdminContext"], Awaitable[web.StreamResponse]]
Auth = Literal["admin", "ingest", "none"]

_PATH_PARAM = re.compile(r"\{(\w+)\}")
_AUTH_ERROR = ("unauthorized",)
_SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    "admin": [{"adminToken": []}],
    "ingest": [{"adminToken": []}, {"ingestToken": []}],
    "none": [],
}


@dataclass(frozen=True, slots=True)
class Param:
    """A path or query parameter; path parameters are always required."""

    name: str
    where: Literal["path", "query"]
    schema: Schema
    description: str

    def to_openapi(self) -> dict[str, Any]:
        return {"name": self.name, "in": self.where, "required": self.where == "path",
                "description": self.description, "schema": self.schema}


@dataclass(frozen=True, slots=True)
class Reply:
    """A success answer: its status and its body per media type."""

    status: int
    description: str
    content: Mapping[str, Schema]

    def to_openapi(self) -> dict[str, Any]:
        return {"description": self.description,
                "content": {media: {"schema": s} for media, s in self.content.items()}}


def json_reply(status: int, description: str, schema: Schema) -> Reply:
    return Reply(status, description, {"application/json": schema})


@dataclass(frozen=True, slots=True)
class Operation:
    """One route of the admin API. `errors` maps each error status to the stable codes
    its JSON error body may carry; 401 is added for every authenticated route."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    replies: tuple[Reply, ...]
    errors: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    auth: Auth = "admin"
    params: tuple[Param, ...] = ()
    body: Schema | None = None
    body_required: bool = True
    on_metrics_listener: bool = False  # also served by metrics.listen

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    def all_errors(self) -> dict[int, tuple[str, ...]]:
        """Every error status with its codes, 401 included where a token is needed."""
        errors = dict(self.errors)
        if self.auth != "none":
            errors[401] = _AUTH_ERROR
        return dict(sorted(errors.items()))

    def to_openapi(self) -> dict[str, Any]:
        """The OpenAPI operation object. Raises ValueError when the path names a
        parameter that `params` does not describe (or the other way round)."""
        declared = {p.name for p in self.params if p.where == "path"}
        if declared != set(_PATH_PARAM.findall(self.path)):
            raise ValueError(f"{self.method} {self.path}: path parameters {sorted(declared)}")
        op: dict[str, Any] = {
            "operationId": self.operation_id,
            "summary": self.summary,
            "tags": [self.tag],
            "security": _SECURITY[self.auth],
            "parameters": [p.to_openapi() for p in self.params],
            "responses": self._responses(),
        }
        if self.body is not None:
            op["requestBody"] = {"required": self.body_required,
                                 "content": {"application/json": {"schema": self.body}}}
        return op

    def _responses(self) -> dict[str, Any]:
        out = {str(r.status): r.to_openapi() for r in self.replies}
        for status, codes in self.all_errors().items():
            out[str(status)] = {
                "description": "Error codes: " + ", ".join(codes),
                "content": {"application/json": {"schema": error_schema(codes)}},
            }
        return out


def document(operations: Sequence[Operation], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations`. Raises ValueError on a duplicate
    (method, path) or a path whose parameters are not all described."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        methods = paths.setdefault(op.path, {})
        if op.method.lower() in methods:
            raise ValueError(f"{op.method} {op.path} is described twice")
        methods[op.method.lower()] = op.to_openapi()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "meterproxy admin API",
            "version": version,
            "description": "Usage events (Dodo Payments wire format), customers, keys, "
            "credits, adjustments, previews and statements. Errors are always "
            '`{"error": {"code", "message"}}` with a stable code. Lists take page_size '
            "(1-100, default 10) and page_number (from 0).",
        },
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "admin.token: every route"},
                "ingestToken": {"type": "http", "scheme": "bearer",
                                "description": "admin.ingest_token: POST /events/ingest only"},
            },
        },
    }
