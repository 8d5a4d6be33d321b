"""Throughput and one-client latency of small API calls, every target in interleaved
rounds (A B C D A B C D ...) so that drift on a shared machine hits all of them alike.

The request is `GET /v1/items` with an `X-Customer-Id`: in meterproxy it matches the
reference rules `api-calls` and `egress`, so each request stores two events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.fleet import Target
from bench.loadgen import LoadGenerator, LoadResult
from bench.processes import cpu_seconds
from bench.report import Row, verdict
from bench.stats import paired_differences, paired_ratios, spread

PATH = "/v1/items"
MIN_THROUGHPUT_RATIO = 0.90
MAX_ADDED_P50_US = 60.0
MAX_ADDED_P99_US = 500.0


@dataclass(frozen=True)
class Run:
    """One load run against one target, and the CPU its server used meanwhile."""

    load: LoadResult
    cpu_s: float

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s * 1e6 / self.load.requests if self.load.requests else 0.0


Results = dict[str, list[Run]]


async def interleaved(
    load: LoadGenerator,
    targets: Sequence[Target],
    rounds: int,
    connections: int,
    seconds: float,
) -> Results:
    """`rounds` runs per target, one target after the other in each round."""
    results: Results = {t.name: [] for t in targets}
    for _ in range(rounds):
        for target in targets:
            results[target.name].append(await measured(load, target, connections, seconds))
    return results


async def measured(load: LoadGenerator, target: Target, connections: int, seconds: float) -> Run:
    """Run the load against `target`, reading its server's CPU time before and after."""
    before = cpu_seconds(target.pid)
    result = await load.run(target.url + PATH, connections, seconds)
    return Run(result, cpu_seconds(target.pid) - before)


def errors_note(results: Results, what: str) -> str | None:
    """A line naming the targets that had failed requests, or None when none had."""
    failed = {name: sum(r.load.errors for r in runs) for name, runs in results.items()}
    failed = {name: n for name, n in failed.items() if n}
    if not failed:
        return None
    listed = ", ".join(f"{name} {n:,}" for name, n in failed.items())
    return f"{what}: failed requests (non-2xx or socket errors): {listed}"


def throughput_row(connections: int, results: Results) -> Row:
    """Requests/s per target (median and range of rounds); meterproxy/bare paired ratio."""
    rps = {name: [r.load.rps for r in runs] for name, runs in results.items()}
    ratio = paired_ratios(rps["meterproxy"], rps["bare"])
    return Row(
        figure=f"throughput, {connections} connections (req/s)",
        **{name: spread(values).render(0) for name, values in rps.items()},
        result=f"{ratio.render(2)} x bare",
        target=f">= {MIN_THROUGHPUT_RATIO:.2f} x bare",
        verdict=verdict(ratio.median >= MIN_THROUGHPUT_RATIO),
    )


def cpu_row(connections: int, results: Results) -> Row:
    """CPU time each server spends per request (us): steadier than req/s on a busy host."""
    cpu = {name: [r.cpu_us_per_request for r in runs] for name, runs in results.items()}
    ratio = paired_ratios(cpu["meterproxy"], cpu["bare"])
    added = paired_differences(cpu["meterproxy"], cpu["bare"])
    return Row(
        figure=f"server CPU per request, {connections} connections (us)",
        **{name: spread(values).render(0) for name, values in cpu.items()},
        result=f"{ratio.render(2)} x bare ({added.render(0, signed=True)} us)",
    )


def latency_rows(results: Results) -> list[Row]:
    """p50 and p99 at one connection (us), and what meterproxy adds over bare."""
    rows = []
    for label, limit in (("p50", MAX_ADDED_P50_US), ("p99", MAX_ADDED_P99_US)):
        values = {
            name: [r.load.p50_us if label == "p50" else r.load.p99_us for r in runs]
            for name, runs in results.items()
        }
        added = paired_differences(values["meterproxy"], values["bare"])
        rows.append(
            Row(
                figure=f"latency {label}, 1 connection (us)",
                **{name: spread(v).render(0) for name, v in values.items()},
                result=f"{added.render(0, signed=True)} us",
                target=f"<= +{limit:.0f} us",
                verdict=verdict(added.median <= limit),
            )
        )
    return rows
