"""Hook secrets at rest: key lines, the key file, AES-GCM sealing, rotation helpers, config."""

from __future__ import annotations

import base64
import os
import stat
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, SecurityConfig, build_config
from gateway.security.secret_box import (
    SecretBox,
    SecretBoxError,
    is_encrypted,
    key_id_of,
    open_secret_box,
)
from gateway.security.secret_keys import (
    ensure_key_file,
    key_line_problems,
    load_keys,
    new_key_line,
    parse_key_line,
    parse_key_lines,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
LINE_A = "a:" + base64.b64encode(KEY_A).decode()
LINE_B = "b:" + base64.urlsafe_b64encode(KEY_B).decode().rstrip("=")


def box(*ids: str) -> SecretBox:
    keys = {"a": KEY_A, "b": KEY_B}
    return SecretBox({i: keys[i] for i in ids}, ids[0] if ids else None)


# --- key lines ---------------------------------------------------------------------------


def test_parse_key_line_standard_and_urlsafe_unpadded() -> None:
    assert parse_key_line(LINE_A).key == KEY_A
    assert parse_key_line(f"  {LINE_B}  ").key == KEY_B
    assert parse_key_line(LINE_B).key_id == "b"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("nocolon", "must look like 'key_id:base64-of-32-bytes'"),
        (":" + base64.b64encode(KEY_A).decode(), "key id must be"),
        ("bad id:" + base64.b64encode(KEY_A).decode(), "key id must be"),
        ("k:not base64!", "not valid base64"),
        ("k:" + base64.b64encode(b"short").decode(), "must decode to 32 bytes, got 5"),
    ],
)
def test_parse_key_line_errors(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_key_line(line)
    assert base64.b64encode(KEY_A).decode() not in str(info.value)


def test_key_line_problems_never_echo_material() -> None:
    secret_part = base64.b64encode(b"x" * 31).decode()
    problems = key_line_problems([LINE_A, f"k:{secret_part}", LINE_A], "security.secret_keys")
    assert problems == [
        "security.secret_keys entry 2 is invalid: key 'k': must decode to 32 bytes, got 31",
        "security.secret_keys entry 3: key id 'a' appears twice",
    ]
    assert not any(secret_part in p for p in problems)


def test_parse_key_lines_skips_comments_and_rejects_duplicates() -> None:
    assert [k.key_id for k in parse_key_lines(["# c", "", LINE_A, LINE_B])] == ["a", "b"]
    with pytest.raises(ValueError, match="entry 2: key id 'a' appears twice"):
        parse_key_lines([LINE_A, LINE_A])


def test_new_key_line_round_trips_and_is_random() -> None:
    line = new_key_line()
    key = parse_key_line(line)
    assert len(key.key) == 32 and key.key_id[:8].isdigit()
    assert parse_key_line(new_key_line("custom_1")).key_id == "custom_1"
    assert new_key_line("x") != new_key_line("x")
    with pytest.raises(ValueError):
        new_key_line("not valid")


def test_key_repr_hides_material() -> None:
    assert repr(KEY_A) not in repr(parse_key_line(LINE_A))
    assert "key=" not in repr(parse_key_line(LINE_A))


# --- key file ----------------------------------------------------------------------------


def test_key_file_created_once_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secret-keys"
    keys, created = ensure_key_file(path)
    assert created and len(keys) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = ensure_key_file(path)
    assert not created_again and again == keys
    assert [p.name for p in path.parent.iterdir()] == ["secret-keys"]  # no temporary left


def test_concurrent_creators_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "secret-keys"
    results: list[tuple[object, bool]] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(ensure_key_file(path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({keys for keys, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_load_keys_sources(tmp_path: Path) -> None:
    assert load_keys((), "").origin == "none"
    assert load_keys((), "").primary is None
    path = tmp_path / "keys"
    generated = load_keys((), str(path))
    assert generated.origin == "generated" and generated.path == str(path)
    assert load_keys((), str(path)).origin == "file"
    # Configured keys win; the file's key stays as a decrypt-only key.
    configured = load_keys((LINE_B,), str(path))
    assert configured.origin == "config"
    assert [k.key_id for k in configured.keys] == ["b", generated.primary]
    # ...and a configured set never creates a file.
    assert load_keys((LINE_B,), str(tmp_path / "absent")).keys == (parse_key_line(LINE_B),)
    assert not (tmp_path / "absent").exists()


def test_key_file_with_bad_content_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no key"):
        load_keys((), str(path))
    path.write_text("k:zz\n")
    with pytest.raises(ValueError, match="entry 1"):
        load_keys((), str(path))


def test_a_key_file_that_cannot_be_read_or_created_is_a_one_line_error(tmp_path: Path) -> None:
    """A path that is a directory, or under a file: a configuration error naming it, which the
    command line reports in one line (status 2), not an OSError's traceback."""
    directory = tmp_path / "keys"
    directory.mkdir()
    with pytest.raises(ValueError) as caught:
        load_keys((), str(directory))
    assert (
        str(caught.value) == f"security.key_file {str(directory)!r} cannot be read: Is a directory"
    )
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with pytest.raises(ValueError) as caught:
        load_keys((), str(not_a_directory / "secret-keys"))
    assert str(caught.value).startswith(
        f"security.key_file {str(not_a_directory / 'secret-keys')!r} cannot be created: "
    )


def test_a_missing_key_file_is_an_error_where_keys_must_not_be_created(tmp_path: Path) -> None:
    """Instances sharing a database set create_key_file = false: a host missing the shared keys
    stops instead of sealing new secrets with a key no other host has."""
    path = tmp_path / "secret-keys"
    security = SecurityConfig(key_file=str(path), create_key_file=False)
    with pytest.raises(ValueError) as caught:
        open_secret_box(security)
    assert str(caught.value) == (
        f"security.key_file {str(path)!r} does not exist and security.create_key_file = false: "
        "set security.secret_keys (GATEWAY_SECURITY_SECRET_KEYS) or put the shared key file there"
    )
    assert not path.exists()
    path.write_text(new_key_line("shared") + "\n")
    assert open_secret_box(security).key_ids == ("shared",)
    keys = SecurityConfig(secret_keys=(new_key_line("given"),), key_file=str(tmp_path / "none"))
    assert open_secret_box(replace(keys, create_key_file=False)).key_ids == ("given",)


def test_open_secret_box_from_config(tmp_path: Path) -> None:
    opened = open_secret_box(SecurityConfig(secret_keys=(LINE_A, LINE_B), key_file=""))
    assert opened.primary_key_id == "a" and opened.key_ids == ("a", "b")
    plain = open_secret_box(SecurityConfig(key_file=""))
    assert not plain.enabled
    generated = open_secret_box(SecurityConfig(key_file=str(tmp_path / "k")))
    assert generated.enabled and (tmp_path / "k").exists()


# --- sealing -----------------------------------------------------------------------------


def test_encrypt_decrypt_round_trip_and_format() -> None:
    sealed = box("a").encrypt("s3cr3t-ü")
    assert sealed.startswith("enc:v1:a:") and "s3cr3t" not in sealed
    assert is_encrypted(sealed) and key_id_of(sealed) == "a"
    assert box("a").decrypt(sealed) == "s3cr3t-ü"
    assert box("a").encrypt("x") != box("a").encrypt("x")  # random nonce


def test_any_known_key_decrypts_primary_encrypts() -> None:
    old = box("a").encrypt("old")
    rotated = box("b", "a")
    assert rotated.decrypt(old) == "old"
    assert key_id_of(rotated.encrypt("new")) == "b"
    assert rotated.needs_reencrypt(old)
    assert not rotated.needs_reencrypt(rotated.encrypt("new"))
    assert key_id_of(rotated.reencrypt(old)) == "b"
    assert rotated.decrypt(rotated.reencrypt(old)) == "old"


def test_plaintext_legacy_values_pass_through() -> None:
    legacy = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    assert box("a").decrypt(legacy) == legacy
    assert box("a").needs_reencrypt(legacy)
    assert not box("a").needs_reencrypt(None) and not box("a").needs_reencrypt("")
    assert key_id_of(legacy) is None and not is_encrypted(legacy)


def test_disabled_box_stores_plaintext() -> None:
    off = SecretBox({}, None)
    assert not off.enabled and off.encrypt("plain") == "plain" and off.decrypt("plain") == "plain"
    assert not off.needs_reencrypt("plain")
    with pytest.raises(SecretBoxError, match="key 'a', which is not configured"):
        off.decrypt(box("a").encrypt("x"))


def test_unknown_key_and_tampering_are_errors_without_material() -> None:
    sealed = box("a").encrypt("top-secret")
    with pytest.raises(SecretBoxError, match="key 'a', which is not configured"):
        box("b").decrypt(sealed)
    head, _, body = sealed.rpartition(":")
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    for bad in (
        f"{head}:{flipped}",  # ciphertext/tag changed
        sealed.replace("enc:v1:a:", "enc:v1:b:"),  # key id relabelled (authenticated header)
        f"{head}:",  # nothing sealed
        f"{head}:!!!",  # not base64
    ):
        with pytest.raises(SecretBoxError) as info:
            box("a", "b").decrypt(bad)
        assert "top-secret" not in str(info.value)
    with pytest.raises(SecretBoxError, match="unsupported format version"):
        box("a").decrypt("enc:v9:a:xxxx")


def test_open_row_decrypts_present_columns() -> None:
    b = box("a")
    row = {"id": 1, "secret": b.encrypt("new"), "previous_secret": None, "name": "n"}
    assert b.open_row(row) == {"id": 1, "secret": "new", "previous_secret": None, "name": "n"}
    assert b.open_row({"secret": "legacy"}) == {"secret": "legacy"}


def test_box_validation_and_repr() -> None:
    with pytest.raises(ValueError, match="not among the keys"):
        SecretBox({"a": KEY_A}, "b")
    with pytest.raises(ValueError, match="must be 32 bytes"):
        SecretBox({"a": b"short"}, "a")
    with pytest.raises(ValueError, match="invalid key id"):
        SecretBox({"a b": KEY_A}, "a b")
    with pytest.raises(ValueError, match="primary key id is required"):
        SecretBox({"a": KEY_A}, None)
    assert repr(KEY_A) not in repr(box("a")) and "primary='a'" in repr(box("a"))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_text(text: str) -> None:
    sealed = box("a", "b").encrypt(text.encode("utf-8", "replace").decode("utf-8"))
    assert box("b", "a").decrypt(sealed) == text.encode("utf-8", "replace").decode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_decrypt_raises_only_secret_box_error(value: str) -> None:
    try:
        result = box("a").decrypt("enc:v1:a:" + value)
    except SecretBoxError:
        return
    assert isinstance(result, str)


# --- configuration -----------------------------------------------------------------------


def test_config_security_and_limits_defaults() -> None:
    config = build_config({}, {})
    assert config.security.secret_keys == () and config.security.key_file == "var/secret-keys"
    assert config.limits.default_rate_per_second == 0 and config.limits.default_burst == 0


def test_config_keys_from_environment_and_masked_errors() -> None:
    env = {"GATEWAY_SECURITY_SECRET_KEYS": f"{LINE_B},{LINE_A}"}
    config = build_config({}, env)
    assert [parse_key_line(k).key_id for k in config.security.secret_keys] == ["b", "a"]
    assert LINE_A not in repr(config)
    with pytest.raises(ConfigError) as info:
        build_config({"security": {"secret_keys": ["k:" + "A" * 10]}}, {})
    assert info.value.problems == [
        "security.secret_keys entry 1 is invalid: key 'k': must decode to 32 bytes, got 7"
    ]
    with pytest.raises(ConfigError) as info:
        build_config({"security": {"secret_keys": LINE_A}}, {})  # a string, not a list
    assert LINE_A not in str(info.value) and "'***'" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"default_rate_per_second": -1}, "limits.default_rate_per_second = -1 is invalid"),
        ({"default_burst": 1.5}, "limits.default_burst = 1.5 is invalid"),
        ({"default_rate_per_second": float("nan")}, "must be a finite number"),
        ({"default_rate_per_second": float("inf")}, "must be a finite number"),
    ],
)
def test_config_limits_validation(raw: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"limits": raw}, {})
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_a_key_id_in_both_the_config_and_the_key_file_with_other_material_is_an_error(
    tmp_path: Path,
) -> None:
    """The file's key was dropped without a word: what it had sealed no longer opened (and
    check-config said OK). The same key in both places is fine."""
    path = tmp_path / "keys"
    path.write_text(LINE_A + "\n")
    other_a = "a:" + base64.b64encode(KEY_B).decode()
    with pytest.raises(ValueError, match="both have a key 'a', with different material"):
        load_keys((other_a,), str(path))
    assert [k.key_id for k in load_keys((LINE_A, LINE_B), str(path)).keys] == ["a", "b"]
