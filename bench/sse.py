"""Server-sent events through each target: time to first event and per-event delay.

The upstream stamps every event with CLOCK_MONOTONIC just before writing it; the client
reads the same clock when the event's line arrives, so the delay is what the path
between them adds (the client's own cost is the same for every target and cancels out
in meterproxy minus bare). The request is the reference `chat-tokens` rule's
`POST /v1/chat/completions`, so meterproxy runs its request JSON tap and its SSE tap.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from bench.fleet import Target
from bench.report import Row, verdict
from bench.stats import paired_differences, percentile, spread

MAX_ADDED_US = 1000.0
SHORT_STREAMS = 40  # per target, for time to first event against the upstream's own
SHORT_EVENTS = 10
CHAT_REQUEST = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
_STAMP = re.compile(rb'"t":(\d+)')


@dataclass(frozen=True)
class SseSample:
    """One stream: request sent -> first event, and each event's stamp -> arrival (us)."""

    first_event_us: float
    delay_p50_us: float
    delay_p99_us: float


def event_delays_us(lines: Sequence[tuple[bytes, int]]) -> list[float]:
    """Delays (us) of the stamped `data:` lines among (line, arrival ns) pairs."""
    delays = []
    for line, arrived_ns in lines:
        found = _STAMP.search(line) if line.startswith(b"data: {") else None
        if found is not None:
            delays.append((arrived_ns - int(found.group(1))) / 1000)
    return delays


async def sample(
    session: aiohttp.ClientSession, target: Target, events: int, interval_us: int
) -> SseSample:
    """Stream `events` events through `target`; RuntimeError unless all of them arrive."""
    url = f"{target.url}/v1/chat/completions?events={events}&interval_us={interval_us}"
    started = time.monotonic_ns()
    lines: list[tuple[bytes, int]] = []
    async with session.post(url, json=CHAT_REQUEST, headers={"X-Customer-Id": "cus_sse"}) as r:
        async for line in r.content:
            lines.append((line, time.monotonic_ns()))
    delays = event_delays_us(lines)
    if r.status != 200 or len(delays) != events:
        raise RuntimeError(f"{target.name}: status {r.status}, {len(delays)} of {events} events")
    first = next(arrived for line, arrived in lines if line.startswith(b"data: {"))
    return SseSample(
        first_event_us=(first - started) / 1000,
        delay_p50_us=percentile(delays, 50),
        delay_p99_us=percentile(delays, 99),
    )


async def measure(
    targets: Sequence[Target], rounds: int, events: int, interval_us: int
) -> dict[str, list[SseSample]]:
    """`rounds` streams per target, interleaved, after one short warm-up stream each."""
    found: dict[str, list[SseSample]] = {t.name: [] for t in targets}
    async with aiohttp.ClientSession() as session:
        for target in targets:
            await sample(session, target, 10, 0)
        for _ in range(rounds):
            for target in targets:
                found[target.name].append(await sample(session, target, events, interval_us))
    return found


async def first_events(targets: Sequence[Target], streams: int) -> dict[str, list[float]]:
    """Time to first event (us) of `streams` short streams per target, interleaved: enough
    samples to compare each proxy with the upstream's own time (`direct`)."""
    found = await measure(targets, streams, SHORT_EVENTS, 0)
    return {name: [s.first_event_us for s in samples] for name, samples in found.items()}


def first_event_row(found: dict[str, list[float]]) -> Row:
    """The AI issue's figure: time to first event through meterproxy within 1 ms of the
    upstream's own (direct), and, for the floor, what bare aiohttp adds."""
    over_direct = paired_differences(found["meterproxy"], found["direct"])
    over_bare = paired_differences(found["meterproxy"], found["bare"])
    return Row(
        figure=f"SSE time to first event, {SHORT_EVENTS}-event streams (us)",
        **{name: spread(v).render(0) for name, v in found.items()},
        result=f"{over_direct.render(0, signed=True)} us over direct;"
        f" {over_bare.render(0, signed=True)} us over bare",
        target=f"<= +{MAX_ADDED_US:.0f} us over direct",
        verdict=verdict(over_direct.median <= MAX_ADDED_US),
    )


def rows(found: dict[str, list[SseSample]], events: int) -> list[Row]:
    """Time to first event and per-event delay (median and p99 of each stream)."""
    figures = (
        (f"SSE time to first event, {events:,}-event stream (us)", "first_event_us", True),
        ("SSE per-event delay, median of a stream (us)", "delay_p50_us", True),
        ("SSE per-event delay, p99 of a stream (us)", "delay_p99_us", False),
    )
    out = []
    for figure, attribute, judged in figures:
        values = {name: [getattr(s, attribute) for s in runs] for name, runs in found.items()}
        added = paired_differences(values["meterproxy"], values["bare"])
        out.append(
            Row(
                figure=figure,
                **{name: spread(v).render(0) for name, v in values.items()},
                result=f"{added.render(0, signed=True)} us",
                target=f"<= +{MAX_ADDED_US:.0f} us" if judged else "-",
                verdict=verdict(added.median <= MAX_ADDED_US) if judged else "-",
            )
        )
    return out
