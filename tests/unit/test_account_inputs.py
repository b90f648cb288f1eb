"""Names and emails that people read and choose from: two that look the same must not differ by
a character nobody sees (a zero-width space, a tab, a bidi override)."""

from __future__ import annotations

import pytest

from gateway.accounts import plausible_email
from gateway.management.bodies import Fields


@pytest.mark.parametrize(
    "email",
    [
        "bob@example.com",
        "a.b+tag@sub.example.org",
        "admin@localhost",
        "\uff42\uff4f\uff42@example.com",  # fullwidth: visible, if odd; not refused
    ],
)
def test_plausible_emails(email: str) -> None:
    assert plausible_email(email)


@pytest.mark.parametrize(
    "email",
    [
        "a@b@c",
        "a b@example.com",
        "x\n\t@y",
        "bob@exam\u200bple.com",  # zero-width space
        "@example.com",
        "bob@",
        "bob",
        "a" * 250 + "@b.cd",
    ],
)
def test_implausible_emails(email: str) -> None:
    assert not plausible_email(email)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("a\u200bb", "200B"),
        ("a\tb", "0009"),
        ("prod\nuction", "000A"),
        ("\u202eodorp", "202E"),
        ("a\u2060b", "2060"),  # word joiner
        ("\ufeffprod", "FEFF"),  # byte order mark
        ("a\u2067b", "2067"),  # right-to-left isolate ("Trojan Source")
        ("a\u200eb", "200E"),  # left-to-right mark
        ("a\u061cb", "061C"),  # Arabic letter mark
        ("a\u180eb", "180E"),  # Mongolian vowel separator
    ],
)
def test_a_name_with_a_hidden_character_is_refused_naming_it(name: str, code: str) -> None:
    fields = Fields({"name": name}, ("name",))
    fields.name("name", max_length=100)
    assert fields.errors == {
        "name": [f"must not contain control or invisible characters (U+{code})"]
    }


@pytest.mark.parametrize(
    "name",
    [
        "production",
        "Déploiement · API",
        "café",
        "本番",
        "\u0627\u0633\u062a\u0642\u0631\u0627\u0631\u200c\u0646\u0647\u0627\u06cc\u06cc",
        "team \U0001f469\u200d\U0001f4bb",  # an emoji ZWJ sequence: woman technologist
        "soft\u00adhyphen",
    ],
)
def test_visible_names_pass(name: str) -> None:
    fields = Fields({"name": f"  {name} "}, ("name",))
    assert fields.name("name", max_length=100) == name
    assert fields.errors == {}
