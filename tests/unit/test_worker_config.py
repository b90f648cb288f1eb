"""The configuration a supervisor hands its workers: the one in force, not the file as it is."""

from __future__ import annotations

from gateway.config import build_config
from gateway.supervisor import (
    WORKER_CONFIG_ENV,
    config_from_snapshot,
    config_snapshot,
    worker_environment,
)


def test_a_snapshot_gives_back_the_same_configuration_overrides_included() -> None:
    raw = {
        "server": {"port": 9100, "workers": 3, "trusted_proxies": ["10.0.0.0/8"]},
        "outgoing": {"retry_schedule": [1, 2.5, 30]},
        "hooks": {"store_bodies": "failures"},
    }
    env = {"GATEWAY_DATABASE_DSN": "postgresql://app:pw@db:5432/app", "GATEWAY_LOG_LEVEL": "debug"}
    config = build_config(raw, env, source="/etc/hookgate/config.toml")
    assert config_from_snapshot(config_snapshot(config)) == config


def test_a_worker_of_an_embedded_server_gets_its_dsn_in_the_snapshot() -> None:
    config = build_config({}, {}, source="config.toml")
    env = worker_environment("postgresql://postgres@/postgres?host=/tmp/s", 0, None, config)
    handed = config_from_snapshot(env[WORKER_CONFIG_ENV])
    assert handed.database.dsn == "postgresql://postgres@/postgres?host=/tmp/s"
    assert handed.server == config.server
