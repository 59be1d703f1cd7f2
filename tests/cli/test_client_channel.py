"""Where the CLI sends its bearer token, and what counts as loopback (issue 16, item 6): decided by
resolving the host, not by its spelling."""

from __future__ import annotations

import pytest

from stoker.cli.client import channel
from stoker.common.serving import is_loopback


@pytest.mark.parametrize(
    "address, loopback",
    [
        ("127.0.0.1:7070", True),
        ("127.9.9.9:7070", True),
        ("[::1]:7070", True),
        ("localhost:7070", True),
        ("unix:/run/stoker/agent.sock", True),
        ("dns:///127.0.0.1:7070", True),
        ("127.attacker.example:7070", False),  # a name: it does not resolve here, and never by its spelling
        ("0.0.0.0:7070", False),
        (":7070", False),
        ("[::]:7070", False),
        ("10.0.0.7:7070", False),
    ],
)
def test_loopback_is_decided_by_the_address_not_its_spelling(address, loopback):
    assert is_loopback(address) is loopback


def test_a_token_is_not_sent_in_cleartext_beyond_this_machine(monkeypatch):
    monkeypatch.setenv("STOKER_TOKEN", "secret-token")
    monkeypatch.delenv("STOKER_CA", raising=False)
    monkeypatch.delenv("STOKER_INSECURE", raising=False)
    with pytest.raises(SystemExit) as refused:
        channel("10.0.0.7:7070")
    assert "refusing to send STOKER_TOKEN to 10.0.0.7:7070 without TLS" in str(refused.value)
    assert "secret-token" not in str(refused.value)
    channel("127.0.0.1:7070").close()  # loopback: allowed
    monkeypatch.setenv("STOKER_INSECURE", "1")
    channel("10.0.0.7:7070").close()  # told to
    monkeypatch.delenv("STOKER_TOKEN")
    monkeypatch.delenv("STOKER_INSECURE")
    channel("10.0.0.7:7070").close()  # no token: nothing to leak
