"""The billing figures' slot in the table. The billing engine's admin routes are still
being built, so these rows say "not measured yet"; the probe notices when the routes
appear, so the table then says that the measurement is due rather than staying silent."""

from __future__ import annotations

import aiohttp

from bench.report import NOT_MEASURED, Row

USAGE_FIGURE = "billing: usage preview, 10,000 customers / 10M events (ms)"
CLOSE_FIGURE = "billing: full period close, 10,000 customers / 10M events (s)"
TARGET = "see the billing issue"


async def route_exists(session: aiohttp.ClientSession, method: str, url: str) -> bool:
    """True unless the admin app answers 404 for `url` (a 405 means the route exists)."""
    async with session.request(method, url) as response:
        return response.status != 404


async def rows(admin_url: str, token: str, customer: str) -> list[Row]:
    """Two "not measured yet" rows, saying whether their routes exist by now."""
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        usage = await route_exists(session, "GET", f"{admin_url}/v1/customers/{customer}/usage")
        # GET, not POST: a 405 proves the route without running billing.
        close = await route_exists(session, "GET", f"{admin_url}/v1/billing/run")
    return [_row(USAGE_FIGURE, usage), _row(CLOSE_FIGURE, close)]


def _row(figure: str, exists: bool) -> Row:
    why = "route now exists: add its measurement" if exists else "route not built yet"
    return Row(figure=figure, meterproxy=NOT_MEASURED, result=why, target=TARGET)
