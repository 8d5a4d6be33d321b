"""The whole benchmark: start the fleet, measure every figure, print and write the table.

Order: warm-up, throughput (32 and 256 connections), one-client latency, SSE, then a soak
of meterproxy up to 1M requests (profiled by py-spy meanwhile) with its RSS before and
after, 1 GB each way through bare and meterproxy, ingest (into the reference meterproxy,
then into fresh ones on SQLite and on PostgreSQL, side by side), and the billing slot. The soak
gets whatever time the others leave within the run's budget, and says how far it got.

A plan may name only some phases (`PHASES`), to iterate on one figure in minutes; `floor`
(meterproxy without rules beside the reference one) runs only when named.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from bench import billing_slot, calls, floor, ingest, memory, pyspy, sse
from bench.fleet import ADMIN_TOKEN, Fleet, start_fleet
from bench.loadgen import CUSTOMERS, LoadGenerator, pick_generator
from bench.processes import Processes, cpu_split, rss_bytes
from bench.report import Row, machine_lines, render_table, verdict

MB = 1_000_000
MAX_GROWTH_MB = 50
MIN_INGEST_PER_S = 100_000
MIN_FLEET_INGEST_PER_S = 50_000  # the fleet issue's, per replica
# Where the PostgreSQL ingest creates its scratch database (dropped after).
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", ingest.ADMIN_URL)
# The fresh servers' ingest runs at these numbers of clients: 4, as the row above, and
# enough to keep one replica's appends full (a fleet's replica takes batches from many
# application servers at once), the figure the targets judge.
FRESH_CLIENTS = (ingest.CONCURRENCY, 16)
ENGINES = (("sqlite", "SQLite", MIN_INGEST_PER_S),
           ("postgresql", "PostgreSQL (fleet mode, one replica)", MIN_FLEET_INGEST_PER_S))
PROFILE_CONNECTIONS = memory.SOAK_CONNECTIONS
TOP_FRAMES = 15
# What a run can measure; `make bench` runs DEFAULT_PHASES (all but the floor).
PHASES = (
    "throughput", "latency", "sse", "soak", "profile", "streams", "ingest", "billing", "floor",
)  # fmt: skip
DEFAULT_PHASES = frozenset(PHASES) - {"floor"}


@dataclass(frozen=True)
class Plan:
    """How much of everything one run measures."""

    name: str
    rounds: int  # interleaved rounds of throughput and latency
    seconds: float  # one throughput or latency run
    sse_rounds: int
    soak_requests: int
    stream_bytes: int
    ingest_batches: int
    profile_s: float
    previews: int  # usage previews timed, of random customers
    budget_s: float  # the whole run; the soak is cut short to stay within it
    reserve_s: float  # kept for the phases after the soak
    sse_events: int = 1000
    sse_interval_us: int = 1000
    phases: frozenset[str] = DEFAULT_PHASES

    def only(self, phases: frozenset[str], rounds: int | None = None) -> Plan:
        """This plan restricted to `phases` (ValueError naming an unknown one), with
        `rounds` interleaved rounds instead of its own when given."""
        unknown = sorted(phases - set(PHASES))
        if unknown:
            raise ValueError(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES)}")
        return replace(
            self,
            name=f"{self.name}, only {', '.join(p for p in PHASES if p in phases)}",
            phases=phases,
            rounds=rounds or self.rounds,
            sse_rounds=rounds or self.sse_rounds,
        )


FULL = Plan("full", 3, 4, 3, 1_000_000, 1_000_000_000, 200, 15, 300, 590, 100)
QUICK = Plan("quick", 1, 2, 1, 30_000, 100_000_000, 20, 5, 30, 100, 45)


@dataclass
class Outcome:
    """What the phases found: table rows, notes under the table, the profile section."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: str = ""
    served: int = 0  # requests meterproxy completed so far (toward the soak's 1M)


async def run(plan: Plan, output: Path) -> str:
    """Run every phase and return the report, also written to `output`."""
    _, client_cpus = cpu_split()
    os.sched_setaffinity(0, client_cpus)  # children (wrk, py-spy) inherit this
    started = time.monotonic()
    load = pick_generator()
    with tempfile.TemporaryDirectory(prefix="meterproxy-bench-") as tmp:
        processes = Processes(Path(tmp))
        try:
            fleet = await start_fleet(processes, Path(tmp))
            outcome = await _measure(plan, fleet, load, started, processes, Path(tmp))
        finally:
            processes.stop_all()
    report = _report(plan, outcome, load.name, fleet.nginx, time.monotonic() - started)
    await asyncio.to_thread(output.write_text, report + "\n")
    return report


