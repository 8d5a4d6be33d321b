"""The floor under meterproxy's figures: what proxying costs without the rules' work, and
where the event writer's work runs.

More meterproxy processes run beside the reference one, on the same upstream and core: one
without rules (identify, forward, metrics; no events), one with the `egress` rule only (one
event per request), and two with the reference rules whose appends run in the store
process (`storage.writer: process`): on the proxy's core, and moved to the second core (as
wherever a machine has one; here it shares that core with the load generator and the
upstream). Measured in interleaved rounds with bare and the reference meterproxy (two
events per request, appends on its SQLite thread), the differences of CPU per request
give what the rules and their events cost, and what one more stored event costs;
one-client latency shows what the writer's flushes add to the tail. The last variant runs
the reference rules on CPython's own garbage collection schedule (`proxy.gc: default`):
what the tuned schedule saves.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from bench import calls
from bench.fleet import CONFIG, Fleet, Target, start_meterproxy
from bench.loadgen import LoadGenerator
from bench.processes import Processes, children, cpu_split
from bench.report import Row
from bench.stats import paired_differences, paired_ratios, spread

CONNECTIONS = 32
EGRESS_ONLY = """rules:
  - name: egress
    match: {path: /**, status: any}
    event_name: bandwidth
    metadata:
      bytes: ${response.bytes}
"""


@dataclass(frozen=True)
class Variant:
    name: str
    rules: str | None = None  # replaces the rules section; None: the reference's
    writer: str = "thread"  # storage.writer
    second_core: bool = False  # the store process moved to the client cores
    gc: str = "tuned"  # proxy.gc


# The first two are the floor's: `summarise` subtracts them from the reference.
VARIANTS = (
    Variant("no rules", rules="rules: []\n"),
    Variant("egress rule only", rules=EGRESS_ONLY),
    Variant("reference rules, store process", writer="process"),
    Variant("reference rules, store process on the second core", writer="process",
            second_core=True),
    Variant("reference rules, CPython's gc schedule", gc="default"),
)
# The rules section of the benchmark's configuration: from `rules:` to the meters' comment.
_RULES = re.compile(r"^rules:\n.*?(?=^# Meters)", re.MULTILINE | re.DOTALL)


def variant_config(variant: Variant) -> str:
    """The benchmark's configuration as the variant changes it."""
    text = CONFIG.read_text()
    if variant.rules is not None:
        rules = variant.rules
        text, n = _RULES.subn(lambda _: rules + "\n", text, count=1)
        if n != 1:
            raise ValueError(f"no rules section found in {CONFIG}")
    if variant.writer != "thread":
        text = text.replace("  flush_interval: 50ms\n",
                            f"  flush_interval: 50ms\n  writer: {variant.writer}\n", 1)
    if variant.gc != "tuned":
        text = text.replace("proxy:\n", f"proxy:\n  gc: {variant.gc}\n", 1)
    return text


async def start_variants(processes: Processes, workdir: Path, fleet: Fleet) -> list[Target]:
    """Start one meterproxy per VARIANTS entry, pinned like the reference one."""
    upstream = fleet.target("direct").url
    targets = []
    for variant in VARIANTS:
        target, _ = await start_meterproxy(processes, workdir, variant.name, upstream,
                                           config_text=variant_config(variant))
        if variant.second_core:
            for child in children(target.pid):
                os.sched_setaffinity(child, cpu_split()[1])
        targets.append(target)
    return targets


async def rows(
    rounds: int,
    seconds: float,
    fleet: Fleet,
    load: LoadGenerator,
    processes: Processes,
    workdir: Path,
) -> list[Row]:
    """Throughput and CPU per request of each variant against bare, in the same rounds."""
    variants = await start_variants(processes, workdir, fleet)
    for target in variants:  # warm up: imports, pools, first SQLite pages
        await load.run(target.url + calls.PATH, CONNECTIONS, seconds)
    targets = [fleet.target("bare"), fleet.target("meterproxy"), *variants]
    found = await calls.interleaved(load, targets, rounds, CONNECTIONS, seconds)
    one = await calls.interleaved(load, targets, rounds, 1, seconds)
    names = [t.name for t in variants]
    return [*summarise(found, names), *latency(one, names)]


def latency(found: calls.Results, variants: list[str]) -> list[Row]:
    """p50 and p99 at one connection of each variant, and what each adds over bare."""
    out = []
    for name in ("meterproxy", *variants):
        label = "reference rules (2 events)" if name == "meterproxy" else name
        p50 = [r.load.p50_us for r in found[name]]
        p99 = [r.load.p99_us for r in found[name]]
        bare50 = [r.load.p50_us for r in found["bare"]]
        bare99 = [r.load.p99_us for r in found["bare"]]
        out.append(
            Row(
                figure=f"floor: meterproxy, {label}, 1 connection: latency p50; p99 (us)",
                bare=f"{spread(bare50).render(0)}; {spread(bare99).render(0)}",
                meterproxy=f"{spread(p50).render(0)}; {spread(p99).render(0)}",
                result=f"{paired_differences(p50, bare50).render(0, signed=True)} us;"
                f" {paired_differences(p99, bare99).render(0, signed=True)} us",
            )
        )
    return out


def summarise(found: calls.Results, variants: list[str]) -> list[Row]:
    rps = {name: [r.load.rps for r in runs] for name, runs in found.items()}
    cpu = {name: [r.cpu_us_per_request for r in runs] for name, runs in found.items()}
    out = []
    for name in ("meterproxy", *variants):
        label = "reference rules (2 events)" if name == "meterproxy" else name
        out.append(
            Row(
                figure=f"floor: meterproxy, {label}, {CONNECTIONS} connections: req/s;"
                " CPU per request (us)",
                bare=f"{spread(rps['bare']).render(0)}; {spread(cpu['bare']).render(0)}",
                meterproxy=f"{spread(rps[name]).render(0)}; {spread(cpu[name]).render(0)}",
                result=f"{paired_ratios(rps[name], rps['bare']).render(2)} x bare req/s;"
                f" {paired_differences(cpu[name], cpu['bare']).render(0, signed=True)} us CPU",
            )
        )
    rules_cost = paired_differences(cpu["meterproxy"], cpu[variants[0]])
    one_event = paired_differences(cpu["meterproxy"], cpu[variants[1]])
    out.append(
        Row(
            figure="floor: CPU per request of the reference rules and their 2 events;"
            " of the api.call rule and its event (us)",
            result=f"{rules_cost.render(0, signed=True)}; {one_event.render(0, signed=True)}",
        )
    )
    return out
