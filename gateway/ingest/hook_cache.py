"""Per-process cache of compiled incoming hooks (DESIGN.md §3, step 1).

A warm lookup is one dict read and one clock read. A miss reads the row (one query, at most one
in flight per id, a bounded number in flight overall) and compiles it once. Unknown ids are
cached briefly too, so a flood of requests to a wrong URL costs the database one query per id
and per few seconds. Malformed ids never reach the database.

Freshness: every worker LISTENs on ``hookgate_hook_changed`` (a trigger notifies on UPDATE and
DELETE) and drops the entry at once. While that listener is down, notifications may be missed,
so the whole cache is dropped when it goes down and again when it is back, and entries loaded
meanwhile live only briefly. ``hooks.cache_ttl`` bounds staleness in any case, and an entry
whose previous secret is in its grace period expires exactly when that secret stops working.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

from gateway.config import Config
from gateway.ingest.evaluation import CompiledHook
from gateway.logs import get_logger
from gateway.storage import ingest as store
from gateway.storage.database import Database
from gateway.storage.listener import KeptListener

log = get_logger(__name__)

HOOK_CACHE = "hook_cache"  # key in app[appkeys.SERVICES]

NEGATIVE_TTL = 2.0  # seconds an unknown id is remembered
DEGRADED_TTL = 1.0  # entry lifetime while the listener is down
MAX_ENTRIES = 200_000  # at this size a miss makes room (see HookCache._evict)

_Entry = tuple[CompiledHook | None, float]  # (hook or None when unknown, monotonic expiry)


class HookCache:
    """Compiled hooks by id for one process; see the module docstring."""

    def __init__(
        self,
        db: Database,
        config: Config,
        *,
        max_concurrent_loads: int = 4,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._db = db
        self._config = config
        self._ttl = config.hooks.cache_ttl
        self._max_entries = max_entries
        # In load order (an entry that is loaded again moves to the end): the oldest go first.
        self._entries: dict[str, _Entry] = {}
        self._loading: dict[str, asyncio.Future[CompiledHook | None]] = {}
        # Bumped by every notification: a load that raced with one is not cached.
        self._generation = 0
        # Misses must not take every pool connection from the batcher.
        self._load_slots = asyncio.Semaphore(max_concurrent_loads)
        # Changes made while nobody listened were missed: start from scratch when the listener
        # goes down, and again when it is back.
        self._listener = KeptListener(
            db,
            store.HOOK_CHANGED_CHANNEL,
            self._on_change,
            name="hook_cache",
            on_listening=self.clear,
            on_lost=self.clear,
            fallback=f"entries live {DEGRADED_TTL:g} s at most",
        )

    async def get(self, raw_id: str) -> CompiledHook | None:
        """The compiled hook for a URL id, or None when it is malformed or unknown.

        Raises DatabaseUnavailable when the definition has to be read and cannot be.
        """
        entry = self._entries.get(raw_id)
        if entry is not None and entry[1] > time.monotonic():
            return entry[0]
        return await self._load(raw_id)

    def invalidate(self, hook_id: uuid.UUID | str) -> None:
        """Forget one hook now (this process); other processes learn it through NOTIFY."""
        self._generation += 1
        self._entries.pop(str(hook_id), None)

    def clear(self) -> None:
        """Forget every hook."""
        self._generation += 1
        self._entries.clear()

    def reconfigure(self, config: Config) -> None:
        """Compile with ``config`` from now on (SIGHUP reload of ``[hooks]``, ``[limits]`` or
        ``[security]``): every hook is recompiled on its next request."""
        self._config = config
        self._ttl = config.hooks.cache_ttl
        self.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, raw_id: object) -> bool:
        """Whether ``raw_id`` has an entry that has not expired (a lookup would not load it)."""
        entry = self._entries.get(raw_id) if isinstance(raw_id, str) else None
        return entry is not None and entry[1] > time.monotonic()

    async def _load(self, raw_id: str) -> CompiledHook | None:
        try:
            hook_id = uuid.UUID(raw_id)
        except ValueError:
            return None
        key = str(hook_id)
        if key != raw_id:  # another spelling (upper case, no dashes): cached under the canonical
            entry = self._entries.get(key)
            if entry is not None and entry[1] > time.monotonic():
                return entry[0]
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[CompiledHook | None] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            hook = await self._read(key, hook_id)
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved: waiters re-raise it, nobody else must log it
            else:
                future.cancel()
            raise
        finally:
            del self._loading[key]
        future.set_result(hook)
        return hook

    async def _read(self, key: str, hook_id: uuid.UUID) -> CompiledHook | None:
        generation = self._generation
        async with self._load_slots:
            row = await store.hook_definition(self._db, hook_id)
        now = time.monotonic()
        hook = (
            None
            if row is None
            else CompiledHook.from_row(row, self._config, box=self._db.secret_box)
        )
        if hook is not None and hook.definition_error:
            log.error("hook_definition_invalid", hook_id=key, problem=hook.definition_error)
        if generation != self._generation:
            return hook  # changed while we read it: use this answer once, don't keep it
        if hook is None:
            ttl = min(NEGATIVE_TTL, self._ttl)
        else:
            ttl = self._ttl if self.listening else min(DEGRADED_TTL, self._ttl)
            if hook.previous_secret_expires_in is not None:
                ttl = min(ttl, hook.previous_secret_expires_in)
        if ttl > 0:
            self._entries.pop(key, None)
            if len(self._entries) >= self._max_entries:
                self._evict(now)
            self._entries[key] = (hook, now + ttl)
        return hook

    def _evict(self, now: float) -> None:
        """Make room for at least a tenth of ``max_entries`` more loads, so that a full cache
        scans itself once per that many misses, not on every miss: drop the expired entries,
        then the unknown ids, then the entries loaded longest ago."""
        room = max(1, self._max_entries // 10)
        keep = self._max_entries - room
        expired = [k for k, (_, expires) in self._entries.items() if expires <= now]
        for k in expired:
            del self._entries[k]
        if len(self._entries) > keep:
            for k in [k for k, (hook, _) in self._entries.items() if hook is None]:
                del self._entries[k]
        excess = len(self._entries) - keep
        if excess > 0:
            for k in list(itertools.islice(self._entries, excess)):
                del self._entries[k]
        log.info("hook_cache_evicted", expired=len(expired), kept=len(self._entries))

    # -- invalidation ---------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether notifications reach this cache now (else entries live only briefly)."""
        return self._listener.listening

    async def start(self) -> None:
        """Connect the listener (first attempt now), then keep it connected in the background."""
        await self._listener.start()

    async def close(self) -> None:
        """Stop listening."""
        await self._listener.close()

    def _on_change(self, hook_id: str) -> None:
        self.invalidate(hook_id)
        log.debug("hook_cache_invalidated", hook_id=hook_id)
