"""The soak's JSON (aggregates, environment, command) and its markdown tables."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import environment, markdown_table

NOTES = """\
How to read it. *Hung* is a stream with no message for longer than `hang_bound_s`
(the health checks' window to take a frozen worker out + the router's silence bound for a stream of
a worker out of rotation + 10 s slack, far below the router's 120 s idle limit); such a stream is cancelled
by the client and counted. *Ledger* compares, per client, the output tokens the client received in
stream deltas with the `completion_tokens` field of the client's hash in Redis (*booked*): the routers
add each message's tokens before relaying it (one pipelined write for every stream's pending tokens,
so a killed router leaves nothing unbooked; replayed from local state after a Redis outage); no
refund touches it (a refund returns only the admission's service of a request that produced no
token). A router killed between a message's booking and its socket write leaves that message booked
and never received: hence the bound of one message per stream a router kill cut (a stream that
failed on the killed router within 2 s of its kill). `anonymous` is the hostile client's calls with no or
a wrong key: nothing may be served or booked there. *Leaked pages* is total - free - cached on an
idle worker, cached counted from the load report's page hashes (one per cached page). *Detected*
is the time from the fault until router-0 (never faulted) showed it; *recovered* from the target
being back (restart done, SIGCONT) until router-0 saw it healthy again (router: until it answered).
"""


def write_report(out_dir: Path, tag: str, command: str, result: dict[str, object]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(("grpcio", "protobuf", "redis", "torch", "transformers", "hypothesis"))
    (out_dir / f"{tag}.json").write_text(json.dumps({**env, "command": command, **result}, indent=2))
    load, hostile = result["load"], result["hostile"]  # type: ignore[index]
    machine = env["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)  # type: ignore[union-attr]
    traffic = [
        {"traffic": name, **{k: v for k, v in part.items() if k != "kinds"}}  # type: ignore[union-attr]
        for name, part in (("tenants", load), ("hostile", hostile))
    ]
    pages = [{"worker": w, **p} for w, p in result["kv_pages"].items()]  # type: ignore[union-attr]
    checks = [{"invariant": k, "holds": v} for k, v in result["checks"].items()]  # type: ignore[union-attr]
    lines = [
        f"# {tag}",
        "",
        f"{env['date']} · {machine['processor']} ({machine['cpus']} cpus) · Python {env['python']}"  # type: ignore[index]
        f" · {versions} · commit {env['git_commit']}",
        "",
        f"`{command}`",
        "",
        f"{result['duration_s']} s of load, {result['tenants']} tenants"
        f" x {result['streams_per_tenant']} streams"
        f" through 2 routers, 3 workers, 1 Redis; hang bound {result['hang_bound_s']} s; started in"
        f" {result['startup_s']} s; drained in"
        f" {result['drain_s']} s. **All invariants hold: {result['passed']}**",
        "",
        f"Router limits: {result['router_limits']}",
        "",
        markdown_table(checks, ["invariant", "holds"]),
        "",
        "## Requests",
        "",
        markdown_table(
            traffic,
            [
                "traffic",
                "sent",
                "completed",
                "by_status",
                "hung_streams",
                "tokens_on_failed_streams",
                "longest_silence_s",
            ],
        ),
        "",
        f"Hostile request kinds drawn: {hostile['kinds']}",  # type: ignore[index]
        "",
        "## Output tokens received vs booked in the ledger",
        "",
        f"Rule (issue 12): booked - received is 0 for a client no router kill cut, else at most one"
        f" message's tokens per stream a router kill cut; one message here is at most"
        f" {result['largest_message_tokens']} tokens (the largest delta received in the run) and at most"
        f" what the cut request had left of its max_tokens.",
        "",
        markdown_table(
            result["ledger"],  # type: ignore[arg-type]
            [
                "client",
                "tokens_received",
                "tokens_booked",
                "booked_minus_received",
                "streams_cut_by_router_kills",
                "bound",
                "passed",
            ],
        ),
        "",
        "## KV pages at idle",
        "",
        markdown_table(
            pages,
            ["worker", "total_pages", "free_pages", "cached_pages", "running", "waiting", "leaked_pages"],
        ),
        "",
        "## Faults and the router's time to detect them",
        "",
        markdown_table(
            result["faults"], ["fault", "target", "at_s", "detected_s", "recovered_s", "detected_by"]
        ),  # type: ignore[arg-type]
        "",
    ]
    evidence = result.get("log_evidence") or {}
    if evidence:
        lines += ["## Errors in the services' logs (message or exception: times logged)", ""]
        for name, found in evidence.items():  # type: ignore[union-attr]
            lines += [f"- {name}:", *[f"  - {count} x `{text}`" for text, count in found.items()]]
        lines.append("")
    lines.append(NOTES)
    (out_dir / f"{tag}.md").write_text("\n".join(lines))
