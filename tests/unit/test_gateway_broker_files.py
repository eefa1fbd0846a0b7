"""The broker's password file, ACL and config: exact output, Mosquitto's hash format, and
no user name or prefix that could change either file's meaning."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.broker_files import (
    BrokerAccount,
    BrokerLayout,
    check_prefix,
    check_username,
    mosquitto_hash,
    parse_acl,
    parse_password_file,
    render_acl,
    render_mosquitto_conf,
    render_password_file,
    verify_password,
)

VALIDATOR = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
HASH = mosquitto_hash("secret", salt=b"\x01" * 12)


def test_hash_is_mosquitto_passwd_format() -> None:
    assert re.fullmatch(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==", HASH)
    assert ("$7$101$AQEBAQEBAQEBAQEB$" + HASH.rsplit("$", 1)[1]) == HASH
    assert verify_password("secret", HASH)
    assert not verify_password("Secret", HASH)
    assert not verify_password("secret", "$6$nope")
    assert mosquitto_hash("secret") != mosquitto_hash("secret")  # a fresh salt each time
    with pytest.raises(ValueError):
        mosquitto_hash("two\nlines")


def test_hash_verifies_what_mosquitto_passwd_wrote(tmp_path: Path) -> None:
    # mosquitto_passwd ships with Mosquitto, which .ci/run installs: never skipped
    assert shutil.which("mosquitto_passwd"), "install mosquitto (it ships mosquitto_passwd)"
    pwfile = tmp_path / "pw"
    pwfile.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "alice", "s3cret-Pass"], check=True)
    users = parse_password_file(pwfile.read_text())
    assert verify_password("s3cret-Pass", users["alice"])
    # and Mosquitto's own tool accepts a file we wrote (it rewrites every entry it reads)
    ours = tmp_path / "ours"
    ours.write_text(render_password_file([BrokerAccount("pv-7-meter", "device", HASH)]))
    subprocess.run(["mosquitto_passwd", "-b", str(ours), "bob", "x"], check=True)
    assert parse_password_file(ours.read_text())["pv-7-meter"] == HASH


def test_acl_per_role() -> None:
    accounts = [BrokerAccount("pv-7-meter", "device", HASH),
                BrokerAccount(VALIDATOR, "validator", HASH),
                BrokerAccount("ledger", "ledger", HASH),
                BrokerAccount("gateway", "gateway", HASH)]
    rules = parse_acl(render_acl(accounts, "senken/v1"))
    assert rules == {
        "pv-7-meter": [("write", "senken/v1/devices/pv-7-meter/#")],
        VALIDATOR: [("read", "senken/v1/devices/+/readings"), ("read", "senken/v1/registry/#"),
                    ("read", "senken/v1/validators/#"),
                    ("write", f"senken/v1/validators/{VALIDATOR}/#")],
        "ledger": [("read", "senken/v1/validators/+/certificates"),
                   ("read", "senken/v1/registry/#")],
        "gateway": [("write", "senken/v1/registry/#")],
    }
    text = render_password_file(reversed(accounts))
    assert text.splitlines()[0].startswith(f"{VALIDATOR}:")  # sorted, one line each
    assert parse_password_file(text) == {a.username: HASH for a in accounts}


def test_refusals() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        render_password_file([BrokerAccount("dev-1", "device", HASH)] * 2)
    with pytest.raises(ValueError, match="reserved for validators"):
        check_username(VALIDATOR, "device")
    with pytest.raises(ValueError, match="lower-case"):
        check_username(VALIDATOR.upper().replace("0X", "0x"), "validator")
    with pytest.raises(ValueError, match="unknown role"):
        check_username("x-1", "admin")
    with pytest.raises(ValueError, match="not a Mosquitto"):
        BrokerAccount("dev-1", "device", "plaintext")
    for prefix in ("", "a//b", "/a", "a/", "a/#", "a/+/b", "a b", "a/%u", "x" * 101):
        with pytest.raises(ValueError):
            check_prefix(prefix)


_names = st.one_of(st.text(max_size=70), st.from_regex(r"[a-z0-9][a-z0-9-]{2,62}", fullmatch=True),
                   st.from_regex(r"0x[0-9a-f]{40}", fullmatch=True))


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.tuples(_names, st.sampled_from(["device", "validator", "ledger",
                                                         "gateway"])), max_size=6),
       prefix=st.one_of(st.just("senken/v1"), st.text(max_size=30)))
def test_writers_never_emit_what_they_were_not_asked_for(names: list[tuple[str, str]],
                                                         prefix: str) -> None:
    """Any name either is refused, or becomes exactly one password line and one ACL user
    whose topics all sit under the prefix, with wildcards only where the role has them."""
    accounts = {}
    for name, role in names:
        try:
            account = BrokerAccount(name, role, HASH)  # type: ignore[arg-type]
        except ValueError:
            continue  # refused: nothing of it reaches a file
        # accepted names can hold no separator, wildcard, '%' pattern or line break
        assert re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", name), name
        accounts.setdefault(name, account)
    try:
        acl = render_acl(accounts.values(), prefix)
    except ValueError:
        with pytest.raises(ValueError):
            check_prefix(prefix)
        return
    assert parse_password_file(render_password_file(accounts.values())) == {
        n: HASH for n in accounts}
    rules = parse_acl(acl)
    assert set(rules) == set(accounts)
    for name, pairs in rules.items():
        for access, topic in pairs:
            assert access in ("read", "write")
            assert topic.startswith(prefix + "/")
            rest = topic[len(prefix) + 1:]
            if access == "write":  # only ever one's own subtree (or the gateway's registry)
                assert rest in (f"devices/{name}/#", f"validators/{name}/#", "registry/#")
            assert "%" not in topic and " " not in topic


def test_mosquitto_conf() -> None:
    layout = BrokerLayout(password_file=Path("/etc/m/passwd"), acl_file=Path("/etc/m/acl"),
                          tls_port=8883, ca_file=Path("/c/ca.pem"),
                          cert_file=Path("/c/server.pem"), key_file=Path("/c/server.key"),
                          plain_port=1883, pid_file=Path("/run/m.pid"))
    conf = render_mosquitto_conf(layout)
    lines = [line for line in conf.splitlines() if line and not line.startswith("#")]
    assert lines == ["per_listener_settings false", "allow_anonymous false",
                     "password_file /etc/m/passwd", "acl_file /etc/m/acl",
                     "pid_file /run/m.pid", "listener 8883", "cafile /c/ca.pem",
                     "certfile /c/server.pem", "keyfile /c/server.key", "tls_version tlsv1.2",
                     "listener 1883 127.0.0.1"]
    with pytest.raises(ValueError, match="needs"):
        render_mosquitto_conf(BrokerLayout(Path("/p"), Path("/a"), tls_port=8883))
    with pytest.raises(ValueError, match="cannot be written"):
        render_mosquitto_conf(BrokerLayout(Path("/p\nallow_anonymous true"), Path("/a"),
                                           tls_port=None, plain_port=1883))
