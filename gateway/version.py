"""The release this gateway runs: for `gateway --version` and the outgoing User-Agent."""

from __future__ import annotations

from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def package_version() -> str:
    """The installed hookgate's version; from a source checkout that is not installed, the
    version its pyproject.toml names ("unknown" when neither can be read)."""
    from importlib import metadata

    try:
        return metadata.version("hookgate")
    except metadata.PackageNotFoundError:
        pass
    import tomllib

    try:
        version = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"
    return str(version)
