"""deploy/hookgate.service, the systemd unit the README offers: what it promises about stopping
and reloading holds for the gateway as configured by default."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from gateway.cli import _parser
from gateway.config import ServerConfig
from gateway.server import CANCEL_GRACE
from gateway.shutdown import KILL_GRACE
from gateway.supervisor import EXIT_USAGE

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "hookgate.service"


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
    return parser["Service"]


def test_only_the_main_process_gets_sigterm_and_sighup_reloads() -> None:
    service = _service()
    # The supervisor of [server] workers stops its workers itself, in order.
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert shlex.split(service["ExecReload"]) == ["/bin/kill", "-HUP", "$MAINPID"]


def test_the_stop_timeout_outlasts_a_graceful_stop_with_the_default_settings() -> None:
    # The drain (shutdown_timeout), the cancellation of what is left, and the clean-up the
    # supervisor allows a worker (KILL_GRACE): systemd must not SIGKILL before that.
    server = ServerConfig()
    needed = server.drain_delay + server.shutdown_timeout + CANCEL_GRACE + KILL_GRACE
    assert float(_service()["TimeoutStopSec"]) > needed


def test_exec_start_is_a_command_the_gateway_accepts() -> None:
    argv = shlex.split(_service()["ExecStart"])
    assert Path(argv[0]).name == "gateway"
    args = _parser().parse_args(argv[1:])
    assert args.command == "serve" and args.config == "/etc/hookgate/config.toml"


def test_a_configuration_error_is_not_restarted_in_a_loop() -> None:
    # on-failure restarts any other non-zero status (an unreachable database, a dead embedded
    # server); a bad configuration exits with EXIT_USAGE and stays bad until it is edited.
    service = _service()
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"].split() == [str(EXIT_USAGE)]
