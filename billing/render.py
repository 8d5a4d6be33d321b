"""Statements as JSON, CSV and a printable HTML page.

Quantities and money are decimal strings in plain notation ("1000", never "1E+3");
period boundaries are ISO-8601 with the offset of the billing time zone; the cutoff
is the UTC instant of the `ingested_at` watermark. Every line has the same fields
(null or empty where a field does not apply), so JSON and CSV share one schema:
`type` is usage, fixed, adjustment or manual; adjustment lines name their period.
"""

from __future__ import annotations

import csv
import html
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from billing.cycles import Period
from billing.events import format_timestamp
from billing.money import divide, format_money
from billing.pricing import FixedLine, UsageLine
from billing.statement import AdjustmentLine, Line, Statement

LINE_FIELDS = (
    "type", "description", "meter", "period_start", "period_end", "quantity", "unit_size",
    "free_units", "credits_applied", "credits_remaining", "billable_units", "unit_price",
    "amount",
)
CSV_FIELDS = ("statement_id", "customer_id", "currency", *LINE_FIELDS)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def iso(ms: int, tz: ZoneInfo) -> str:
    """ISO-8601 local time with offset; milliseconds only when the instant has them."""
    local = (_EPOCH + timedelta(milliseconds=ms)).astimezone(tz)
    return local.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")


def statement_to_json(statement: Statement, tz: ZoneInfo) -> dict[str, Any]:
    """The statement as the admin API returns it (interfaces.md, "Statements")."""
    return {
        "id": statement.id,
        "customer_id": statement.customer_id,
        "plan": statement.plan,
        "currency": statement.currency,
        "period_start": iso(statement.period.start_ms, tz),
        "period_end": iso(statement.period.end_ms, tz),
        "status": statement.status,
        "cutoff": format_timestamp(statement.cutoff_ms),
        "lines": [line_to_json(line, tz) for line in statement.lines],
        "subtotal": _text(statement.subtotal),
        "total": _text(statement.total),
        "total_minor": statement.total_minor,
    }


def line_to_json(line: Line, tz: ZoneInfo) -> dict[str, str | None]:
    """One line with every field of LINE_FIELDS; None where it does not apply."""
    fields: dict[str, str | None] = dict.fromkeys(LINE_FIELDS)
    fields["amount"] = _text(line.amount)
    if isinstance(line, UsageLine):
        fields.update(type="usage", description=line.meter, meter=line.meter,
                      quantity=_text(line.quantity), unit_size=_text(line.unit_size),
                      free_units=_text(line.free_units),
                      credits_applied=_text(line.credits_applied),
                      credits_remaining=_text(line.credits_remaining),
                      billable_units=_text(line.billable_units),
                      unit_price=_text(line.unit_price))
    elif isinstance(line, FixedLine):
        share = divide(Decimal(line.active_ms), Decimal(line.period_ms))
        prorated = f", prorated: {share:.1%} of the period" if line.prorated else ""
        fields.update(type="fixed", description=f"Fixed price{prorated}",
                      unit_price=_text(line.fixed_price))
    elif isinstance(line, AdjustmentLine):
        fields.update(type="adjustment", meter=line.meter,
                      description=f"Late usage of {line.meter}, {_span(line.period, tz)}",
                      period_start=iso(line.period.start_ms, tz),
                      period_end=iso(line.period.end_ms, tz), quantity=_text(line.quantity))
    else:
        fields.update(type="manual", description=line.description)
    return fields


def statement_to_csv(statement: Statement, tz: ZoneInfo) -> str:
    """A header row, then one row per line (CSV_FIELDS). A description that a
    spreadsheet would run as a formula is prefixed with an apostrophe."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_FIELDS)
    for line in statement.lines:
        fields = line_to_json(line, tz)
        description = fields["description"] or ""
        if description.startswith(_FORMULA_START):
            fields["description"] = "'" + description
        writer.writerow([statement.id, statement.customer_id, statement.currency,
                         *(fields[name] or "" for name in LINE_FIELDS)])
    return out.getvalue()


def statement_to_html(statement: Statement, tz: ZoneInfo) -> str:
    """A self-contained printable page: plain HTML and inline CSS, no script."""
    rows = "\n".join(_html_row(line, tz, statement.currency) for line in statement.lines)
    e = html.escape
    money = format_money
    return _PAGE.format(
        title=e(f"Statement {statement.id}"),
        id=e(statement.id),
        customer=e(statement.customer_id),
        plan=e(statement.plan),
        period=e(_span(statement.period, tz)),
        status=e(statement.status),
        cutoff=e(format_timestamp(statement.cutoff_ms)),
        rows=rows,
        subtotal=e(money(statement.subtotal, statement.currency)),
        total=e(money(statement.total, statement.currency)),
    )


def _html_row(line: Line, tz: ZoneInfo, currency: str) -> str:
    fields = line_to_json(line, tz)

    def cell(name: str) -> str:
        return html.escape(fields[name] or "")

    amount = format_money(line.amount, currency)
    return (f"<tr><td>{cell('description')}</td><td class=n>{cell('quantity')}</td>"
            f"<td class=n>{cell('free_units')}</td><td class=n>{cell('credits_applied')}</td>"
            f"<td class=n>{cell('billable_units')}</td><td class=n>{cell('unit_price')}</td>"
            f"<td class=n>{html.escape(amount)}</td></tr>")


def _span(period: Period, tz: ZoneInfo) -> str:
    return f"{iso(period.start_ms, tz)} to {iso(period.end_ms, tz)}"


def _text(value: Decimal) -> str:
    return f"{value:f}"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #111; }}
h1 {{ font-size: 1.4em; margin-bottom: 0.2em; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }}
dt {{ color: #555; }} dd {{ margin: 0; }}
table {{ border-collapse: collapse; width: 100%; margin-top: 1em; }}
th, td {{ padding: 0.3em 0.6em; border-bottom: 1px solid #ddd; text-align: left; }}
.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
tfoot td {{ font-weight: bold; border-bottom: none; }}
@media print {{ body {{ margin: 0; max-width: none; }} }}
</style>
</head>
<body>
<h1>Statement</h1>
<dl>
<dt>Statement</dt><dd>{id}</dd>
<dt>Customer</dt><dd>{customer}</dd>
<dt>Plan</dt><dd>{plan}</dd>
<dt>Period</dt><dd>{period}</dd>
<dt>Status</dt><dd>{status}</dd>
<dt>Usage counted up to</dt><dd>{cutoff}</dd>
</dl>
<table>
<thead><tr><th>Line</th><th class=n>Quantity</th><th class=n>Free units</th>
<th class=n>Credits applied</th><th class=n>Billable units</th><th class=n>Unit price</th>
<th class=n>Amount</th></tr></thead>
<tbody>
{rows}
</tbody>
<tfoot>
<tr><td colspan=6>Subtotal</td><td class=n>{subtotal}</td></tr>
<tr><td colspan=6>Total</td><td class=n>{total}</td></tr>
</tfoot>
</table>
</body>
</html>
"""