async def _measure(
    plan: Plan,
    fleet: Fleet,
    load: LoadGenerator,
    started: float,
    processes: Processes,
    workdir: Path,
) -> Outcome:
    out = Outcome()
    wanted = plan.phases
    if fleet.nginx == "not installed":
        out.notes.append("nginx: not installed (`make bench-deps`); its column is empty")
    await _warm_up(plan, fleet, load, out)
    rss_start = rss_bytes(fleet.target("meterproxy").pid)
    await _http(plan, fleet, load, out)
    if "sse" in wanted:
        await _sse(plan, fleet, out)
    if "floor" in wanted:
        out.rows.extend(
            await floor.rows(plan.rounds, plan.seconds, fleet, load, processes, workdir)
        )
    budget = plan.budget_s - plan.reserve_s - (time.monotonic() - started)
    if "soak" in wanted:
        await _soak(plan, fleet, load, out, rss_start, budget)
    elif "profile" in wanted:
        out.profile = await _profile_alone(plan, fleet, load)
    if "streams" in wanted:
        await _streams(plan, fleet, out)
    ingested = await _ingest(plan, fleet, out) if "ingest" in wanted else 0
    if "billing" in wanted:
        events = 2 * out.served + ingested  # each soak request stores api.call and bandwidth
        out.rows.extend(
            await billing_slot.rows(
                fleet.admin_url, ADMIN_TOKEN, billing_slot.sample_customers(plan.previews), events,
                billing_slot.cached_store(),
            )
        )
    return out


async def _warm_up(plan: Plan, fleet: Fleet, load: LoadGenerator, out: Outcome) -> None:
    """Every target at 32 connections, then meterproxy at 256: its RSS baseline then
    already holds the buffers of the most connections the run opens."""
    for target in fleet.targets:
        result = await load.run(target.url + calls.PATH, 32, plan.seconds)
        out.served += result.requests if target.name == "meterproxy" else 0
    result = await load.run(fleet.target("meterproxy").url + calls.PATH, 256, plan.seconds)
    out.served += result.requests


async def _http(plan: Plan, fleet: Fleet, load: LoadGenerator, out: Outcome) -> None:
    for connections in (32, 256) if "throughput" in plan.phases else ():
        found = await calls.interleaved(load, fleet.targets, plan.rounds, connections, plan.seconds)
        out.rows.append(calls.throughput_row(connections, found))
        out.rows.append(calls.cpu_row(connections, found))
        _count(out, found, f"throughput at {connections} connections")
    if "latency" not in plan.phases:
        return
    found = await calls.interleaved(load, fleet.targets, plan.rounds, 1, plan.seconds)
    out.rows.extend(calls.latency_rows(found))
    _count(out, found, "latency at 1 connection")


def _count(out: Outcome, found: calls.Results, what: str) -> None:
    out.served += sum(r.load.requests for r in found["meterproxy"])
    note = calls.errors_note(found, what)
    if note:
        out.notes.append(note)


async def _sse(plan: Plan, fleet: Fleet, out: Outcome) -> None:
    found = await sse.measure(fleet.targets, plan.sse_rounds, plan.sse_events, plan.sse_interval_us)
    out.rows.extend(sse.rows(found, plan.sse_events))
    out.rows.append(sse.first_event_row(await sse.first_events(fleet.targets, sse.SHORT_STREAMS)))


async def _soak(
    plan: Plan, fleet: Fleet, load: LoadGenerator, out: Outcome, rss_start: int, budget: float
) -> None:
    """Top meterproxy up to plan.soak_requests, profiling it during the first seconds."""
    target = fleet.target("meterproxy")
    wanted = max(0, plan.soak_requests - out.served)
    soaked, section = await asyncio.gather(
        memory.soak(load, target, wanted, budget, calls.PATH),
        _profile(plan, target.pid, load.name),
    )
    out.served += soaked.requests
    out.profile = section
    if soaked.errors:
        out.notes.append(f"soak: {soaked.errors:,} failed requests at meterproxy")
    if soaked.rss:
        curve = ", ".join(f"{rss / MB:.0f} MB" for _, rss in soaked.rss)
        out.notes.append(f"meterproxy RSS after each slice of the soak: {curve}")
    if out.served < plan.soak_requests:
        out.notes.append(f"soak: the time budget ended at {out.served:,} requests")
    growth = (rss_bytes(target.pid) - rss_start) / MB
    judged = out.served >= FULL.soak_requests
    out.rows.append(
        Row(
            figure=f"RSS from warm-up to {out.served:,} requests, {CUSTOMERS:,} customers (MB)",
            meterproxy=f"{rss_start / MB:.0f} -> {(rss_start / MB) + growth:.0f}",
            result=f"{growth:+.1f} MB",
            target=f"< +{MAX_GROWTH_MB} MB after 1M",
            verdict=verdict(growth < MAX_GROWTH_MB) if judged else "-",
        )
    )


async def _profile_alone(plan: Plan, fleet: Fleet, load: LoadGenerator) -> str:
    """Profile meterproxy under the soak's load for plan.profile_s, without the soak."""
    target = fleet.target("meterproxy")
    url = target.url + calls.PATH
    _, section = await asyncio.gather(
        load.run(url, PROFILE_CONNECTIONS, plan.profile_s + 2),
        _profile(plan, target.pid, load.name),
    )
    return section


