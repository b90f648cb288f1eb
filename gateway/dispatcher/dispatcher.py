"""The delivery loop: claim due outbox rows, send them, record every attempt, schedule retries.

One loop per process claims up to its free capacity (``[outgoing] concurrency``) with
``FOR UPDATE SKIP LOCKED`` and a lease of ``timeout + LEASE_MARGIN`` seconds, so several
dispatchers (``gateway serve`` workers, ``gateway dispatch``) share the outbox safely and a
crashed one's deliveries become due again when its lease runs out. Each delivery is a task of
its own, sent through one shared ClientSession whose connector is the SSRF guard.

A slow or dead target never holds up the others: at most ``per_target_concurrency`` requests
are in flight per ``scheme://host:port``; while a target is saturated its hooks are left out of
claims, and a claimed delivery whose target turns out saturated is handed back unchanged. An
environment with many such targets does not hold up the other environments either: at most
``per_environment_concurrency`` of its requests are in flight, and while it has that many its
deliveries are left out of claims (and handed back, should one be claimed all the same).

The loop sleeps until the next delivery is due, a NOTIFY on ``hookgate_delivery_due`` (sent
when deliveries are written) or a finished delivery wakes it, and polls every
``poll_interval`` seconds as a fallback. A lost LISTEN connection is opened again at once
(:class:`~gateway.storage.listener.KeptListener`), and wakes the loop when it is back.
Stopping stops claiming, lets in-flight requests finish for up to the given grace period, then
cuts off those still waiting for an answer and hands them back (without using up an attempt);
an answer whose status has arrived has its body cut short and is recorded, not sent again.
An answer is recorded however long the database is away (see :meth:`Dispatcher._record`),
unless the process stops first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from gateway import metrics, run_states
from gateway.config import Config
from gateway.dispatcher.client import MAX_TIMEOUT, clean, failure_message, new_session, send
from gateway.dispatcher.in_flight import InFlight, environment_limit
from gateway.dispatcher.outbound import CompiledHook, OutboundRequest, build_request, event_context
from gateway.dispatcher.resolver import OutgoingConnector
from gateway.dispatcher.retry import FAILED, RETRY, SUCCEEDED, Decision, RetryPolicy
from gateway.dispatcher.signing import scrub_pieces, scrub_sent_secrets, sent_secret_pieces
from gateway.dispatcher.ssrf import is_refusal
from gateway.dispatcher.templates import RenderError
from gateway.exceptions import AlreadyExists, DatabaseUnavailable
from gateway.log_throttle import OutageLog
from gateway.logs import get_logger
from gateway.security.sensitive_headers import redact_headers
from gateway.storage import outgoing as store
from gateway.storage.database import Database, Record
from gateway.storage.listener import KeptListener

log = get_logger(__name__)

# Seconds beyond the request timeout to render, record and commit. Recording an answer does
# not end with the lease: while the database is away it goes on (this dispatcher claims no
# delivery it is still recording); meanwhile another dispatcher may claim the expired lease
# and send the delivery again, with the same webhook-id (at least once).
LEASE_MARGIN = 10.0
# How long a session a reload replaced stays open for the requests sent on it: the longest a
# request may take (client.send's bound, ``[outgoing] timeout`` at most) and a margin.
RETIRED_SESSION_LIFE = MAX_TIMEOUT + 5.0
# Pauses between tries of recording an attempt while the database is away: doubling, then
# every _RECORD_PAUSE_MAX seconds until it is recorded or the stop's grace is over.
_RECORD_PAUSE_FIRST = 0.25
_RECORD_PAUSE_MAX = 2.0
CLAIM_BATCH = 100
MIN_IDLE = 0.05  # never spin faster than this when work is due but none could be claimed
# Seconds before a delivery whose preparation failed unexpectedly (a bug: rendering raised
# something other than a RenderError) is claimed again, its attempt not used up: handed back
# due at once, it was claimed again on every round of the loop, each time with a traceback.
PREPARE_RETRY = 60.0
DOWN_LOG_INTERVAL = 60.0  # seconds between warnings while polls find the database unavailable
MESSAGE_LIMIT = 1000
_COMPILED_LIMIT = 10_000
_URL_SEPARATORS = re.compile(r"[/?&=#;]+")


def _url_pieces(url: str) -> set[str]:
    """What follows the host in a target URL (all of it, the path, the query, the fragment and
    their parts), as sent and percent-decoded: a credential for some targets (Slack's and
    Discord's hook URLs, ``?api_key=``)."""
    split = urlsplit(url)
    tail = url.partition("://")[2][len(split.netloc) :]
    pieces: set[str] = set()
    for text in (tail, split.path, split.query, split.fragment):
        for form in (text, unquote(text)):
            pieces.add(form)
            pieces.update(_URL_SEPARATORS.split(form))
    return pieces


def recorded_message(message: str, request: OutboundRequest, signed_with: Iterable[str]) -> str:
    """An attempt's message as it is stored (history, a delivery's ``last_error``) and logged:
    the target URL as its origin, and the sent credentials and signatures (a target can reflect
    them into an error) and the URL's path and query replaced by ``[redacted]``."""
    message = clean(message).replace(request.url, request.origin)
    pieces = sent_secret_pieces(request.headers, signed_with) | _url_pieces(request.url)
    return (scrub_pieces(message, pieces) or "")[:MESSAGE_LIMIT]


class Dispatcher:
    """Delivers outgoing hooks for one process; :meth:`start`, then :meth:`stop`."""

    def __init__(
        self, db: Database, config: Config, *, nameservers: Sequence[str] | None = None
    ) -> None:
        """``nameservers`` replace resolv.conf's for target lookups (tests)."""
        self.db = db
        self._nameservers = nameservers
        self._configure(config)
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sending: set[asyncio.Task[None]] = set()  # before a response: safe to cut off
        # The status arrived, the excerpt is being read: the stop cuts the body short (closes
        # the response), not the delivery, whose answer is recorded, not sent again.
        self._reading: dict[asyncio.Task[None], aiohttp.ClientResponse] = {}
        self._recording: set[uuid.UUID] = set()  # answered, not yet recorded: never claimed
        self._retrying: set[asyncio.Task[None]] = set()  # recordings the database failed
        self._cut_off = False  # the stop's grace is over: recordings are not tried again
        # Polls in a row that found the database unavailable.
        self._outage = OutageLog(log, DOWN_LOG_INTERVAL, "polls")
        # Both limits need a restart (gateway.reload): the counts stay with the process.
        self._targets = InFlight[str](self.settings.per_target_concurrency)  # per origin
        self._environments = InFlight[int](
            environment_limit(self.settings.per_environment_concurrency, self.settings.concurrency)
        )
        self._hook_origin: dict[uuid.UUID, str] = {}  # hooks with work in flight or handed back
        self._compiled: dict[uuid.UUID, tuple[Any, CompiledHook | str]] = {}
        self._session: aiohttp.ClientSession | None = None
        # Sessions a reload replaced, open until their requests are over (RETIRED_SESSION_LIFE).
        self._retired: dict[aiohttp.ClientSession, asyncio.Task[None]] = {}
        # A lost one is opened again at once; back, it wakes the loop: deliveries written
        # meanwhile made notifications nobody heard.
        self._listener = KeptListener(
            db,
            store.DELIVERY_DUE_CHANNEL,
            lambda _payload: self._wake.set(),
            name="dispatcher",
            on_listening=self._wake.set,
            fallback="polling every outgoing.poll_interval seconds until it is back",
        )

    def _configure(self, config: Config) -> None:
        self.settings = config.outgoing
        self.store_bodies = config.hooks.store_bodies
        self.policy = RetryPolicy.create(
            self.settings.retry_schedule,
            jitter=self.settings.retry_jitter,
            retry_after_max=self.settings.retry_after_max,
            disable_after_failures=self.settings.disable_after_failures,
        )
        self.lease_seconds = self.settings.timeout + LEASE_MARGIN

    def _new_session(self) -> aiohttp.ClientSession:
        return new_session(
            allow_private_targets=self.settings.allow_private_targets,
            concurrency=self.settings.concurrency,
            dns_timeout=self.settings.dns_timeout,
            nameservers=self._nameservers,
        )

    def apply_config(self, old: Config, new: Config, changed: frozenset[str]) -> None:
        """SIGHUP reload callback (gateway.reload): take the new ``[outgoing]`` settings and
        ``hooks.store_bodies``; a changed SSRF setting or ``dns_timeout`` applies to requests
        sent from now on.
        Changed ``[security]`` keys: hooks are compiled again, with the database's new box."""
        if any(k.startswith("security.") for k in changed):
            self._compiled.clear()
        if not any(k.startswith("outgoing.") or k == "hooks.store_bodies" for k in changed):
            return
        self._configure(new)
        if old.outgoing.allow_private_targets != new.outgoing.allow_private_targets:
            if self._session is not None:
                self._retire(self._session)  # in-flight requests finish on it
            self._session = self._new_session()
        elif self._session is not None:
            # In place: a new session would keep another c-ares channel (a thread, descriptors)
            # until the dispatcher stops, at each reload.
            connector = self._session.connector
            assert isinstance(connector, OutgoingConnector)
            connector.dns_timeout = new.outgoing.dns_timeout
        log.info("dispatcher_reconfigured", changed=sorted(changed))
        self._wake.set()

    def _retire(self, session: aiohttp.ClientSession) -> None:
        """Close ``session`` once every request sent on it has ended (each reload that replaces
        the session would otherwise keep another c-ares channel and connection pool open)."""

        async def close_later() -> None:
            await asyncio.sleep(RETIRED_SESSION_LIFE)
            del self._retired[session]
            await session.close()

        self._retired[session] = asyncio.create_task(close_later(), name="outgoing-retired")

    async def start(self) -> None:
        """Open the HTTP session and the LISTEN connection; start the loop."""
        self._session = self._new_session()
        await self._listener.start()
        self._report_load()  # the gauges read 0 from the start, not missing until a delivery
        self._loop_task = asyncio.create_task(self._run(), name="outgoing-dispatcher")
        log.info("dispatcher_started", concurrency=self.settings.concurrency)

    def stop_claiming(self) -> None:
        """Claim no more deliveries (the process is stopping); those in flight go on."""
        if not self._stopping:
            log.info("dispatcher_stopping", in_flight=len(self._tasks))
        self._stopping = True
        self._wake.set()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; give in-flight deliveries ``grace`` seconds, hand back the rest."""
        self.stop_claiming()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            # Cut off requests still waiting for an answer, and recordings the database kept
            # failing (each logs outgoing_attempt_not_recorded); a first try to record ends
            # with its own timeouts, and is not tried again when it fails.
            self._cut_off = True
            for task in pending & (self._sending | self._retrying):
                task.cancel()
            for task in pending & self._reading.keys():
                self._reading[task].close()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._listener.close()
        for session, closer in list(self._retired.items()):
            closer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closer
            await session.close()
        self._retired.clear()
        if self._session is not None:
            await self._session.close()
        log.info("dispatcher_stopped")

    # --- the loop -----------------------------------------------------------------------

    def _hook_room(self) -> dict[uuid.UUID, int]:
        """Free slots of the target of each hook with deliveries in flight (a claim takes no
        more than that of the hook, so little is handed back)."""
        return {h: self._targets.free(origin) for h, origin in self._hook_origin.items()}

    def _busy_hooks(self) -> list[uuid.UUID]:
        """Hooks whose target has no free slot."""
        return [h for h, free in self._hook_room().items() if free == 0]

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            wait = self.settings.poll_interval
            try:
                free = self.settings.concurrency - len(self._tasks)
                if free > 0:
                    limit = min(free, CLAIM_BATCH)
                    started = await self._claim(limit)
                    self._database_back()
                    if started == limit:
                        continue  # maybe more is due right now
                    due = await store.seconds_until_due(
                        self.db, self._busy_hooks(), self._recording, self._environments.busy()
                    )
                    if due is not None:
                        wait = min(max(due, MIN_IDLE), wait)
            except DatabaseUnavailable as exc:
                self._database_unavailable(exc)
            except Exception:
                log.exception("dispatcher_loop_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _database_unavailable(self, exc: DatabaseUnavailable) -> None:
        # Every poll_interval while the database is away: a warning for the first poll of an
        # outage, then one per DOWN_LOG_INTERVAL with the count, the rest debug lines.
        self._outage.failed("dispatcher_database_unavailable", error=str(exc))

    def _database_back(self) -> None:
        if failed := self._outage.recovered():
            log.info("dispatcher_database_available", failed_polls=failed)

    async def _claim(self, limit: int) -> int:
        """Claim and start up to ``limit`` deliveries; return how many rows were claimed."""
        rows = await store.claim_deliveries(
            self.db,
            limit,
            self.lease_seconds,
            self._busy_hooks(),
            self.settings.per_target_concurrency,
            self._hook_room(),
            self._recording,
            per_environment=self._environments.limit,
            environment_room=self._environments.room(),
        )
        handed_back: list[tuple[uuid.UUID, int]] = []
        deferred: list[tuple[uuid.UUID, int]] = []  # could not be prepared: see PREPARE_RETRY
        for row in rows:
            try:
                prepared = await self._prepare(row)
            except DatabaseUnavailable:
                handed_back.append((row["id"], row["attempt"]))
                continue
            except Exception:
                log.exception(
                    "delivery_prepare_failed", delivery_id=str(row["id"]), retry_in=PREPARE_RETRY
                )
                deferred.append((row["id"], row["attempt"]))
                continue
            if prepared is None:
                continue
            hook, request = prepared
            origin, environment = request.origin, row["environment_id"]
            if self._environments.full(environment):
                handed_back.append((row["id"], row["attempt"]))
                continue
            self._hook_origin[row["hook_id"]] = origin
            if self._targets.full(origin):
                handed_back.append((row["id"], row["attempt"]))
                continue
            self._targets.take(origin)
            self._environments.take(environment)
            task = asyncio.create_task(self._deliver(row, hook, request))
            self._tasks.add(task)
            self._sending.add(task)
            task.add_done_callback(functools.partial(self._finished, origin, environment))
        self._report_load()  # once for the deliveries this claim started
        await store.release_deliveries(self.db, handed_back)
        await store.release_deliveries(self.db, deferred, PREPARE_RETRY)
        return len(rows)

    def _finished(self, origin: str, environment: int, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sending.discard(task)
        self._environments.give_back(environment)
        if self._targets.give_back(origin):
            for hook_id in [h for h, o in self._hook_origin.items() if o == origin]:
                del self._hook_origin[hook_id]
        self._report_load()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery_task_failed", error=repr(task.exception()))
        self._wake.set()

    def _report_load(self) -> None:
        metrics.set_outgoing_load(
            self._targets.total(), len(self._targets.busy()), len(self._environments.busy())
        )

    def _compile(self, row: Record) -> CompiledHook | str:
        """The hook's compiled form (cached per definition), or why it cannot be compiled."""
        # The end of a rotation's grace too: the signing decision depends on it, and a change
        # of it alone (by hand, by a release that does not touch updated_at) must count.
        version = (row["hook_updated_at"], row["previous_secret_expires_at"])
        cached = self._compiled.get(row["hook_id"])
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            compiled: CompiledHook | str = CompiledHook.from_row(row, self.db.secret_box)
        except ValueError as exc:
            compiled = f"the hook definition is invalid: {exc}"
        if len(self._compiled) >= _COMPILED_LIMIT:
            self._compiled.clear()
        self._compiled[row["hook_id"]] = (version, compiled)
        return compiled

    async def _prepare(self, row: Record) -> tuple[CompiledHook, OutboundRequest] | None:
        """Render a claimed delivery; skip it (None) when it must not be sent."""
        delivery_id, attempt = row["id"], row["attempt"]
        if not row["hook_active"]:
            await store.skip_delivery(self.db, delivery_id, attempt, "the hook is inactive")
            return None
        events = row["hook_events"]
        if row["event"] not in events and run_states.STATUS_CHANGED_EVENT not in events:
            # Like `active` and the conditions, the hook's current subscription decides: an
            # edit that drops an event also stops deliveries of it still pending or retried.
            unsubscribed = f"the hook no longer subscribes to {row['event']}"
            await store.skip_delivery(self.db, delivery_id, attempt, unsubscribed)
            return None
        hook = self._compile(row)
        if isinstance(hook, str):
            await store.skip_delivery(self.db, delivery_id, attempt, hook[:MESSAGE_LIMIT])
            return None
        context = event_context(row["payload"], str(delivery_id), attempt)
        reason = hook.conditions.evaluate(context)
        if reason is not None:
            await store.skip_delivery(self.db, delivery_id, attempt, f"conditions: {reason}")
            return None
        try:
            return hook, build_request(hook, context, str(delivery_id))
        except RenderError as exc:
            await store.skip_delivery(self.db, delivery_id, attempt, str(exc)[:MESSAGE_LIMIT])
            return None

    # --- one delivery -------------------------------------------------------------------

    async def _deliver(self, row: Record, hook: CompiledHook, request: OutboundRequest) -> None:
        timeout = min(hook.timeout or self.settings.timeout, self.settings.timeout)
        sent_at = datetime.now(UTC)
        started = time.perf_counter()
        status: int | None = None
        retry_after: str | None = None
        excerpt: str | None = None
        refusal: str | None = None
        try:
            assert self._session is not None
            status, retry_after, excerpt = await send(
                self._session,
                request,
                timeout,
                self.settings.response_excerpt_bytes,
                on_answer=self._answered,
            )
            message = f"HTTP {status}"
        except TimeoutError:
            message = f"timed out after {timeout:g}s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            refusal = is_refusal(exc)
            message = refusal or failure_message(exc)
        except asyncio.CancelledError:
            # Stopped mid-request: hand it back without using up the attempt.
            with contextlib.suppress(Exception):
                await store.release_deliveries(self.db, [(row["id"], row["attempt"])])
            log.info("outgoing_delivery_interrupted", delivery_id=str(row["id"]))
            raise
        finally:
            self._sending.discard(asyncio.current_task())
            self._reading.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
        latency_ms = (time.perf_counter() - started) * 1000
        decision = self.policy.decide(
            row["attempt"], status, retry_after=retry_after, refused=refusal is not None
        )
        outcome = "refused" if refusal else (SUCCEEDED if decision.action == SUCCEEDED else FAILED)
        if decision.reason:
            message = f"{message}; {decision.reason}"
        keep_body = self.store_bodies == "all" or (
            self.store_bodies == "failures" and outcome != SUCCEEDED
        )
        signed_with = [hook.signature_header or "webhook-signature"]
        attempt = store.Attempt(
            request_id=uuid.uuid4(),
            hook_id=row["hook_id"],
            delivery_id=row["id"],
            run_id=row["run_id"],
            retry_of=row["retry_of"],
            attempt=row["attempt"],
            sent_at=sent_at,
            method=request.method,
            target_url=request.url,
            headers=redact_headers(request.headers, signed_with),
            body=request.body if keep_body else None,
            body_size=len(request.body),
            outcome=outcome,
            status_code=status or 0,
            message=recorded_message(message, request, signed_with),
            response_excerpt=scrub_sent_secrets(excerpt, request.headers, signed_with),
            latency_ms=latency_ms,
        )
        next_status = {RETRY: "pending", SUCCEEDED: "succeeded"}.get(decision.action, "failed")
        # Counted once the answer is in hand: the request went out whether or not the database
        # lets it be recorded (a stop during an outage leaves it unrecorded, and sent again).
        metrics.record_outgoing_attempt(outcome)
        recorded = await self._record(attempt, next_status, decision)
        if recorded is None:
            return  # stopped first: sent again once the lease runs out (logged)
        held, _failures, disabled = recorded
        if next_status == "failed":
            metrics.record_outgoing_failure()
        # Why it failed is what an operator reading the log needs (DNS, refused connection,
        # the SSRF guard with its hint); a delivery given up is a warning.
        (log.warning if next_status == "failed" else log.info)(
            "outgoing_delivery_attempt",
            delivery_id=str(row["id"]),
            hook_id=str(row["hook_id"]),
            target=request.origin,  # not the URL: its path or query can be a credential
            attempt=row["attempt"],
            outcome=outcome,
            status_code=status,
            error=None if outcome == SUCCEEDED else attempt.message,
            latency_ms=round(latency_ms, 1),
            next=next_status,
            retry_in=round(decision.delay, 3) if decision.action == RETRY else None,
            lease_lost=not held,
        )
        if disabled is not None:
            log.warning("outgoing_hook_disabled", hook_id=str(row["hook_id"]), reason=disabled)

    def _answered(self, response: aiohttp.ClientResponse) -> None:
        """The status of the current delivery's request arrived (see ``_reading``)."""
        task = asyncio.current_task()
        assert task is not None
        self._sending.discard(task)
        self._reading[task] = response

    async def _record(
        self, attempt: store.Attempt, next_status: str, decision: Decision
    ) -> tuple[bool, int | None, str | None] | None:
        """Record an attempt whose answer is in hand, trying again while the database is away
        for as long as it takes, past the delivery's lease too: this dispatcher claims no
        delivery it is recording, and a late record is still true (the history row; the
        delivery's state only while no other dispatcher took it, else ``lease_lost``). None
        when it was not recorded: the stop's grace ended first (logged)."""
        task = asyncio.current_task()
        assert task is not None
        pause = _RECORD_PAUSE_FIRST
        failures = 0
        first_failure = 0.0
        self._recording.add(attempt.delivery_id)
        try:
            while True:
                try:
                    recorded = await store.record_attempt(
                        self.db,
                        attempt,
                        next_status=next_status,
                        retry_in=decision.delay,
                        final=decision.action != RETRY,
                        gone=decision.disable_hook,
                        disables=self.policy.should_disable,
                    )
                except AlreadyExists as exc:
                    if "hook_requests_pkey" not in str(exc):
                        raise
                    # The request row exists: an earlier try committed, only its answer was lost.
                    recorded = True, None, None
                except DatabaseUnavailable as exc:
                    if self._cut_off:
                        _not_recorded(attempt, str(exc))
                        return None
                    if not failures:
                        first_failure = time.monotonic()
                    # A warning for the first failure only: in a long outage every delivery in
                    # flight tries every 2 s (the later tries are debug lines).
                    (log.debug if failures else log.warning)(
                        "outgoing_attempt_record_failed",
                        delivery_id=str(attempt.delivery_id),
                        attempt=attempt.attempt,
                        error=str(exc),
                        retry_in=pause,
                    )
                    failures += 1
                    self._retrying.add(task)  # from now on the stop may cut it off
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, _RECORD_PAUSE_MAX)
                    continue
                if failures:
                    log.info(
                        "outgoing_attempt_recorded_late",
                        delivery_id=str(attempt.delivery_id),
                        attempt=attempt.attempt,
                        failed_tries=failures,
                        waited_s=round(time.monotonic() - first_failure, 1),
                    )
                return recorded
        except asyncio.CancelledError:
            _not_recorded(attempt, "the dispatcher stopped before the database came back")
            raise
        finally:
            self._retrying.discard(task)
            self._recording.discard(attempt.delivery_id)


def _not_recorded(attempt: store.Attempt, error: str) -> None:
    """Log an answered attempt given up unrecorded: the delivery is sent again once its lease
    runs out (no URL: its path or query can be a credential)."""
    log.error(
        "outgoing_attempt_not_recorded",
        delivery_id=str(attempt.delivery_id),
        hook_id=str(attempt.hook_id),
        attempt=attempt.attempt,
        outcome=attempt.outcome,
        status_code=attempt.status_code or None,
        error=error,
    )
