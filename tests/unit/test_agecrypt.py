"""agecrypt's checks that run before age does (the age binary itself: tests/interop)."""

from __future__ import annotations

import pytest

from fspl_gateway.core import agecrypt

X25519 = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
ED25519 = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN "
           "alice@rust")


@pytest.mark.parametrize("r", [X25519, f"  {X25519}\n", ED25519, "ssh-rsa AAAAB3NzaC1yc2E=",
                               "age1yubikey1qwt50d05nh5vutpdzmlg5wn80xq5negm4uj9ghv0snvdd3yysf5yw3rhl3t"])
def test_recipients_age_accepts(r: str) -> None:
    assert agecrypt.check_recipient(r) == r.strip()


@pytest.mark.parametrize("r", ["", "age1", "AGE1QL3Z7HJY54PW3HYWW5AYYFG7ZQGVC7W3J2ELW8ZMRJ2KG5SFN9AQMCAC8P",
                               "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8",
                               "ssh-dss AAAAB3NzaC1kc3M=", "ssh-ed25519", "-r x",
                               "AGE-SECRET-KEY-1QQQ"])
def test_recipients_age_refuses(r: str) -> None:
    with pytest.raises(agecrypt.RecipientError, match="not an age recipient") as ei:
        agecrypt.check_recipient(r)
    assert ei.value.exit_code == 2


def test_is_encrypted() -> None:
    assert agecrypt.is_encrypted(b"age-encryption.org/v1\n-> X25519 abc")
    assert agecrypt.is_encrypted(b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl")
    assert not agecrypt.is_encrypted(b"*FILESPOOLER\x00\x01")
    assert not agecrypt.is_encrypted(b"age-encryption.org/v2\n")


def test_missing_binary_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(agecrypt.AgeError, match=r"^the age binary is not installed \(Debian/Ubuntu: "
                                                r"apt install age\)$"):
        agecrypt.encrypt_argv([X25519])
