"""Chaos soak: the real stack on loopback under steady multi-tenant load while it is being broken.

Redis, 3 workers (a tiny random Llama on the CPU) and 2 routers, all real processes (see
bench/chaos/stack.py). Tenants stream Generate through both routers in turn; a hostile client
sends one malformed or hostile request a second (bench/chaos/hostile.py); faults follow the
schedule in bench/chaos/faults.py (kill -9 + restart a worker, SIGSTOP/SIGCONT a worker, restart
Redis, kill -9 + restart a router). When the run ends, the load drains and the soak checks:

- hung streams: no message for longer than the bound derived from the router's settings (the
  health checks' window to take a frozen worker out of rotation, unhealthy_after_failures x
  (check interval + check timeout), + the silence after which a stream of a worker out of
  rotation is ended, RouterConfig.unhealthy_stream_silence_s, + 10 s slack for a loaded
  machine), far below the router's idle limit (forward.stream_idle_timeout_s, 120 s), so a
  frozen worker's stream that only the idle limit would end counts as hung -- must be 0;
- the ledger under faults, per client (the rule of issue 12, notes/DECISIONS.md): booked (the
  ledger's ``completion_tokens`` in Redis) - received (output tokens in stream deltas) is
  0 when no router kill cut one of the client's streams, and at most one message's tokens
  per stream a router kill cut: a router books each message before relaying it, so no token
  is ever served unbooked, and a router killed between the booking and the socket write leaves
  that one message booked and never received. "One message" is at most the largest delta any
  stream received in the run, and never more than the rest of that request's max_tokens. Both
  directions are checked: never below received, never above the bound;
- KV pages leaked on each worker at idle: total - free - cached -- must be 0;
- each fault's detection time by the router that was not faulted;
- no ERROR/CRITICAL record or traceback in any router's or worker's log.

    .venv/bin/python bench/chaos_soak.py --quick            # ~2.5 min on 2 cores, one fault cycle
    .venv/bin/python bench/chaos_soak.py --duration 600     # the default: 10 min, 6 cycles

Writes bench/results/<tag>.json (aggregates only) and <tag>.md (--tag, default chaos_soak).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.chaos.faults import FAULTS, FaultRecord, measure_detection, run_faults, schedule  # noqa: E402
from bench.chaos.hostile import BAD_STATUSES, HostileClient  # noqa: E402
from bench.chaos.load import LoadTally, tenant_loop  # noqa: E402
from bench.chaos.observe import StatusMonitor, error_summary, leaked_pages, ledger_tokens  # noqa: E402
from bench.chaos.report import write_report  # noqa: E402
from bench.chaos.stack import ChaosStack, StackConfig  # noqa: E402
from bench.engine.serving_bench import parse_sets, prepare_model  # noqa: E402
from bench.report import RESULTS_DIR  # noqa: E402
from radixfair.auth import ApiKeyConfig  # noqa: E402

HOSTILE_ID = "hostile"
HANG_SLACK_S = 10.0
# A stream cut by a router kill fails as soon as its connection drops: within this of the kill.
KILL_CUT_WINDOW_S = 2.0


def hang_bound(cfg: StackConfig) -> float:
    """Seconds of silence after which a stream counts as hung (see the module docstring)."""
    router = cfg.router_config()
    registry = router.registry
    health_window_s = registry.unhealthy_after_failures * (
        registry.health_check_interval_s + registry.health_check_timeout_s
    )
    return health_window_s + router.unhealthy_stream_silence_s + HANG_SLACK_S


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--quick", action="store_true", help="one fault cycle: --duration 110")
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--streams-per-tenant", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--faults", nargs="*", choices=FAULTS, default=list(FAULTS), help="which faults to inject"
    )
    parser.add_argument(
        "--router-set", action="append", default=[], metavar="KEY=VALUE", help="extra router setting (dotted)"
    )
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--tag", default="chaos_soak")
    parser.add_argument("--run-dir", default="", help="logs and configs (default: a temporary directory)")
    parser.add_argument("--cache-dir", default="~/.cache/radixfair/models", help="where the tokenizer is")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 110.0
    return args


async def soak(args: argparse.Namespace, stack: ChaosStack) -> dict[str, object]:
    cfg = stack.config
    hang_bound_s = hang_bound(cfg)
    routers = [r.address for r in stack.routers]
    tally, hostile_tally = LoadTally(), LoadTally()
    monitor = StatusMonitor(routers, cfg.operator_key.key)
    stop_load, stop_monitor = asyncio.Event(), asyncio.Event()
    hostile = HostileClient(routers, "chaos-hostile-key", HOSTILE_ID, args.seed)
    records: list[FaultRecord] = []
    t0 = time.monotonic()

    async def hostile_loop() -> None:
        pending: set[asyncio.Task[None]] = set()
        while not stop_load.is_set():
            task = asyncio.create_task(hostile.send_one(hostile_tally, hang_bound_s))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(1.0)
        await asyncio.gather(*pending)

    monitor_task = asyncio.create_task(monitor.run(stop_monitor))
    loads = [
        asyncio.create_task(
            tenant_loop(
                routers, k.key, k.client_id, args.streams_per_tenant, stop_load, tally, hang_bound_s, i
            )
        )
        for i, k in enumerate(cfg.tenant_keys)
        if k.client_id != HOSTILE_ID
    ]
    loads.append(asyncio.create_task(hostile_loop()))
    faults = asyncio.create_task(run_faults(stack, schedule(args.duration, args.faults), t0, records))
    await asyncio.sleep(args.duration)
    await faults  # a restart still under way finishes first
    stop_load.set()
    await asyncio.gather(*loads)
    await hostile.close()
    drained_s = round(time.monotonic() - t0 - args.duration, 1)
    ledger = await settle_ledger(stack, monitor)
    await asyncio.sleep(1.0)
    stop_monitor.set()
    await monitor_task
    measure_detection(records, monitor, stack.routers[0].log_path)
    pages = {w.name: await leaked_pages(w.address) for w in stack.workers}
    return summarize(
        args, stack, tally, hostile_tally, hostile, ledger, pages, records, hang_bound_s, drained_s
    )


async def settle_ledger(stack: ChaosStack, monitor: StatusMonitor, limit_s: float = 30.0) -> dict[str, int]:
    """The ledger once both routers are connected to Redis and the totals stop moving."""
    ids = [k.client_id for k in stack.config.tenant_keys] + ["anonymous"]
    deadline = time.monotonic() + limit_s
    previous: dict[str, int] | None = None
    while True:
        await asyncio.sleep(1.0)
        latest = [s for s in monitor.samples[-4:] if s.answered]
        connected = len(latest) >= 2 and all(s.connected for s in latest)
        current = ledger_tokens(stack.redis.url, ids)
        if (connected and current == previous) or time.monotonic() > deadline:
            return current
        previous = current


def summarize(
    args: argparse.Namespace,
    stack: ChaosStack,
    tally: LoadTally,
    hostile_tally: LoadTally,
    hostile: HostileClient,
    ledger: dict[str, int],
    pages: dict[str, dict[str, int]],
    records: list[FaultRecord],
    hang_bound_s: float,
    drained_s: float,
) -> dict[str, object]:
    received = {
        **tally.tokens,
        HOSTILE_ID: hostile_tally.tokens[HOSTILE_ID],
        "anonymous": hostile_tally.tokens["anonymous"],
    }
    message_tokens = max(tally.largest_message_tokens, hostile_tally.largest_message_tokens)
    clients = ledger_rows(received, ledger, [tally, hostile_tally], records, message_tokens)
    bad_hostile = {k: v for k, v in hostile_tally.status.items() if k in BAD_STATUSES}
    logs = [*stack.routers, *stack.workers]
    evidence = {c.name: error_summary(c.log_path) for c in logs}
    checks = {
        "hung_streams_zero": tally.hung + hostile_tally.hung == 0,
        # No token served unbooked (book before relay), whatever was killed.
        "ledger_never_below_received": all(r["booked_minus_received"] >= 0 for r in clients),
        # Exact for a client no router kill cut; else at most one message per stream cut.
        "ledger_within_one_message_per_cut_stream": all(r["passed"] for r in clients),
        "no_leaked_pages": all(p["leaked_pages"] == 0 for p in pages.values()),
        "hostile_answered_cleanly": not bad_hostile,
        # Faults, hang-ups and hostile input are expected here: none may log an ERROR or a traceback.
        "no_error_in_logs": not any(evidence.values()),
    }
    return {
        "duration_s": args.duration,
        "tenants": len(stack.config.tenant_keys) - 1,
        "streams_per_tenant": args.streams_per_tenant,
        "hang_bound_s": hang_bound_s,
        "router_limits": router_limits(stack.config),
        "drain_s": drained_s,
        "load": tally.as_dict(),
        "hostile": {**hostile_tally.as_dict(), "kinds": dict(sorted(hostile.kinds.items()))},
        "largest_message_tokens": message_tokens,
        "ledger": clients,
        "kv_pages": pages,
        "faults": [{k: v for k, v in vars(r).items() if k not in ("started", "ended")} for r in records],
        "checks": checks,
        "passed": all(checks.values()),
        "log_evidence": {k: v for k, v in evidence.items() if v},
    }


def ledger_rows(
    received: dict[str, int],
    ledger: dict[str, int],
    tallies: list[LoadTally],
    records: list[FaultRecord],
    message_tokens: int,
) -> list[dict[str, object]]:
    """Per client: received, booked, streams cut by router kills, the bound and whether it holds."""
    cut: dict[str, list[int]] = {}
    for tally in tallies:
        for client, unreceived in streams_cut_by_router_kills(tally, records):
            cut.setdefault(client, []).append(unreceived)
    rows: list[dict[str, object]] = []
    for client in ledger:
        booked, got = ledger.get(client, 0), received.get(client, 0)
        streams = cut.get(client, [])
        # One message per cut stream: no bigger than the largest one seen, nor than what it had left.
        bound = sum(min(message_tokens, unreceived) for unreceived in streams)
        excess = booked - got
        rows.append(
            {
                "client": client,
                "tokens_received": got,
                "tokens_booked": booked,
                "booked_minus_received": excess,
                "streams_cut_by_router_kills": len(streams),
                "bound": bound,
                "passed": 0 <= excess <= bound,
            }
        )
    return rows


def streams_cut_by_router_kills(tally: LoadTally, records: list[FaultRecord]) -> list[tuple[str, int]]:
    """(client, output tokens its request allowed and it did not receive) of each stream that failed
    on a router within KILL_CUT_WINDOW_S of that router's kill -9."""
    kills = [(r.started, int(r.target.rsplit("-", 1)[1])) for r in records if r.fault == "kill -9 router"]
    return [
        (client, unreceived)
        for client, router, failed_at, unreceived in tally.failed_streams
        if any(index == router and 0 <= failed_at - at <= KILL_CUT_WINDOW_S for at, index in kills)
    ]


