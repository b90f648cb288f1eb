"""Which command lines make SIGHUP harmless before the command line is imported."""

from __future__ import annotations

import pytest

from gateway.launch import command_of


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["serve"], "serve"),
        (["--config", "prod.toml", "serve"], "serve"),
        (["--config=prod.toml", "dispatch"], "dispatch"),
        (["--conf", "serve.toml", "migrate"], "migrate"),  # argparse's abbreviation
        (["--config", "/etc/hookgate/config.toml", "serve", "--worker"], "serve"),
        (["executor", "--pipeline", "1", "--", "hugo", "serve"], "executor"),
        (["user", "create", "--email", "serve@example.com"], "user"),
        (["--", "serve"], None),
        (["--config", "serve"], None),  # the value of --config, no command
        ([], None),
        (["-h"], None),
    ],
)
def test_the_command_is_the_first_word_that_is_not_an_option(
    argv: list[str], command: str | None
) -> None:
    assert command_of(argv) == command
