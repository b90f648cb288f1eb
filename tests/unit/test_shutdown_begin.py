"""gateway.shutdown.Shutdown: callbacks registered before and after stopping began."""

from __future__ import annotations

from gateway.shutdown import Shutdown


async def test_a_callback_registered_after_the_stop_began_runs_at_once() -> None:
    """A dispatcher that registers after the stop began must still be told to stop claiming."""
    shutdown = Shutdown()
    calls: list[str] = []
    shutdown.on_begin(lambda: calls.append("before"))
    assert calls == []
    shutdown.begin(5.0)
    assert calls == ["before"]
    shutdown.on_begin(lambda: calls.append("after"))  # e.g. a dispatcher started late
    assert calls == ["before", "after"]
    shutdown.begin(5.0)  # a second begin runs nothing again
    assert calls == ["before", "after"]
    assert 0 < shutdown.remaining(99.0) <= 5.0