def router_limits(cfg: StackConfig) -> dict[str, float]:
    """The routers' health-check and stream limits in this run (their defaults unless --router-set)."""
    router = cfg.router_config()
    registry = router.registry
    return {
        "health_check_interval_s": registry.health_check_interval_s,
        "health_check_timeout_s": registry.health_check_timeout_s,
        "unhealthy_after_failures": registry.unhealthy_after_failures,
        "unhealthy_stream_silence_s": router.unhealthy_stream_silence_s,
        "stream_idle_timeout_s": router.forward.stream_idle_timeout_s,
        "output_book_ahead_tokens": router.policy.output_book_ahead_tokens,
    }


def router_settings(extra: dict[str, object]) -> dict[str, object]:
    """The stack's router settings with ``--router-set`` dotted keys merged in."""
    settings = json.loads(json.dumps(StackConfig(Path(), Path()).router_settings))
    for dotted, value in extra.items():
        *parents, leaf = dotted.split(".")
        node = settings
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return settings


def tenant_keys(count: int) -> tuple[ApiKeyConfig, ...]:
    keys = [ApiKeyConfig(f"chaos-tenant-key-{i}", f"tenant-{i}", float(1 + i % 2)) for i in range(count)]
    return (*keys, ApiKeyConfig("chaos-hostile-key", HOSTILE_ID, 1.0))


