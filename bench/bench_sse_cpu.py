"""CPU that SSE parsing adds to a streamed exchange (a script, not a test).

Two meterproxy processes sit in front of one upstream, which streams OpenAI-style chat
completions (`usage` null in every chunk, the counts in the last) and Anthropic-style
messages (input counts in message_start, output in the last message_delta). Both run the
rules of examples/ai/openai.yaml and anthropic.yaml:

- `sse`: as written, so every response goes through the event-stream tap;
- `plain`: the same rules without the metadata that reads `response.json` (no response
  tap; the request tap, the event and its storage stay), i.e. plain forwarding.

Samples alternate between the two (the order flips every round, so a drift of the shared
machine hits both alike); each sample is the meterproxy process's CPU time
(/proc/PID/stat utime + stime, its SQLite threads included) over a batch of exchanges.
The overhead is sse / plain - 1 per round, printed as the median and range of rounds.

`--before DIR` adds a third process, `sse-before`: the `sse` rules run by the packages
(proxy, rules, billing) in DIR, e.g. a copy of the tree with the previous rules/*.py, so
a change is measured against its baseline in the same rounds.

Run: .venv/bin/python -m bench.bench_sse_cpu [--rounds 7 --exchanges 32 --events 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from bench.fleet import meterproxy_command
from bench.processes import Processes, cpu_seconds, cpu_split, free_port, wait_for_port
from bench.stats import Spread, paired_differences, paired_ratios, spread

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "ai"
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
PROVIDERS = ("openai", "anthropic")
MODES = ("plain", "sse")
BEFORE = "sse-before"
SETTLE_SECONDS = 0.15  # > flush_interval: a sample's events are stored within it
TARGET_PERCENT = 5.0

# ------------------------------------------------------------------ upstream


def _event(data: object, name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def openai_events(count: int) -> list[bytes]:
    """A chat completion streamed with include_usage: `count` events, then [DONE]."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-bench"}
    delta = {"index": 0, "delta": {"content": "token "}, "finish_reason": None}
    usage: dict[str, Any] = {"prompt_tokens": 9, "completion_tokens": count}
    usage["prompt_tokens_details"] = {"cached_tokens": 0}
    chunks = [_event({**base, "choices": [delta], "usage": None}) for _ in range(count - 1)]
    return [*chunks, _event({**base, "choices": [], "usage": usage}), b"data: [DONE]\n\n"]


