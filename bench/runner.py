"""One bench run: start everything, measure every target in the same run, verify, report."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import loop_lag, procs
from bench.baselines import adnanh
from bench.gateway import ROOT, GatewayServer
from bench.load import LoadResult, Target, run_load
from bench.payloads import github_signature, payload, variable_set
from bench.seed import (
    WAL_PREPARE_ROWS,
    Hook,
    Seeder,
    autovacuum_activity,
    prepare_wal,
    settle,
    written,
)

GATEWAY_HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "GitHub-Hookshot/bench",
    "X-GitHub-Event": "pull_request",
}
MAIN = ("gateway", "bare", "naive", "adnanh")
SCALING = ("payload", "hooks", "variables", "store_bodies")
BULK_HOOKS = 100_000
HOOKS_ORDER = ("few", "many", "many", "few")  # ABBA: a steady drift affects both cases alike


@dataclass
class Options:
    duration: float = 10.0
    warmup: float = 3.0
    connections: int = 64
    workers: int = 1
    quick: bool = False
    only: tuple[str, ...] = MAIN + SCALING
    use_wrk: bool = True
    wrk_threads: int = 1
    hook_spread: int = 1000  # distinct hook ids the 100k-hooks run cycles over


@dataclass
class Measurement:
    """One measured target (a row of a table)."""

    group: str  # main | payload | hooks | variables | store_bodies
    name: str
    label: str
    load: LoadResult | None = None
    rss_mb: float | None = None
    server_cpu: float | None = None  # cores used by the serving processes
    db_cpu: float | None = None  # cores used by PostgreSQL
    # CPU time per answered request (µs): unlike requests/s, barely moved by other load.
    server_us: float | None = None
    db_us: float | None = None
    # Handler start -> commit, from hook_requests.latency_ms (gateway and naive runs).
    server_p50_ms: float | None = None
    server_p99_ms: float | None = None
    check: str = "n/a"
    failed: bool = False
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    """Runs the scenarios; ``measurements`` and ``failures`` are what the report shows."""

    def __init__(self, options: Options, run_dir: Path) -> None:
        self.options = options
        self.run_dir = run_dir
        self.measurements: list[Measurement] = []
        self.notes: list[str] = []
        self._counter = 0
        self._tag_base = run_dir.name.replace("bench-", "").replace("-", "")[-6:]
        self.bodies = {s: self._body_file(s) for s in ("1k", "28k", "1m")}
        self.gateway = GatewayServer(run_dir, options.workers, procs.free_port())
        self.hooks: dict[str, list[Hook]] = {}
        self.seeder: Seeder | None = None
        self.settle_seconds = 0.0  # VACUUM + CHECKPOINT before each gateway and naive run

    def _body_file(self, size: str) -> Path:
        path = self.run_dir / f"payload-{size}.json"
        path.write_bytes(payload(size))
        return path

    def _tag(self) -> str:
        self._counter += 1
        return f"b{self._tag_base}x{self._counter}"

    def wants(self, name: str) -> bool:
        return name in self.options.only

    # --- targets -------------------------------------------------------------------------------

    def gateway_target(self, hooks: list[Hook], size: str = "28k") -> Target:
        body = self.bodies[size].read_bytes()
        return Target(
            name="gateway",
            base_url=self.gateway.base_url,
            paths=tuple(f"/hooks/incoming/{h.id}" for h in hooks),
            body_file=self.bodies[size],
            headers=GATEWAY_HEADERS,
            path_headers=tuple(
                {"X-Hub-Signature-256": github_signature(h.secret, body)} for h in hooks
            ),
        )

    # --- measuring -----------------------------------------------------------------------------

    def measure(
        self,
        group: str,
        name: str,
        label: str,
        target: Target,
        pids: list[int],
        *,
        verify: bool,
    ) -> Measurement:
        """Warm up, then one measured load run; RSS, CPU and (``verify``) the database check."""
        result = Measurement(group, name, label)
        opts = self.options
        try:
            if opts.warmup > 0:
                tag = self._tag()
                warm = self._load(target, tag, opts.warmup)
                if verify:
                    self._verify(result, tag, warm, "warm-up")
            if verify:
                self.settle_seconds += settle(self.gateway.dsn)
                vacuums = autovacuum_activity(self.gateway.dsn)[0]
            db0 = self.gateway.database_cpu_seconds() if verify else 0.0
            lag0 = loop_lag.scrape(target.base_url) if name == "gateway" else None
            cpu0, t0 = procs.cpu_seconds(pids), time.monotonic()
            tag = self._tag()
            result.load = self._load(target, tag, opts.duration)
            wall = time.monotonic() - t0
            server_s = procs.cpu_seconds(pids) - cpu0
            if lag0 is not None:
                lag = loop_lag.scrape(target.base_url).minus(lag0)
                result.extra["loop_lag"] = lag.summary()
            db_s = self.gateway.database_cpu_seconds() - db0 if verify else 0.0
            answered = max(result.load.responses, 1)
            result.server_cpu, result.server_us = server_s / wall, server_s * 1e6 / answered
            if verify:
                result.db_cpu, result.db_us = db_s / wall, db_s * 1e6 / answered
            sizes = [r for r in (procs.rss_mb(p) for p in pids) if r is not None]
            result.rss_mb = sum(sizes) / len(sizes) if sizes else None
            if verify:
                self._verify(result, tag, result.load, "measured")
                self._note_autovacuum(result, vacuums)
            if result.load.ok == 0:
                result.failed = True
                result.error = f"no 2xx response (statuses {result.load.status_counts})"
        except Exception as exc:  # one broken target must not hide the others
            result.failed, result.error = True, f"{type(exc).__name__}: {exc}"
        self.measurements.append(result)
        self._print_progress(result)
        return result

    def _note_autovacuum(self, result: Measurement, finished_before: int) -> None:
        """Name a run during which autovacuum worked: its DB column includes that work."""
        finished, running = autovacuum_activity(self.gateway.dsn)
        finished -= finished_before
        if not finished and not running:
            return
        result.extra["autovacuum"] = {"finished_passes": finished, "running_at_end": running}
        self.notes.append(
            f"{result.group} {result.label}: autovacuum worked during the measured run "
            f"({finished} pass(es) finished"
            + (f"; still running at its end: {', '.join(running)}" if running else "")
            + "); its CPU is in that row's DB column"
        )

    def _load(self, target: Target, tag: str, duration: float) -> LoadResult:
        return run_load(
            target,
            tag,
            self.options.connections,
            duration,
            self.run_dir,
            use_wrk=self.options.use_wrk,
            wrk_threads=self.options.wrk_threads,
        )

    def _verify(self, result: Measurement, tag: str, load: LoadResult, phase: str) -> None:
        """Runs in the database == 2xx responses == distinct delivery ids (exact when nothing
        was left unanswered; otherwise 2xx <= runs <= 2xx + unanswered)."""
        if load.unanswered:  # requests cut mid-flight may still be committing: let them land
            time.sleep(2.0)
        db = written(self.gateway.dsn, tag)
        exact = load.unanswered == 0
        ok = db.runs == db.distinct_deliveries and (
            db.runs == load.ok if exact else load.ok <= db.runs <= load.ok + load.unanswered
        )
        text = (
            f"{db.runs} runs, {db.distinct_deliveries} distinct ids, {load.ok} 2xx"
            + ("" if exact else f", {load.unanswered} unanswered")
            + f", {db.requests} history rows"
        )
        if phase == "measured":
            result.check = ("ok: " if ok else "MISMATCH: ") + text
            result.extra["history_rows"] = db.requests
            result.server_p50_ms, result.server_p99_ms = db.server_p50_ms, db.server_p99_ms
        if not ok:
            result.failed = True
            result.check = f"MISMATCH ({phase}): {text}"

    def _print_progress(self, m: Measurement) -> None:
        if m.load is None:
            print(f"  {m.group:<12} {m.name:<8} {m.label:<24} FAILED: {m.error}", file=sys.stderr)
            return
        print(
            f"  {m.group:<12} {m.name:<8} {m.label:<24} {m.load.rps:9.0f} req/s  "
            f"p50 {m.load.p50_ms:7.2f} ms  p99 {m.load.p99_ms:7.2f} ms  {m.check}"
            + (f"  ERROR: {m.error}" if m.error else ""),
            file=sys.stderr,
        )

    # --- baselines -----------------------------------------------------------------------------

    def _start_python_baseline(self, module: str, extra: list[str]) -> tuple[list[Any], str]:
        port = procs.free_port()
        log = self.run_dir / f"{module.rsplit('.', 1)[1]}.log"
        command = [sys.executable, "-m", module, "--port", str(port), *extra]
        started = [procs.start(command, log, cwd=ROOT) for _ in range(self.options.workers)]
        procs.wait_http(f"http://127.0.0.1:{port}/healthz", started[0], log)
        time.sleep(0.5 * self.options.workers)  # let every SO_REUSEPORT sibling bind
        return started, f"http://127.0.0.1:{port}"

    def run_baseline(self, name: str, hooks: list[Hook]) -> None:
        """bare / naive: N aiohttp processes on one port, the same requests as the gateway."""
        target = self.gateway_target(hooks)
        extra: list[str] = []
        if name == "naive":
            import json

            config = self.run_dir / "naive.json"
            variables = variable_set(5)
            hook_map = {
                h.id: {"secret": h.secret, "pipeline_id": h.pipeline_id, "variables": variables}
                for h in hooks
            }
            config.write_text(json.dumps({"dsn": self.gateway.dsn, "hooks": hook_map}))
            extra = ["--config", str(config)]
        try:
            started, base_url = self._start_python_baseline(f"bench.baselines.{name}", extra)
        except Exception as exc:
            self.measurements.append(
                Measurement("main", name, "28 KB", failed=True, error=str(exc))
            )
            return
        try:
            target = Target(**{**target.__dict__, "name": name, "base_url": base_url})
            self.measure(
                "main", name, "28 KB", target, [p.pid for p in started], verify=name == "naive"
            )
        finally:
            for process in started:
                procs.stop(process)

    def run_adnanh(self, hook: Hook) -> None:
        """adnanh/webhook with a payload-hmac-sha256 rule; skipped clearly when not installed."""
        if not adnanh.available():
            self.measurements.append(
                Measurement(
                    "main", "adnanh", "28 KB", error="not installed (apt-get install webhook)"
                )
            )
            return
        port = procs.free_port()
        hooks_file = adnanh.write_hooks(self.run_dir / "adnanh-hooks.json", hook.secret)
        log = self.run_dir / "adnanh.log"
        process = procs.start(
            adnanh.command(hooks_file, port), log, env=adnanh.environment(self.options.workers)
        )
        try:
            procs.wait_http(f"http://127.0.0.1:{port}/", process, log)
            body = self.bodies["28k"].read_bytes()
            target = Target(
                name="adnanh",
                base_url=f"http://127.0.0.1:{port}",
                paths=(f"/hooks/{adnanh.HOOK_ID}",),
                body_file=self.bodies["28k"],
                headers={
                    **GATEWAY_HEADERS,
                    "X-Hub-Signature-256": github_signature(hook.secret, body),
                },
            )
            self.measure("main", "adnanh", "28 KB", target, [process.pid], verify=False)
        finally:
            procs.stop(process)

    # --- the run -------------------------------------------------------------------------------

    def run(self) -> None:
        """Every selected scenario, in an order that needs the fewest gateway restarts."""
        opts = self.options
        self.gateway.start("all")
        self.seeder = Seeder(self.gateway.base_url, self.gateway.dsn, self._tag_base)
        seconds = prepare_wal(self.gateway.dsn)
        self.notes.append(
            f"fresh data directory: {WAL_PREPARE_ROWS:,} rows of 1 KB written, dropped and "
            f"checkpointed first ({seconds:.1f} s), so the runs recycle WAL segments as a running "
            "database does instead of creating them (see bench/README.md)"
        )
        seed5 = self.hooks["seed"] = self.seeder.create_hooks(variable_set(5), 10, "seed")
        if self.seeder.method == "sql":
            self.notes.append("hooks created with SQL: " + "; ".join(self.seeder.missing[:3]))
        else:
            self.notes.append(
                "admin bootstrapped by `gateway serve` from GATEWAY_ADMIN_*; environment, pipeline "
                "and hooks created through the management API (seed body)"
            )
        gw_pids = self.gateway.worker_pids()
        if self.wants("gateway"):
            self.measure(
                "main", "gateway", "28 KB", self.gateway_target(seed5), gw_pids, verify=True
            )
        for name in ("bare", "naive"):
            if self.wants(name):
                self.run_baseline(name, seed5)
        if self.wants("adnanh"):
            self.run_adnanh(seed5[0])
        if self.wants("payload"):
            for size, label in (("1k", "1 KB"), ("1m", "1 MB")):
                if size == "1m" and opts.quick:
                    continue
                target = self.gateway_target(seed5, size)
                self.measure("payload", "gateway", label, target, gw_pids, verify=True)
        if self.wants("variables"):
            for count in (1, 50):
                hooks = self.seeder.create_hooks(variable_set(count), 10, f"{count}vars")
                target = self.gateway_target(hooks)
                self.measure(
                    "variables", "gateway", f"{count} variables", target, gw_pids, verify=True
                )
        if self.wants("hooks") and not opts.quick:
            started = time.monotonic()
            existing = self.seeder.count_hooks()
            ids = self.seeder.bulk_copies(seed5[0], BULK_HOOKS - existing)
            self.notes.append(
                f"inserted {len(ids)} hooks in one statement in {time.monotonic() - started:.1f}s"
            )
            spread = random.Random(7).sample(ids, min(opts.hook_spread, len(ids)))
            hooks = [Hook(i, seed5[0].secret, seed5[0].pipeline_id) for i in spread]
            # The machine's speed drifts by 10-15 % within a minute, more than the effect being
            # measured: the two cases alternate (ABBA) and are compared by their means. Both run
            # with the 100,000 hooks in the table; the reference row ran before they existed.
            total = f"{existing + len(ids):,}"
            cases = {
                "few": (f"{len(seed5)} of {total} hooks hit", seed5),
                "many": (f"{len(spread):,} of {total} hooks hit", hooks),
            }
            for n, case in enumerate(HOOKS_ORDER):
                label, hit = cases[case]
                self.measure(
                    "hooks",
                    "gateway",
                    f"{label}, run {n // 2 + 1}",
                    self.gateway_target(hit),
                    gw_pids,
                    verify=True,
                ).extra["hooks_case"] = case
        if self.wants("store_bodies"):
            for setting in ("failures", "none"):
                self._restart_gateway(setting)
                target = self.gateway_target(seed5)
                pids = self.gateway.worker_pids()
                self.measure(
                    "store_bodies", "gateway", f"store_bodies={setting}", target, pids, verify=True
                )
        if self.settle_seconds:
            self.notes.append(
                f"before each measured run of a database-backed target: VACUUM (ANALYZE) and "
                f"CHECKPOINT ({self.settle_seconds:.1f} s in all, in no row's figures; see "
                "bench/README.md)"
            )
        code = self.gateway.stop()
        if code != 0:
            self.notes.append(
                f"the gateway exited with {code} on SIGTERM (see {self.gateway.log_path})"
            )

    def _restart_gateway(self, store_bodies: str) -> None:
        code = self.gateway.stop()
        if code != 0:
            self.notes.append(
                f"gateway exit code {code} on SIGTERM before store_bodies={store_bodies}"
            )
        self.gateway.start(store_bodies)


def ensure_tools(install: bool) -> list[str]:
    """Install wrk and webhook with apt-get when missing (root only); notes on what happened."""
    missing = [tool for tool in ("wrk", "webhook") if shutil.which(tool) is None]
    if not missing:
        return []
    if not install or shutil.which("apt-get") is None or not _is_root():
        return [
            f"not installed: {', '.join(missing)} (install with: apt-get install -y wrk webhook)"
        ]
    print(f"bench: installing {' '.join(missing)} with apt-get ...", file=sys.stderr)
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return [f"apt-get failed for {' '.join(missing)}: {done.stderr.strip()[-300:]}"]
    still = [tool for tool in missing if shutil.which(tool) is None]
    return [f"still missing after apt-get: {', '.join(still)}"] if still else []


def _is_root() -> bool:
    import os

    return os.geteuid() == 0
