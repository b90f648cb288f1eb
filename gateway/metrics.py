"""Prometheus metrics (prometheus-client), safe with several worker processes.

Mode: when ``PROMETHEUS_MULTIPROC_DIR`` is set before this module is imported (the supervisor
sets it for its workers, to a fresh directory per run: :func:`prepare_multiproc_dir`), every
process writes its values to memory-mapped files there and a scrape, answered by whichever
worker gets it, sums them all. Otherwise values live in this process only. The pool and queue
gauges are ``livesum``: a dead worker's share disappears once the supervisor calls
:func:`worker_exited`.

Hot-path cost: the recording functions use labelled children bound once per label
combination and cached here, so a request pays a dict lookup, a counter increment and a
histogram observation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Fixed when the module is imported, like prometheus-client's own choice of value storage.
MULTIPROC_DIR: str | None = os.environ.get(MULTIPROC_ENV) or None
# The classic text format: every Prometheus version reads it, and our names need no escaping.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# ``*_created`` series double the output and mean nothing across worker restarts.
disable_created_metrics()

# Metrics of this process; a multi-process scrape reads the files instead (see render()).
REGISTRY = CollectorRegistry()

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

INGEST_REQUESTS = Counter(
    "hookgate_ingest_requests",
    "Requests to incoming hooks, by outcome (accepted, skipped, duplicate, rejected, "
    "rate_limited, forbidden, unavailable, error) and HTTP status.",
    ["outcome", "status"],
    registry=REGISTRY,
)
INGEST_LATENCY = Histogram(
    "hookgate_ingest_latency_seconds",
    "Time from receiving an incoming hook request to its response, in seconds.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "hookgate_batch_size",
    "Requests written per group-commit transaction.",
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
BATCH_QUEUE_DEPTH = Gauge(
    "hookgate_batch_queue_depth",
    "Requests waiting to be written (all workers).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
OUTGOING_ATTEMPTS = Counter(
    "hookgate_outgoing_attempts",
    "Outgoing hook delivery attempts, by outcome (succeeded, failed, refused).",
    ["outcome"],
    registry=REGISTRY,
)
OUTGOING_FAILURES = Counter(
    "hookgate_outgoing_failures",
    "Outgoing hook deliveries given up (retry schedule exhausted, refused or hook disabled).",
    registry=REGISTRY,
)
OUTGOING_IN_FLIGHT = Gauge(
    "hookgate_outgoing_in_flight",
    "Outgoing hook requests in flight (all dispatchers of this instance).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
OUTGOING_AT_LIMIT = Gauge(
    "hookgate_outgoing_at_limit",
    "Targets (per_target_concurrency) and environments (per_environment_concurrency) with "
    "every slot of their dispatcher in use: their other deliveries wait (all dispatchers).",
    ["limit"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
LOGINS = Counter(
    "hookgate_logins",
    "POST /users/login attempts, by outcome (succeeded, failed, throttled, busy).",
    ["outcome"],
    registry=REGISTRY,
)
MANAGEMENT_REQUESTS = Counter(
    "hookgate_management_requests",
    "Management API requests, by method, route (its path template) and HTTP status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
MANAGEMENT_LATENCY = Histogram(
    "hookgate_management_latency_seconds",
    "Time from a management API request's routing to its response, in seconds, by route.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
DB_POOL_SIZE = Gauge(
    "hookgate_db_pool_size",
    "Open database connections in the pools (all workers).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
DB_POOL_IN_USE = Gauge(
    "hookgate_db_pool_in_use",
    "Database connections in use (all workers).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)

LOOP_LAG = Histogram(
    "hookgate_event_loop_lag_seconds",
    "How late each process's event loop ran a timer that was due, sampled every 0.1 s: "
    "every request of that process waited as long.",
    buckets=LOOP_LAG_BUCKETS,
    registry=REGISTRY,
)

_ingest_children: dict[tuple[str, int], Counter] = {}
_outgoing_children: dict[str, Counter] = {}
_observe_latency = INGEST_LATENCY.observe
_observe_batch = BATCH_SIZE.observe


def record_ingest(outcome: str, status: int, seconds: float) -> None:
    """Count one incoming hook request and its latency (call once per response)."""
    child = _ingest_children.get((outcome, status))
    if child is None:
        child = _ingest_children[(outcome, status)] = INGEST_REQUESTS.labels(outcome, str(status))
    child.inc()
    _observe_latency(seconds)


def record_batch(size: int, queue_depth: int) -> None:
    """One committed group-commit batch of ``size`` requests; ``queue_depth`` still waiting."""
    _observe_batch(size)
    BATCH_QUEUE_DEPTH.set(queue_depth)


def set_queue_depth(depth: int) -> None:
    """Requests waiting in this process's batcher."""
    BATCH_QUEUE_DEPTH.set(depth)


