"""README.md stays true to the code: configuration reference, commands, make targets, env vars."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway import cli
from gateway.config import Config
from gateway.config_reference import END, START, current_block, key_comments, render

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CONFIG_TOML = (ROOT / "config.toml").read_text()
# Variables the gateway reads besides GATEWAY_<SECTION>_<KEY> overrides.
OTHER_VARIABLES = {"GATEWAY_CONFIG", "GATEWAY_ADMIN_EMAIL", "GATEWAY_ADMIN_PASSWORD"}


def _config_keys() -> list[tuple[str, str]]:
    return [
        (section.name, key.name)
        for section in dataclasses.fields(Config)
        if section.name != "source"
        for key in dataclasses.fields(getattr(Config(), section.name))
    ]


def test_the_configuration_reference_is_up_to_date() -> None:
    block = current_block(README)
    assert block is not None, f"README.md lacks the markers {START} / {END}"
    assert block == render(CONFIG_TOML), "README.md's configuration reference is stale: make docs"


@pytest.mark.parametrize(("section", "key"), _config_keys())
def test_every_config_key_has_a_row_with_its_env_var(section: str, key: str) -> None:
    block = current_block(README) or ""
    table = block.split(f"### `[{section}]`", 1)[-1].split("### ", 1)[0]
    row = next((line for line in table.splitlines() if line.startswith(f"| `{key}` |")), None)
    assert row is not None, f"README has no row for {section}.{key}"
    assert f"`GATEWAY_{section.upper()}_{key.upper()}`" in row
    assert key_comments(CONFIG_TOML).get((section, key)), f"{section}.{key} has no comment"


def test_the_generator_takes_the_comment_of_a_key_group() -> None:
    comments = key_comments("[a]\n# Shared.\nx = 1\ny = 2\n\n# Own.\nz = 3\n")
    assert comments == {("a", "x"): "Shared.", ("a", "y"): "Shared.", ("a", "z"): "Own."}


@pytest.mark.parametrize(
    "heading",
    [
        "Quick start",
        "API overview",
        "Configuration reference",
        "Using an external PostgreSQL",
        "Commands",
        "Operations",
        "Docker",
        "Development",
    ],
)
def test_the_sections_exist(heading: str) -> None:
    assert re.search(rf"^## {re.escape(heading)}$", README, re.MULTILINE)


def test_the_quick_start_is_the_two_commands() -> None:
    section = README.split("## Quick start", 1)[1]
    first_block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == ["make run", "make test"]


def test_every_make_target_mentioned_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))
    mentioned = set(re.findall(r"`(?:[A-Z_]+=\S+ )*make ([a-z][a-z-]*)", README))
    mentioned |= set(re.findall(r"^make ([a-z][a-z-]*)", README, re.MULTILINE))
    assert {"run", "test", "lint", "migrate", "docs"} <= mentioned
    assert mentioned <= targets, f"README mentions missing make targets: {mentioned - targets}"


def test_every_gateway_variable_mentioned_is_read() -> None:
    overrides = {f"GATEWAY_{s.upper()}_{k.upper()}" for s, k in _config_keys()}
    mentioned = set(re.findall(r"\bGATEWAY_[A-Z_]*[A-Z]\b", README))
    # Named as what the gateway leaves alone (Kubernetes' service variables).
    not_ours = {"GATEWAY_SERVICE_HOST", "GATEWAY_PORT"}
    unknown = mentioned - overrides - OTHER_VARIABLES - {"GATEWAY_SECTION_KEY"} - not_ours
    assert not unknown, f"README mentions variables nothing reads: {sorted(unknown)}"


def test_the_documented_commands_exist() -> None:
    parser = cli._parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in ("serve", "migrate", "check-config", "user"):
        assert name in commands
        assert f"`gateway {name}" in README