def anthropic_events(count: int) -> list[bytes]:
    """A streamed message with `count` events in all (at least 5)."""
    usage = {"input_tokens": 9, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    message = {"id": "msg_1", "type": "message", "model": "claude-bench", "usage": usage}
    text = {"type": "text_delta", "text": "token "}
    delta = {"type": "content_block_delta", "index": 0, "delta": text}
    return [
        _event({"type": "message_start", "message": message}, "message_start"),
        _event({"type": "content_block_start", "index": 0}, "content_block_start"),
        *[_event(delta, "content_block_delta") for _ in range(max(count - 4, 1))],
        _event({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _event({"type": "message_delta", "usage": {"output_tokens": count}}, "message_delta"),
    ]


STREAMS: dict[str, tuple[str, Callable[[int], list[bytes]]]] = {
    "openai": ("/v1/chat/completions", openai_events),
    "anthropic": ("/v1/messages", anthropic_events),
}


async def _stream(request: web.BaseRequest) -> web.StreamResponse:
    """One event per write, `interval_us` apart, so the proxy sees one event per chunk."""
    await request.read()
    builder = next(build for path, build in STREAMS.values() if path == request.path)
    interval = int(request.query.get("interval_us", "0")) / 1e6
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i, event in enumerate(builder(int(request.query["events"]))):
        if i and interval:
            await asyncio.sleep(interval)
        await response.write(event)
    await response.write_eof()
    return response


async def serve_upstream(port: int) -> None:
    runner = web.ServerRunner(web.Server(_stream, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()  # until the benchmark terminates the process


# ------------------------------------------------------------------ meterproxy


def rule_set(parse_sse: bool) -> tuple[list[Any], list[Any]]:
    """The AI examples' rules and meters; without `parse_sse`, no response.json values."""
    rules: list[Any] = []
    meters: list[Any] = []
    for provider in PROVIDERS:
        example = yaml.safe_load((EXAMPLES / f"{provider}.yaml").read_text())
        rules += example["rules"]
        meters += example["meters"]
    if not parse_sse:
        for rule in rules:
            rule["metadata"] = {
                key: value
                for key, value in rule["metadata"].items()
                if "response.json" not in str(value)
            }
    return rules, meters


def write_config(path: Path, parse_sse: bool, upstream: str, ports: tuple[int, int]) -> None:
    """A whole config, as JSON (which YAML reads): customers named by a header."""
    rules, meters = rule_set(parse_sse)
    config = {
        "proxy": {
            "listen": f"127.0.0.1:{ports[0]}",
            "upstream": upstream,
            "trusted_proxies": ["127.0.0.0/8"],
        },
        "admin": {"listen": f"127.0.0.1:{ports[1]}", "token": ADMIN_TOKEN},
        "storage": {"path": str(path.with_suffix(".db")), "flush_interval": "50ms"},
        "customers": {"identify": ["${request.header.x-customer-id}"], "unidentified": "reject"},
        "rules": rules,
        "meters": meters,
    }
    path.write_text(json.dumps(config, indent=1))


@dataclass(frozen=True)
class Proxy:
    mode: str
    url: str
    admin_url: str
    pid: int


def _meterproxy_args(mode: str, config: Path, before: Path | None) -> list[str]:
    tree = before if mode == BEFORE else None
    return [*meterproxy_command(tree), "run", "-c", str(config)]


async def start_all(processes: Processes, workdir: Path, plan: Plan) -> dict[str, Proxy]:
    """The upstream on the client CPUs, one meterproxy per mode on the server CPU."""
    server_cpus, client_cpus = cpu_split()
    port = free_port()
    upstream_args = [sys.executable, "-m", "bench.bench_sse_cpu", "--serve-upstream", str(port)]
    await wait_for_port(port, processes.start("upstream", upstream_args, client_cpus), 30)
    proxies = {}
    for mode in plan.modes:
        ports = (free_port(), free_port())
        config = workdir / f"{mode}.yaml"
        write_config(config, mode != "plain", f"http://127.0.0.1:{port}", ports)
        args = _meterproxy_args(mode, config, plan.before)
        process = processes.start(mode, args, server_cpus)
        for listening in ports:
            await wait_for_port(listening, process, 30)
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        proxies[mode] = Proxy(mode, urls[0], urls[1], process.pid)
    return proxies


# ------------------------------------------------------------------ client


@dataclass(frozen=True)
class Plan:
    rounds: int
    exchanges: int  # per sample
    events: int  # per stream
    interval_us: int
    concurrency: int
    before: Path | None = None  # the tree that `sse-before` runs from

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.before is None else (*MODES, BEFORE)


async def exchange(session: aiohttp.ClientSession, url: str, provider: str, plan: Plan) -> None:
    """One streamed exchange, read to its end; RuntimeError unless it arrived whole."""
    path, build = STREAMS[provider]
    query = {"events": str(plan.events), "interval_us": str(plan.interval_us)}
    body = {"model": f"{provider}-bench", "stream": True}
    headers = {"X-Customer-Id": "cus_bench"}
    async with session.post(url + path, params=query, json=body, headers=headers) as response:
        received = sum([len(chunk) async for chunk in response.content.iter_any()])
    expected = sum(map(len, build(plan.events)))
    if response.status != 200 or received != expected:
        raise RuntimeError(f"{provider}: status {response.status}, {received} of {expected} B")


async def sample(session: aiohttp.ClientSession, proxy: Proxy, provider: str, plan: Plan) -> float:
    """CPU seconds the proxy spent per exchange over one batch of `plan.exchanges`."""
    gate = asyncio.Semaphore(plan.concurrency)

    async def one() -> None:
        async with gate:
            await exchange(session, proxy.url, provider, plan)

    before = cpu_seconds(proxy.pid)
    await asyncio.gather(*(one() for _ in range(plan.exchanges)))
    await asyncio.sleep(SETTLE_SECONDS)
    return (cpu_seconds(proxy.pid) - before) / plan.exchanges


async def measure(proxies: dict[str, Proxy], plan: Plan) -> dict[tuple[str, str], list[float]]:
    """Per (provider, mode), one CPU-per-exchange figure per round, after a warm-up."""
    found: dict[tuple[str, str], list[float]] = {}
    async with aiohttp.ClientSession() as session:
        warm = Plan(1, plan.concurrency, plan.events, 0, plan.concurrency, plan.before)
        for provider in PROVIDERS:
            for proxy in proxies.values():
                await sample(session, proxy, provider, warm)
        for i in range(plan.rounds):
            for provider in PROVIDERS:
                for mode in plan.modes[i % 2 :] + plan.modes[: i % 2]:  # who goes first
                    cpu = await sample(session, proxies[mode], provider, plan)
                    found.setdefault((provider, mode), []).append(cpu)
    return found


async def stored_usage(proxy: Proxy, event_name: str) -> bool:
    """Whether one of the two newest events of that name holds input_tokens, which only
    the `sse` rules read (OpenAI's second event, the cache credit, reads it too)."""
    url = f"{proxy.admin_url}/events"
    params = {"event_name": event_name, "page_size": "2"}
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params=params, headers=auth) as response,
    ):
        items = (await response.json())["items"]
    return any("input_tokens" in item["metadata"] for item in items)


# ------------------------------------------------------------------ report


def overhead(
    found: dict[tuple[str, str], list[float]], provider: str, mode: str = "sse"
) -> Spread | None:
    """Per-round mode / plain - 1, in percent; None when a plain sample measured no CPU
    (a run too small for the clock's 10 ms ticks)."""
    plain = found[provider, "plain"]
    if not all(plain):
        return None
    ratios = paired_ratios(found[provider, mode], plain)
    return Spread(*((r - 1) * 100 for r in (ratios.median, ratios.low, ratios.high)))


def report(found: dict[tuple[str, str], list[float]], plan: Plan, checks: dict[str, bool]) -> str:
    per_event = 1e6 / plan.events  # CPU seconds per exchange -> us per event
    lines = [
        f"rounds {plan.rounds}, {plan.exchanges} exchanges per sample, {plan.events} events "
        f"per stream, {plan.interval_us} us apart, {plan.concurrency} streams at a time",
        "meterproxy CPU per streamed exchange, median (range) of rounds:",
    ]
    worst: float | None = 0.0  # None: some overhead could not be measured
    for provider in PROVIDERS:
        plain, sse = (spread(found[provider, m]) for m in MODES)
        added = paired_differences(found[provider, "sse"], found[provider, "plain"])
        cost = overhead(found, provider)
        worst = None if cost is None or worst is None else max(worst, cost.median)
        lines += [
            f"  {provider}: plain {_ms(plain)} ms, sse {_ms(sse)} ms",
            f"  {provider}: per event plain {_scaled(plain, per_event)} us, "
            f"sse parsing adds {_scaled(added, per_event)} us",
            f"  {provider}: SSE parsing CPU overhead "
            + (f"{cost.render(1, signed=True)} %" if cost else "n/a (too few ticks)"),
        ]
        if plan.before is not None:
            lines += _before_lines(found, provider)
    lines += [f"  {name}: usage found in stored events: {ok}" for name, ok in checks.items()]
    judged = "n/a" if worst is None else worst < TARGET_PERCENT
    lines.append(f"verdict: overhead < {TARGET_PERCENT:.0f} %: {judged}")
    return "\n".join(lines)


def _before_lines(found: dict[tuple[str, str], list[float]], provider: str) -> list[str]:
    cost = overhead(found, provider, BEFORE)
    before = spread(found[provider, BEFORE])
    ratio = "n/a (too few ticks)"
    if all(found[provider, BEFORE]):
        ratio = paired_ratios(found[provider, "sse"], found[provider, BEFORE]).render(3)
    return [
        f"  {provider}: sse-before {_ms(before)} ms, overhead "
        + (f"{cost.render(1, signed=True)} %" if cost else "n/a (too few ticks)"),
        f"  {provider}: CPU per exchange sse / sse-before {ratio}",
    ]


def _ms(values: Spread) -> str:
    return _scaled(values, 1000.0)


def _scaled(values: Spread, factor: float) -> str:
    return Spread(values.median * factor, values.low * factor, values.high * factor).render(2)


async def main(plan: Plan) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-sse-cpu-") as tmp:
        processes = Processes(Path(tmp))
        try:
            proxies = await start_all(processes, Path(tmp), plan)
            found = await measure(proxies, plan)
            checks = {
                f"{mode}/{name}": await stored_usage(proxies[mode], name)
                for mode in plan.modes
                for name in ("openai.tokens", "anthropic.tokens")
            }
        finally:
            processes.stop_all()
    return report(found, plan, checks)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--exchanges", type=int, default=32, help="per sample")
    parser.add_argument("--events", type=int, default=1000, help="per stream (at least 5)")
    parser.add_argument("--interval-us", type=int, default=100, help="between events")
    parser.add_argument("--concurrency", type=int, default=8, help="streams at a time")
    parser.add_argument("--before", type=Path, metavar="DIR", help="also run this tree")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    args = _arguments()
    if args.serve_upstream is not None:
        asyncio.run(serve_upstream(args.serve_upstream))
    else:
        shape = (args.rounds, args.exchanges, args.events, args.interval_us, args.concurrency)
        print(asyncio.run(main(Plan(*shape, args.before))))