def run(args: argparse.Namespace) -> dict[str, object]:
    with contextlib.ExitStack() as cleanup:
        run_dir = (
            Path(args.run_dir) if args.run_dir else Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        )
        if any((run_dir / "logs").glob("*.log")):
            # Children append to their logs (a restart keeps its history), so an earlier run's
            # errors would be read as this run's.
            raise SystemExit(f"--run-dir {run_dir} holds an earlier run's logs; give a new directory")
        model_ns = argparse.Namespace(model_dir="", tokenizer_dir="", shape="tiny", cache_dir=args.cache_dir)
        model_dir = prepare_model(model_ns, run_dir)
        settings = router_settings(parse_sets(args.router_set))
        config = StackConfig(
            model_dir, run_dir / "logs", tenant_keys=tenant_keys(args.tenants), router_settings=settings
        )
        stack = ChaosStack(config)
        cleanup.callback(stack.stop)
        started = time.monotonic()
        stack.start()
        startup_s = round(time.monotonic() - started, 1)
        return {"startup_s": startup_s, **asyncio.run(soak(args, stack))}


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    command = shlex.join(["python", "bench/chaos_soak.py", *(sys.argv[1:] if argv is None else argv)])
    result = run(args)
    write_report(Path(args.out_dir), args.tag, command, result)
    print(json.dumps({"passed": result["passed"], "checks": result["checks"]}))
    return result


if __name__ == "__main__":
    main()
