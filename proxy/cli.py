"""The `meterproxy` command: run, check, rebuild, verify."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from billing.settings import ConfigError
from billing.store.base import StoreError
from proxy import gc_schedule
from proxy.config import Config, load_config
from proxy.event_loop import run_event_loop
from proxy.logs import setup_logging
from proxy.version import __version__

log = logging.getLogger("meterproxy")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=argparse.SUPPRESS,  # so a subcommand's absent option keeps the global one
        help="log lines as text (default) or JSON",
    )
    parser = argparse.ArgumentParser(
        prog="meterproxy", parents=[common], description="A metering sidecar reverse proxy."
    )
    parser.add_argument("--version", action="version", version=f"meterproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "start the proxy and admin listeners"),
        ("check", "validate a configuration without starting anything"),
        ("rebuild", "rebuild the usage aggregates from the raw events"),
        ("verify", "recompute every final statement from the raw events and compare"),
    ):
        sub = commands.add_parser(name, help=text, parents=[common])
        sub.add_argument("-c", "--config", required=True, metavar="FILE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "check":  # check prints its findings; it has nothing to log
        setup_logging(getattr(args, "log_format", "text"))
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.render(exc.filename), file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(warning.render(config.filename), file=sys.stderr)
    if args.command == "check":
        return _check(config)
    if args.command == "rebuild":
        return run_event_loop(_rebuild(config))
    if args.command == "verify":
        return run_event_loop(_verify(config))
    return run_event_loop(_serve(config))


def _check(config: Config) -> int:
    print(
        f"{config.filename}: ok: {len(config.rules.rules)} rules, {len(config.meters)} meters, "
        f"{len(config.plans)} plans"
    )
    return 0


async def _serve(config: Config) -> int:
    from proxy.app import MeterProxy  # imported here: `check` must not need the runtime

    mp = MeterProxy(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(mp))
    with gc_schedule.applied(config.proxy.gc):
        try:
            await mp.start()
        except (OSError, StoreError) as exc:
            log.error("cannot start: %s", exc)
            await mp.stop()
            return 1
        await stop.wait()
        log.info("stopping: finishing in-flight exchanges and flushing events")
        await mp.stop()
    log.info("stopped")
    return 0


def _reload(mp: object) -> None:
    from proxy.app import MeterProxy

    assert isinstance(mp, MeterProxy)
    try:
        config = load_config(mp.config.filename)
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration:\n%s", exc)
        return
    mp.reload(config)


async def _rebuild(config: Config) -> int:
    from proxy.app import store_for

    store = store_for(config)
    await store.open(rebuild_all=True)  # opening rebuilds: each meter once
    await store.close()
    log.info("aggregates rebuilt for %d meters", len(config.meters))
    return 0


async def _verify(config: Config) -> int:
    """Print each final statement that differs from its recomputation; 1 if any does."""
    from billing.verify import verify
    from proxy.app import store_for

    store = store_for(config)
    await store.open()
    checked = differ = 0
    try:
        async for difference in verify(store, config.billing.timezone):
            checked += 1
            if difference is not None:
                differ += 1
                for problem in difference.problems:
                    print(f"{difference.statement_id} ({difference.customer_id}): {problem}")
    finally:
        await store.close()
    print(f"{checked} final statements verified, {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
