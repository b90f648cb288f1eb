"""The bench's output: markdown tables on stdout and a JSON file under bench/results/."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import loop_lag
from bench.runner import Bench, Measurement, Options

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = (  # (ratio name, numerator, denominator, minimum) from DESIGN §7 / issue 7
    ("R_ingest = gateway / bare", "gateway", "bare", 0.5),
    ("gateway / naive", "gateway", "naive", 3.0),
    ("gateway / adnanh-webhook", "gateway", "adnanh", 3.0),
)
P99_LIMIT_MS = 25.0
HOOKS_LIMIT = 0.10  # 100,000 hooks: throughput within 10 % of 10 hooks


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        # Other work on the machine skews every figure: the 1/5/15-minute load at report time.
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _row(m: Measurement) -> str:
    if m.load is None:
        return f"| {m.name} | {m.label} |{' - |' * 9} {m.error or 'not run'} |"
    load = m.load
    errors = load.non2xx + load.socket_errors + load.unanswered
    return (
        f"| {m.name} | {m.label} | {load.rps:,.0f} | {load.p50_ms:.2f} | {load.p99_ms:.2f} | "
        f"{errors} | {_fmt(m.rss_mb)} | {_fmt(m.server_cpu, 2)} | {_fmt(m.server_us, 0)} | "
        f"{_fmt(m.db_cpu, 2)} | {_fmt(m.db_us, 0)} | "
        f"{m.check}{' — ' + m.error if m.error else ''} |"
    )


_HEADER = (
    "| target | case | requests/s | p50 ms | p99 ms | errors/non-2xx | RSS/worker MB | "
    "server CPU cores | server CPU µs/req | DB CPU cores | DB CPU µs/req | check |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def ratios(bench: Bench) -> list[dict[str, Any]]:
    """The contract ratios from the main table."""
    rps = {
        m.name: m.load.rps
        for m in bench.measurements
        if m.group == "main" and m.load is not None and not m.error
    }
    found = []
    for name, top, bottom, minimum in TARGETS:
        if rps.get(top) and rps.get(bottom):
            value = rps[top] / rps[bottom]
            found.append(
                {"ratio": name, "value": value, "target": minimum, "met": value >= minimum}
            )
    return found


def _main_row(bench: Bench, name: str) -> Measurement | None:
    """The main table's row of ``name`` (gateway, bare, naive, adnanh), if it was measured."""
    return next((m for m in bench.measurements if m.group == "main" and m.name == name), None)


def hooks_ratio(bench: Bench) -> dict[str, Any] | None:
    """100,000 hooks against 10 from the alternating runs: mean req/s of the 1,000-hit runs ÷
    that of the 10-hit runs (a failed run is left out of its case's mean)."""
    rates: dict[str, list[float]] = {"few": [], "many": []}
    for m in bench.measurements:
        case = m.extra.get("hooks_case")
        if case in rates and m.load is not None and not m.failed:
            rates[case].append(m.load.rps)
    if not rates["few"] or not rates["many"]:
        return None
    few, many = (sum(r) / len(r) for r in (rates["few"], rates["many"]))
    change = many / few - 1.0
    reference = _main_row(bench, "gateway")
    return {
        "change": change,
        # Against the main table's gateway row: 10 hooks in the table, measured minutes earlier.
        "change_from_reference": many / reference.load.rps - 1.0
        if reference is not None and reference.load is not None and reference.load.rps
        else None,
        "runs": {case: len(r) for case, r in rates.items()},
        "target": -HOOKS_LIMIT,
        "met": change >= -HOOKS_LIMIT,
    }


def cpu_ratio(bench: Bench) -> float | None:
    """bare's server CPU per request ÷ the gateway's (gateway + its PostgreSQL): R_ingest as
    it would be if both had the CPUs to themselves and ran CPU-bound."""
    gateway, bare = _main_row(bench, "gateway"), _main_row(bench, "bare")
    if not gateway or not bare or not gateway.server_us or not bare.server_us:
        return None
    return bare.server_us / (gateway.server_us + (gateway.db_us or 0.0))