async def _profile(plan: Plan, pid: int, generator: str) -> str:
    binary = pyspy.py_spy()
    if binary is None:
        return "py-spy is not installed (`make bench-deps`): no profile."
    await asyncio.sleep(1)  # let the soak's load reach its steady state first
    with tempfile.TemporaryDirectory() as tmp:
        try:
            raw = await pyspy.record(binary, pid, plan.profile_s, Path(tmp) / "raw.txt")
        except RuntimeError as exc:
            return f"no profile: {exc}"
    heading = (
        f"meterproxy under {generator} load ({PROFILE_CONNECTIONS} connections, GET {calls.PATH}),"
        f" py-spy {pyspy.RATE_HZ} Hz for {plan.profile_s:.0f} s; top {TOP_FRAMES} frames"
        " by own time, over the non-idle threads (the event loop and the SQLite writer);"
        " a thread waiting for the GIL counts as busy in the frame that waits"
    )
    return heading + ":\n\n" + pyspy.render(pyspy.top_frames(raw, TOP_FRAMES))


async def _streams(plan: Plan, fleet: Fleet, out: Outcome) -> None:
    growth: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for name in ("bare", "meterproxy"):
        target = fleet.target(name)
        before = rss_bytes(target.pid)
        streamed = await memory.stream_both_ways(target, plan.stream_bytes)
        growth[name] = (streamed.peak_rss - before) / MB
        seconds[name] = streamed.seconds
    size = f"{plan.stream_bytes / 1e9:g} GB"
    judged = plan.stream_bytes >= FULL.stream_bytes
    out.rows.append(
        Row(
            figure=f"RSS growth while streaming {size} each way (MB)",
            bare=f"{growth['bare']:+.1f}",
            meterproxy=f"{growth['meterproxy']:+.1f}",
            result=f"{growth['meterproxy']:+.1f} MB",
            target=f"< +{MAX_GROWTH_MB} MB",
            verdict=verdict(growth["meterproxy"] < MAX_GROWTH_MB) if judged else "-",
        )
    )
    out.rows.append(
        Row(
            figure=f"{size} each way at once, wall time (s)",
            bare=f"{seconds['bare']:.1f}",
            meterproxy=f"{seconds['meterproxy']:.1f}",
            result=f"{seconds['meterproxy'] / seconds['bare']:.2f} x bare",
        )
    )


async def _ingest(plan: Plan, fleet: Fleet, out: Outcome) -> int:
    """Measure ingest; how many events it stored."""
    bodies = ingest.batch_bodies(plan.ingest_batches)
    done = await ingest.ingest(fleet.admin_url, ADMIN_TOKEN, bodies)
    if done.stored != done.sent:
        out.notes.append(f"ingest: {done.stored:,} of {done.sent:,} events newly stored")
    out.rows.append(
        Row(
            figure=f"ingest, {ingest.BATCH:,}-event batches, {ingest.CONCURRENCY} clients"
            " (events/s)",
            meterproxy=f"{done.per_second:,.0f}",
            result=f"{done.per_second:,.0f}/s",
            target=f">= {MIN_INGEST_PER_S:,}/s",
            verdict=verdict(done.per_second >= MIN_INGEST_PER_S),
        )
    )
    await _fresh_ingest(plan, out)
    return done.stored


async def _fresh_ingest(plan: Plan, out: Outcome) -> None:
    """Ingest into a fresh `meterproxy run` per engine and number of clients, alone on the
    proxies' core: the SQLite and PostgreSQL figures side by side (a note instead when an
    engine cannot run)."""
    for engine, label, target in ENGINES:
        for clients in FRESH_CLIENTS:
            try:
                served = await ingest.one_run(engine, plan.ingest_batches, None, PG_ADMIN_URL,
                                              clients=clients)
            except (OSError, RuntimeError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                out.notes.append(f"ingest into a fresh meterproxy on {label}: not measured"
                                 f" ({exc})")
                break
            judged = target if clients == FRESH_CLIENTS[-1] else None
            out.rows.append(fresh_ingest_row(label, served, clients, judged))


def fresh_ingest_row(label: str, served: ingest.Served, clients: int,
                     target: int | None) -> Row:
    """A fresh server's ingest figure; judged by `target` when there is one."""
    rate = served.ingested.per_second
    return Row(
        figure=f"ingest into a fresh meterproxy on one core, {label}, {ingest.BATCH:,}-event"
        f" batches, {clients} clients (events/s; CPU us per event)",
        meterproxy=f"{rate:,.0f}; {served.cpu_us_per_event:.1f}",
        result=f"{rate:,.0f}/s",
        target="-" if target is None else f">= {target:,}/s",
        verdict="-" if target is None else verdict(rate >= target),
    )


def _report(plan: Plan, out: Outcome, generator: str, nginx: str, seconds: float) -> str:
    parts = [
        f"## meterproxy benchmark ({plan.name} run, {seconds:.0f} s)",
        "",
        render_table(out.rows),
        "",
        "Values are medians of interleaved rounds, with the range in brackets; ratios and",
        "differences are taken per round (meterproxy against bare in the same round).",
        "",
        *(f"- {note}" for note in out.notes),
        *machine_lines(generator, nginx),
        "- placement: bare, nginx and meterproxy pinned to core 0 (one at a time under load);"
        " upstream, load generator and clients on core 1",
        "",
        "### Profile",
        "",
        out.profile,
    ]
    return "\n".join(parts)
