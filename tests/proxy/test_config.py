"""Configuration loading: the reference file works; mistakes name file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing.settings import ConfigError
from proxy.config import load_config, parse_config
from tests.reference import REFERENCE

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"

BASE = """\
proxy:
  listen: 127.0.0.1:8080
  upstream: http://127.0.0.1:9000
  timeouts: {connect: 5s, read: 30s}
  max_request_body: 10MB
admin:
  listen: 127.0.0.1:9090
  token: a-token
storage:
  path: x.db
  on_full: reject
customers:
  identify:
    - ${request.header.x-customer-id}
  unidentified: reject
rules:
  - name: calls
    match: {path: /v1/**, status: 2xx}
    event_name: api.call
    metadata:
      status: ${response.status}
  - name: egress
    match: {path: /**}
    event_name: bandwidth
meters:
  - name: api_calls
    event_name: api.call
    aggregation: {type: count}
  - name: egress_bytes
    event_name: bandwidth
    aggregation: {type: sum, key: bytes}
plans:
  - name: pro
    currency: USD
    cycle: monthly
    prices:
      - meter: api_calls
        price_per_unit: "0.01"
billing:
  default_plan: pro
  timezone: UTC
"""


def test_the_reference_configuration_loads_as_written() -> None:
    config = load_config(REFERENCE, environ={})
    assert [r.name for r in config.rules.rules] == [
        "api-calls",
        "images",
        "chat-tokens",
        "header-tokens",
        "egress",
    ]
    assert len(config.meters) == 7
    assert config.plans[0].name == "pro"
    assert config.admin.token == "dev-admin-token"
    assert config.admin.ingest_token == ""
    assert config.storage.path == "meterproxy.db"
    assert config.storage.flush_interval_ms == 50
    assert config.proxy.max_request_body == 100_000_000
    assert config.proxy.read_timeout_s == 300
    assert config.warnings == ()


def test_the_demo_configuration_loads() -> None:
    config = load_config(DEMO, environ={})
    assert config.admin.listen.port == 9090


def test_environment_values() -> None:
    config = load_config(
        REFERENCE, environ={"METERPROXY_ADMIN_TOKEN": "t" * 40, "METERPROXY_DB": "/data/m.db"}
    )
    assert config.admin.token == "t" * 40
    assert config.storage.path == "/data/m.db"


def line_of(text: str, marker: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in the config")


MISTAKES = [
    # (replace this, with that, the line that holds the mistake, expected "path: message")
    ("  upstream: http://127.0.0.1:9000\n", "", "proxy:", "proxy.upstream: required"),
    ("listen: 127.0.0.1:8080", "listen: 8080", "listen: 8080", "proxy.listen: expected HOST:PORT"),
    ("read: 30s", "read: soon", "read: soon", "proxy.timeouts.read: 'soon' is not a duration"),
    (
        "max_request_body: 10MB",
        "max_request_body: lots",
        "max_request_body",
        "proxy.max_request_body: 'lots' is not a size",
    ),
    (
        "  max_request_body: 10MB\n",
        "  max_request_body: 10MB\n  listn: x\n",
        "listn",
        "proxy.listn: unknown key",
    ),
    ("status: 2xx", "status: 9xx", "status: 9xx", "rules[0].match.status: expected a status"),
    (
        "status: ${response.status}",
        "status: ${request.nope}",
        "request.nope",
        "rules[0].metadata.status: unknown selector 'request.nope'",
    ),
    ("path: /v1/**", "path: v1/**", "path: v1/**", "rules[0].match.path: "),
    (
        "  - name: egress",
        "  - name: calls  # again",
        "# again",
        "rules[1].name: duplicate rule name 'calls'",
    ),
    (
        "aggregation: {type: sum, key: bytes}",
        "aggregation: {type: sum}",
        "type: sum",
        "meters[1].aggregation.key: required for type sum",
    ),
    (
        "      - meter: api_calls",
        "      - meter: api_callz",
        "api_callz",
        "plans[0].prices[0].meter: ",
    ),
    ("currency: USD", "currency: XYZ", "currency: XYZ", "plans[0].currency: "),
    ("timezone: UTC", "timezone: Mars/Olympus", "Mars/Olympus", "billing.timezone: "),
    ("  on_full: reject", "  on_full: panic", "on_full", "storage.on_full: must be one of"),
    ("proxy:\n", "proxy:\n  gc: off\n", "gc: off", "proxy.gc: must be one of tuned, default"),
    (
        "  on_full: reject",
        "  on_full: reject\n  writer: fork",
        "writer: fork",
        "storage.writer: must be one of",
    ),
    (
        "  unidentified: reject",
        "  unidentified: reject\n  identify2: []",
        "identify2",
        "customers.identify2: unknown key",
    ),
    (
        "    - ${request.header.x-customer-id}",
        "    - ${response.header.x-customer}",
        "response.header.x-customer",
        "customers.identify[0]: response-time sources",
    ),
    (
        "token: a-token",
        "token: ${env.NOT_SET_ANYWHERE}",
        "NOT_SET_ANYWHERE",
        "admin.token: environment variable NOT_SET_ANYWHERE is not set",
    ),
    (
        "listen: 127.0.0.1:9090",
        "listen: 0.0.0.0:9090",
        "token: a-token",
        "admin.token: the admin listener 0.0.0.0:9090 is not loopback",
    ),
    ("  default_plan: pro", "  default_plan: gold", "default_plan", "billing.default_plan: "),
    ("  path: x.db\n", "  path: x.db\n  path: y.db\n", "path: y.db", "storage.path: duplicate key"),
]


@pytest.mark.parametrize(
    ("old", "new", "marker", "expected"), MISTAKES, ids=[m[3].split(":")[0] for m in MISTAKES]
)
def test_mistakes_name_file_line_and_field(old: str, new: str, marker: str, expected: str) -> None:
    assert old in BASE
    text = BASE.replace(old, new, 1)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "bad.yaml", environ={})
    rendered = [p.render("bad.yaml") for p in caught.value.problems]
    prefix = f"bad.yaml:{line_of(text, marker)}: {expected}"
    assert any(line.startswith(prefix) for line in rendered), rendered


def test_appends_run_on_a_thread_unless_the_writer_is_a_process() -> None:
    assert parse_config(BASE, "ok.yaml", environ={}).storage.writer == "thread"
    text = BASE.replace("  on_full: reject", "  on_full: reject\n  writer: process")
    assert parse_config(text, "ok.yaml", environ={}).storage.writer == "process"


def test_every_problem_is_reported_at_once() -> None:
    text = BASE.replace("read: 30s", "read: soon").replace("currency: USD", "currency: XYZ")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "bad.yaml", environ={})
    paths = {p.path for p in caught.value.problems}
    assert {"proxy.timeouts.read", "plans[0].currency"} <= paths


def test_a_yaml_error_near_a_brace_says_to_quote() -> None:
    text = BASE.replace(
        "match: {path: /v1/**, status: 2xx}", "match: {path: /v1/{model}/x, status: 2xx}"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "bad.yaml", environ={})
    [problem] = caught.value.problems
    assert problem.line is not None
    assert "quote" in problem.message


def test_yaml_12_scalars() -> None:
    text = BASE.replace(
        "    event_name: api.call\n    metadata:\n",
        "    event_name: api.call\n    metadata:\n      flag: yes\n"
        "      time: 1:30\n      n: 0.10\n",
        1,
    )
    config = parse_config(text, "ok.yaml", environ={})
    values = {
        k: t.literal if t.parts == () else t.parts[0] for k, t in config.rules.rules[0].metadata
    }
    assert values["flag"] == "yes"
    assert values["time"] == "1:30"
    assert str(values["n"]) == "0.10"


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/meterproxy.yaml")


@pytest.mark.parametrize(
    ("old", "new", "only"),
    [
        ("currency: USD", "currency: XYZ", "plans[0].currency"),
        ("aggregation: {type: count}", "aggregation: {type: median}", "meters[0].aggregation.type"),
    ],
)
def test_one_mistake_is_reported_once_not_by_everything_that_names_it(
    old: str, new: str, only: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE.replace(old, new), "bad.yaml", environ={})
    assert [p.path for p in caught.value.problems] == [only]
