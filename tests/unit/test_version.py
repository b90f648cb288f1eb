"""`gateway --version`, the outgoing User-Agent and the OpenAPI document: the installed package's
version, else the one pyproject.toml names."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from gateway import cli, version
from gateway.dispatcher.outbound import CompiledHook, build_request, event_context
from gateway.openapi import openapi_document

ROOT = Path(__file__).resolve().parents[2]
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _printed_version(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert metadata.version("hookgate") == PROJECT_VERSION  # the test venv's editable install
    assert _printed_version(capsys) == f"gateway {PROJECT_VERSION}\n"


def _not_installed(name: str) -> str:
    raise metadata.PackageNotFoundError(name)


def test_a_checkout_that_is_not_installed_reads_pyproject(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(metadata, "version", _not_installed)
    assert _printed_version(capsys) == f"gateway {PROJECT_VERSION}\n"
    monkeypatch.setattr(version, "PYPROJECT", tmp_path / "missing.toml")
    assert _printed_version(capsys) == "gateway unknown\n"


def test_outgoing_requests_name_the_running_release() -> None:
    hook = CompiledHook.from_row(
        {
            "target_url": "https://ci.example/notify",
            "trigger_when": {"events": ["run.failed"], "conditions": []},
            "settings": {},
            "requires_secret": False,
            "secret": None,
        }
    )
    request = build_request(hook, event_context({"event": "run.failed"}, "d1", 1), "d1")
    assert request.headers["User-Agent"] == f"hookgate-webhooks/{PROJECT_VERSION}"


def test_the_api_document_names_the_running_release() -> None:
    assert openapi_document()["info"]["version"] == PROJECT_VERSION
