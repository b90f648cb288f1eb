"""Helpers for the operations tests (issue 8): live reloads, raw rows, signed calls, metrics."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway import appkeys
from gateway.config import Config
from gateway.reload import CONFIG_HOLDER, LIVE_KEYS, ConfigHolder, changed_keys
from tests.integration.ingest_helpers import PR_OPENED, github_headers, hook_path


def holder_of(client: Any) -> ConfigHolder:
    """The config holder of the test client's application."""
    holder: ConfigHolder = client.app[appkeys.SERVICES][CONFIG_HOLDER]
    return holder


def reload_to(client: Any, new: Config) -> list[str]:
    """Apply ``new`` as a SIGHUP reload would (every changed key must be live); the keys."""
    holder = holder_of(client)
    changed = changed_keys(holder.current, new)
    assert changed and set(changed) <= LIVE_KEYS, changed
    assert holder.apply(new, frozenset(changed)) == []
    return changed


def with_section(config: Config, section: str, **values: Any) -> Config:
    """``config`` with some keys of one section replaced."""
    return replace(config, **{section: replace(getattr(config, section), **values)})


async def call_hook(
    client: Any, hook: dict[str, Any], secret: str | None = None, **headers: str
) -> Any:
    """POST the GitHub fixture to the hook, signed with ``secret`` (default: the hook's)."""
    signed = github_headers(secret or hook["secret"], PR_OPENED, **headers)
    return await client.post(hook_path(hook), data=PR_OPENED, headers=signed)


async def requests_of(client: Any, headers: dict[str, str], hook: dict[str, Any]) -> list[Any]:
    """The hook's recorded requests (API JSON), newest first."""
    response = await client.get(f"/hooks/incoming/{hook['id']}/requests", headers=headers)
    assert response.status == 200, await response.text()
    rows: list[Any] = await response.json()
    return rows


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition text."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics, parsed."""
    response = await client.get("/metrics")
    assert response.status == 200
    return parse_metrics(await response.text())


def sample(parsed: dict[Any, float], name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)