def markdown(bench: Bench) -> str:
    """The whole report as markdown."""
    opts: Options = bench.options
    info = machine()
    tool = "wrk" if opts.use_wrk else "bench.loadgen (aiohttp)"
    lines = [
        f"## hookgate bench — {opts.workers} worker(s), {opts.connections} connections, "
        f"{opts.duration:g} s per run (+{opts.warmup:g} s warm-up), load: {tool}",
        "",
        f"Machine: {info['cpus']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"kernel {info['kernel']}, load average {info['loadavg']} at the end (anything above "
        f"the bench's own load means other work shared the CPUs). Run directory: "
        f"`{bench.run_dir}`.",
        "",
        "### Same body (28 KB GitHub pull_request.opened), same connections, same worker count",
        "",
        _HEADER,
        *(_row(m) for m in bench.measurements if m.group == "main"),
        "",
    ]
    for r in ratios(bench):
        mark = "met" if r["met"] else "NOT met"
        lines.append(f"- **{r['ratio']} = {r['value']:.2f}** (target ≥ {r['target']:g}: {mark})")
    efficiency = cpu_ratio(bench)
    if efficiency is not None:
        lines.append(
            f"- CPU-time view (contention-independent): bare µs/req ÷ (gateway + DB µs/req) = "
            f"{efficiency:.2f}"
        )
    gateway = _main_row(bench, "gateway")
    if gateway and gateway.load:
        mark = "met" if gateway.load.p99_ms <= P99_LIMIT_MS else "NOT met"
        lines.append(
            f"- gateway p99 = {gateway.load.p99_ms:.2f} ms (target ≤ {P99_LIMIT_MS:g} ms: {mark})"
        )
        if gateway.server_p99_ms is not None:
            lines.append(
                f"- gateway server-side latency (handler start → commit, recorded in "
                f"`hook_requests.latency_ms`): p50 {_fmt(gateway.server_p50_ms, 2)} ms, "
                f"p99 {_fmt(gateway.server_p99_ms, 2)} ms; the rest of the client's latency is "
                f"spent before the handler runs (the request waiting for the event loop) and "
                f"in sending the answer"
            )
        if "loop_lag" in gateway.extra:
            lines.append(
                f"- gateway event-loop lag during the run (`hookgate_event_loop_lag_seconds`, "
                f"sampled every 0.1 s): {loop_lag.describe(gateway.extra['loop_lag'])}"
            )
    scaling = [m for m in bench.measurements if m.group != "main"]
    if scaling:
        lines += [
            "",
            "### Scaling (gateway; reference row = 28 KB, 10 hooks, 5 variables, store_bodies=all)",
            "",
            _HEADER,
        ]
        if gateway:
            lines.append(_row(Measurement(**{**asdict_shallow(gateway), "label": "reference"})))
        lines += [_row(m) for m in scaling]
        hooks = hooks_ratio(bench)
        if hooks is not None:
            mark = "met" if hooks["met"] else "NOT met"
            lines += [
                "",
                f"- **100,000 hooks, 1,000 of them hit, against 10 hit: {hooks['change']:+.1%} "
                f"requests/s** (means of the alternating runs above; target within "
                f"{HOOKS_LIMIT:.0%}: {mark})",
            ]
            if hooks["change_from_reference"] is not None:
                lines.append(
                    f"- against the reference row (10 hooks in the table, measured minutes "
                    f"earlier, before the copies were inserted): "
                    f"{hooks['change_from_reference']:+.1%}"
                )
    if bench.notes:
        lines += ["", "Notes:", *(f"- {n}" for n in bench.notes)]
    failed = [m for m in bench.measurements if m.failed]
    lines += ["", f"**Result: {'FAILED' if failed else 'OK'}**"]
    lines += [f"- {m.group}/{m.name} {m.label}: {m.error or m.check}" for m in failed]
    return "\n".join(lines) + "\n"


def asdict_shallow(m: Measurement) -> dict[str, Any]:
    """The dataclass fields without deep-copying the load result."""
    return {k: getattr(m, k) for k in m.__dataclass_fields__}


def write_json(bench: Bench) -> Path:
    """Save every figure under bench/results/ (gitignored); the file's path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{bench.run_dir.name}-w{bench.options.workers}.json"
    data = {
        "options": asdict(bench.options),
        "machine": machine(),
        "run_dir": str(bench.run_dir),
        "ratios": ratios(bench),
        "cpu_ratio": cpu_ratio(bench),
        "hooks_ratio": hooks_ratio(bench),
        "notes": bench.notes,
        "measurements": [
            {
                **{k: v for k, v in asdict_shallow(m).items() if k != "load"},
                "load": m.load.to_json() if m.load else None,
            }
            for m in bench.measurements
        ],
    }
    path.write_text(json.dumps(data, indent=2, default=str))
    return path