def record_outgoing_attempt(outcome: str) -> None:
    """One outgoing delivery attempt (``succeeded``, ``failed`` or ``refused``)."""
    child = _outgoing_children.get(outcome)
    if child is None:
        child = _outgoing_children[outcome] = OUTGOING_ATTEMPTS.labels(outcome)
    child.inc()


def record_outgoing_failure() -> None:
    """One outgoing delivery given up for good."""
    OUTGOING_FAILURES.inc()


def set_outgoing_load(in_flight: int, targets_at_limit: int, environments_at_limit: int) -> None:
    """This process's dispatcher: requests in flight, and how many targets and environments
    have no free slot."""
    OUTGOING_IN_FLIGHT.set(in_flight)
    OUTGOING_AT_LIMIT.labels("target").set(targets_at_limit)
    OUTGOING_AT_LIMIT.labels("environment").set(environments_at_limit)


def record_login(outcome: str) -> None:
    """One login attempt: ``succeeded``, ``failed`` (wrong email or password), ``throttled``
    (failed-login limits, 429) or ``busy`` (too many password checks queued, 503)."""
    LOGINS.labels(outcome).inc()


def record_management(method: str, route: str, status: int, seconds: float) -> None:
    """One management API response. ``route`` must be the route's path template
    (``/pipelines/{pipeline_id}``), never the path requested: the label set stays bounded."""
    MANAGEMENT_REQUESTS.labels(method, route, str(status)).inc()
    MANAGEMENT_LATENCY.labels(method, route).observe(seconds)


def observe_loop_lag(seconds: float) -> None:
    """One sample of this process's event-loop lag (gateway.loop_lag)."""
    LOOP_LAG.observe(seconds)


def set_pool(size: int, in_use: int) -> None:
    """This process's pool: open connections and connections in use."""
    DB_POOL_SIZE.set(size)
    DB_POOL_IN_USE.set(in_use)


def render(multiproc_dir: str | None = MULTIPROC_DIR) -> bytes:
    """The exposition text: this process's metrics, or with ``multiproc_dir`` every process's
    (reads files: call it off the event loop then)."""
    if multiproc_dir is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=multiproc_dir)
    return generate_latest(registry)


# -- supervisor side --------------------------------------------------------------------------


def prepare_multiproc_dir(base: Path, owner_pid: int | None = None) -> Path:
    """A fresh, empty ``base/<pid>`` for one supervisor run (pass it to the workers as
    ``PROMETHEUS_MULTIPROC_DIR``); directories left by supervisors that are gone are removed."""
    base.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():
        if old.is_dir() and old.name.isdigit() and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    path = base / str(owner_pid or os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    return path


def worker_exited(pid: int, multiproc_dir: str | Path) -> None:
    """Forget a dead worker's live gauges (its counters and histograms keep counting)."""
    with contextlib.suppress(OSError):
        _multiprocess.mark_process_dead(pid, str(multiproc_dir))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
