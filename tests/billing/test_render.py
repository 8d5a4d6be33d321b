"""billing/render.py: statement JSON (the interfaces.md fields), CSV and printable HTML."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from html.parser import HTMLParser
from zoneinfo import ZoneInfo

from billing.cycles import Cycle, Period
from billing.plans import CreditPolicy, Plan, Price
from billing.pricing import price_line
from billing.render import (
    CSV_FIELDS,
    LINE_FIELDS,
    statement_to_csv,
    statement_to_html,
    statement_to_json,
)
from billing.statement import LateUsage, ManualAdjustment, Statement, compute_statement

D = Decimal
BERLIN = ZoneInfo("Europe/Berlin")
# 2026-03 in Europe/Berlin: starts at +01:00, ends at +02:00
MARCH = Period(1_772_319_600_000, 1_774_994_400_000)
FEB = Period(1_769_900_400_000, MARCH.start_ms)
PLAN = Plan("pro", "USD", Cycle(calendar="monthly"), D("49.00"), (
    Price("egress_bytes", D(5), D(10), D(1_000_000_000)),
    Price("output_tokens", D("0.00002"), credits=CreditPolicy(D(50_000))),
))


def statement(customer: str = "acme", description: str = "Goodwill") -> Statement:
    seats = Price("peak_seats", D(2), D(5))
    final, _ = price_line(seats, D(10), "USD")
    return compute_statement(
        customer, PLAN, MARCH, active=Period(MARCH.start_ms + 86_400_000, MARCH.end_ms),
        quantities={"egress_bytes": D("1.25E+10"), "output_tokens": D(80_000)},
        cutoff_ms=MARCH.end_ms + 1_234,
        late=[LateUsage(FEB, "USD", seats, final, D(14), final.amount)],
        manual=[ManualAdjustment("adj-1", D("-5"), description, 1)],
    )


def test_json_has_the_fields_of_the_contract() -> None:
    found = statement_to_json(statement(), BERLIN)
    assert list(found) == ["id", "customer_id", "plan", "currency", "period_start",
                           "period_end", "status", "cutoff", "lines", "subtotal", "total",
                           "total_minor"]
    assert found["period_start"] == "2026-03-01T00:00:00+01:00"
    assert found["period_end"] == "2026-04-01T00:00:00+02:00"
    assert found["cutoff"] == "2026-03-31T22:00:01.234Z"
    assert (found["status"], found["currency"], found["plan"]) == ("draft", "USD", "pro")
    # 49 x 30/31 = 47.42; 12.5 GB -> $12.50; 30,000 tokens -> $0.60; late seats $8; -$5
    assert (found["subtotal"], found["total"], found["total_minor"]) == ("60.52", "63.52", 6352)
    json.dumps(found)  # only JSON types


def test_json_lines_share_one_schema() -> None:
    lines = statement_to_json(statement(), BERLIN)["lines"]
    assert all(list(line) == list(LINE_FIELDS) for line in lines)
    assert [line["type"] for line in lines] == ["fixed", "usage", "usage", "adjustment",
                                                "manual"]
    fixed, egress, tokens, late, manual = lines
    assert fixed["description"] == "Fixed price, prorated: 96.8% of the period"
    assert (fixed["unit_price"], fixed["amount"], fixed["quantity"]) == ("49.00", "47.42", None)
    assert egress == {
        "type": "usage", "description": "egress_bytes", "meter": "egress_bytes",
        "period_start": None, "period_end": None, "quantity": "12500000000",  # not 1.25E+10
        "unit_size": "1000000000", "free_units": "10", "credits_applied": "0",
        "credits_remaining": "0", "billable_units": "2.5", "unit_price": "5", "amount": "12.50",
    }
    assert (tokens["credits_applied"], tokens["billable_units"], tokens["amount"]) == (
        "50000", "30000", "0.60")
    assert (late["meter"], late["period_start"], late["period_end"], late["amount"]) == (
        "peak_seats", "2026-02-01T00:00:00+01:00", "2026-03-01T00:00:00+01:00", "8.00")
    assert late["description"] == ("Late usage of peak_seats, 2026-02-01T00:00:00+01:00 to "
                                   "2026-03-01T00:00:00+01:00")
    assert (manual["description"], manual["amount"]) == ("Goodwill", "-5.00")


def test_a_final_statement_says_so() -> None:
    assert statement_to_json(statement().finalized(), BERLIN)["status"] == "final"


def test_csv_has_a_header_and_one_row_per_line() -> None:
    text = statement_to_csv(statement(), BERLIN)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(CSV_FIELDS)
    assert len(rows) == 5
    assert {row["statement_id"] for row in rows} == {statement().id}
    assert [row["amount"] for row in rows] == ["47.42", "12.50", "0.60", "8.00", "-5.00"]
    assert rows[0]["quantity"] == ""  # empty where a field does not apply


def test_csv_defuses_formulas_in_descriptions() -> None:
    text = statement_to_csv(statement(description="=HYPERLINK(\"http://x\")"), BERLIN)
    manual = list(csv.DictReader(io.StringIO(text)))[-1]
    assert manual["description"] == "'=HYPERLINK(\"http://x\")"
    assert manual["amount"] == "-5.00"  # numbers keep their sign


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_a_printable_page_without_script() -> None:
    page = statement_to_html(statement("<b>acme&co</b>", "<script>alert(1)</script>"), BERLIN)
    parser = Page()
    parser.feed(page)
    assert "script" not in parser.tags and "b" not in parser.tags
    assert "style" in parser.tags and "table" in parser.tags and "link" not in parser.tags
    text = "".join(parser.text)
    assert "<b>acme&co</b>" in text  # shown, escaped
    assert "<script>alert(1)</script>" in text
    assert "63.52 USD" in text and "60.52 USD" in text
    assert "2026-03-01T00:00:00+01:00 to 2026-04-01T00:00:00+02:00" in text
    assert "@media print" in page
