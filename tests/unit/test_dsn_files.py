"""Files a DSN names (sslrootcert, sslcert, ...) are checked before connecting: the driver
would report a missing one as a bare "[Errno 2] No such file or directory", which the gateway
could only call an outage. A configuration error is named, with the parameter and the path."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.exceptions import DatabaseMisconfigured, DatabaseUnavailable
from gateway.storage.database import Database, translate_error, unreadable_dsn_files


@pytest.fixture(autouse=True)
def _no_libpq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver reads PGSSLMODE when the DSN names no sslmode, and so does the check: a
    developer's environment must not decide these tests."""
    monkeypatch.delenv("PGSSLMODE", raising=False)


def write_ca_certificate(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hookgate test CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def dsn(query: str) -> str:
    return f"postgresql://app:hunter2@db:5432/app?{query}"


def test_a_readable_certificate_passes(tmp_path: Path) -> None:
    ca = write_ca_certificate(tmp_path / "root.crt")
    assert unreadable_dsn_files(dsn(f"sslmode=verify-full&sslrootcert={ca}")) is None
    assert unreadable_dsn_files(dsn(f"sslmode=require&sslcert={ca}")) is None


def test_a_missing_root_certificate_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "root.crt"
    assert unreadable_dsn_files(dsn(f"sslmode=verify-full&sslrootcert={missing}")) == (
        f"database.dsn parameter 'sslrootcert' names '{missing}': no such file or directory"
    )


def test_a_file_that_holds_no_certificate_is_named(tmp_path: Path) -> None:
    not_pem = tmp_path / "root.crt"
    not_pem.write_text("this is not a certificate\n")
    problem = unreadable_dsn_files(dsn(f"sslmode=verify-ca&sslrootcert={not_pem}&sslcrl=x"))
    assert problem is not None
    assert problem.startswith(
        f"database.dsn parameter 'sslrootcert' names '{not_pem}', which holds no PEM "
        "certificate or revocation list ("
    )


def test_a_directory_or_an_unreadable_file_is_named(tmp_path: Path) -> None:
    assert unreadable_dsn_files(dsn(f"sslmode=require&sslcert={tmp_path}")) == (
        f"database.dsn parameter 'sslcert' names '{tmp_path}': is a directory"
    )
    if os.geteuid() == 0:
        return  # root reads files whatever their mode; the directory case covers the branch
    locked = write_ca_certificate(tmp_path / "locked.crt")
    locked.chmod(0)
    assert unreadable_dsn_files(dsn(f"sslmode=require&sslkey={locked}")) == (
        f"database.dsn parameter 'sslkey' names '{locked}': permission denied"
    )


@pytest.mark.parametrize(
    "query",
    [
        "sslmode=disable&sslrootcert=/nowhere/root.crt&sslcert=/nowhere/client.crt",
        "sslmode=prefer&sslrootcert=/nowhere/root.crt",  # not verified: never read
        "sslrootcert=/nowhere/root.crt",  # the driver's default mode is prefer
        "sslmode=allow&sslcrl=/nowhere/root.crl",
    ],
)
def test_files_the_driver_would_not_read_are_not_checked(query: str) -> None:
    assert unreadable_dsn_files(dsn(query)) is None


async def test_the_drivers_own_configuration_errors_are_not_an_outage() -> None:
    # Config validation refuses these values; a DSN that reaches the driver anyway (a library
    # caller) still gets a configuration error, raised before any connection is attempted.
    with pytest.raises(DatabaseMisconfigured) as caught:
        await Database.connect("postgresql://app:hunter2@db.invalid:5432/app?sslmode=bogus")
    assert str(caught.value) == (
        "database.dsn cannot be used: ClientConfigurationError: `sslmode` parameter must be "
        "one of: disable, allow, prefer, require, verify-ca, verify-full "
        "(connecting to db.invalid:5432/app)"
    )


def test_on_a_running_pool_the_same_error_is_an_outage() -> None:
    # A pool opening a connection later (a certificate directory gone) answers 503 and backs
    # off like any outage; only start-up treats it as configuration.
    error = asyncpg.ClientConfigurationError("root certificate file does not exist")
    assert isinstance(translate_error(error), DatabaseUnavailable)


def test_the_drivers_underscore_spelling_of_sslmode_is_read_too(tmp_path: Path) -> None:
    missing = tmp_path / "root.crt"
    assert unreadable_dsn_files(dsn(f"sslmode=verify_full&sslrootcert={missing}")) == (
        f"database.dsn parameter 'sslrootcert' names '{missing}': no such file or directory"
    )


def test_a_unix_socket_dsn_is_checked_too(tmp_path: Path) -> None:
    # asyncpg reads the files while parsing the DSN, before it knows the host is a socket
    # (tests/acceptance/test_cli.py runs it against the embedded server's socket).
    socket_dsn = (
        f"postgresql://app@/app?host=/run/postgresql&sslmode=verify-full&sslrootcert={tmp_path}/x"
    )
    assert unreadable_dsn_files(socket_dsn) is not None


def test_pgsslmode_decides_when_the_dsn_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "root.crt"
    monkeypatch.setenv("PGSSLMODE", "verify-ca")
    assert unreadable_dsn_files(dsn(f"sslrootcert={missing}")) is not None
    monkeypatch.setenv("PGSSLMODE", "disable")
    assert unreadable_dsn_files(dsn(f"sslrootcert={missing}")) is None


def test_the_mode_from_which_each_file_is_read(tmp_path: Path) -> None:
    """As asyncpg reads them: the root certificate and revocation list from require, the
    client certificate and key from allow (so also at the default, prefer)."""
    missing = tmp_path / "nowhere"
    assert unreadable_dsn_files(dsn(f"sslmode=require&sslrootcert={missing}")) is not None
    assert unreadable_dsn_files(dsn(f"sslmode=prefer&sslrootcert={missing}")) is None
    assert unreadable_dsn_files(dsn(f"sslcert={missing}")) is not None  # default prefer
    assert unreadable_dsn_files(dsn(f"sslmode=allow&sslkey={missing}")) is not None
    assert unreadable_dsn_files(dsn(f"sslmode=disable&sslkey={missing}")) is None
    ca = write_ca_certificate(tmp_path / "root.crt")
    not_pem = tmp_path / "root.crl"
    not_pem.write_text("not a list\n")
    problem = unreadable_dsn_files(dsn(f"sslmode=verify-ca&sslrootcert={ca}&sslcrl={not_pem}"))
    assert problem is not None and problem.startswith("database.dsn parameter 'sslcrl'")
