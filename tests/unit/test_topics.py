"""The MQTT topic scheme: device, registry and validator topics, and their filters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core.topics import (
    DEFAULT_PREFIX,
    device_topic,
    parse_device_topic,
    parse_validator_topic,
    readings_filter,
    registry_filter,
    registry_topic,
    validator_filter,
    validator_topic,
)

LEAVES = ("agreement", "certificates", "status")
ADDRESS = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest), as a broker does it."""
    f, t = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def test_validator_topics() -> None:
    assert validator_topic(ADDRESS, "agreement") == \
        "senken/v1/validators/0x5fbdb2315678afecb367f032d93f642f64180aa3/agreement"
    assert validator_filter("certificates") == "senken/v1/validators/+/certificates"
    assert validator_topic(ADDRESS, "status", "test-1/v1").startswith("test-1/v1/validators/")
    # an ACL confining a validator to its subtree: pattern write senken/v1/validators/%u/#
    acl = f"senken/v1/validators/0x{ADDRESS.hex()}/#"
    assert all(matches(acl, validator_topic(ADDRESS, leaf)) for leaf in LEAVES)
    assert not matches(acl, validator_topic(b"\x01" * 20, "agreement"))


def test_bad_validator_topic_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="leaf"):
        validator_topic(ADDRESS, "readings")
    with pytest.raises(ValueError, match="leaf"):
        validator_filter("#")
    for address in (ADDRESS[:19], ADDRESS + b"\x00", b""):
        with pytest.raises(ValueError, match="20 bytes"):
            validator_topic(address, "agreement")


def test_registry_topics() -> None:
    assert registry_topic("pv-7-meter-1") == "senken/v1/registry/pv-7-meter-1"
    assert registry_filter() == "senken/v1/registry/+"
    assert registry_topic("pv-7-meter-1", "test-1/v1") == "test-1/v1/registry/pv-7-meter-1"
    assert matches(registry_filter("test-1/v1"), registry_topic("pv-7-meter-1", "test-1/v1"))
    assert not matches(registry_filter(), registry_topic("pv-7-meter-1", "test-1/v1"))
    # a registry topic is no device's and no validator's
    assert parse_device_topic(registry_topic("pv-7-meter-1")) is None
    assert parse_validator_topic(registry_topic("pv-7-meter-1")) is None


@pytest.mark.parametrize("topic", [
    "",
    "senken/v1/validators/",
    f"senken/v1/validators/0x{ADDRESS.hex()}",  # no leaf
    f"senken/v1/validators/0x{ADDRESS.hex()}/",  # empty leaf
    f"senken/v1/validators/0x{ADDRESS.hex()}/readings",  # a device leaf
    f"senken/v1/validators/0x{ADDRESS.hex()}/agreement/x",  # a level too many
    f"senken/v1/validators/0x{ADDRESS.hex().upper()}/agreement",  # the ACL user is lower case
    f"senken/v1/validators/0X{ADDRESS.hex()}/agreement",
    f"senken/v1/validators/{ADDRESS.hex()}/agreement",  # no 0x
    f"senken/v1/validators/0x{ADDRESS.hex()[:-2]}/agreement",  # 19 bytes
    f"senken/v1/validators/0x{ADDRESS.hex()}00/agreement",  # 21 bytes
    f"senken/v1/validators/0x{ADDRESS.hex()[:-2]}  /agreement",  # 19 bytes padded to length
    f"senken/v1/validators/0x{ADDRESS.hex()[:-1]}\n/agreement",
    f"senken/v1/validators/0x{ADDRESS.hex()[:-2]}zz/agreement",
    "senken/v1/validators/+/agreement",  # a filter, not a topic
    f"senken/v2/validators/0x{ADDRESS.hex()}/agreement",  # another prefix
    f"/senken/v1/validators/0x{ADDRESS.hex()}/agreement",
    f"senken/v1/devices/0x{ADDRESS.hex()}/status",
])
def test_topics_that_are_not_validator_topics_give_none(topic: str) -> None:
    assert parse_validator_topic(topic) is None


addresses = st.binary(min_size=20, max_size=20)
prefixes = st.just(DEFAULT_PREFIX) | st.from_regex(r"[a-z0-9-]{1,12}(/[a-z0-9-]{1,8}){0,2}",
                                                   fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(addresses, st.sampled_from(LEAVES), prefixes)
def test_validator_topics_round_trip(address: bytes, leaf: str, prefix: str) -> None:
    topic = validator_topic(address, leaf, prefix)
    assert parse_validator_topic(topic, prefix) == (address, leaf)
    assert matches(validator_filter(leaf, prefix), topic)
    assert not any(matches(validator_filter(other, prefix), topic)
                   for other in LEAVES if other != leaf)
    assert parse_device_topic(topic, prefix) is None
    if prefix != DEFAULT_PREFIX:
        assert parse_validator_topic(topic) is None


topic_text = st.one_of(
    st.text(max_size=90),
    st.lists(st.one_of(st.sampled_from(["senken", "v1", "validators", "devices", "agreement",
                                        "status", "certificates", "0x" + ADDRESS.hex(), "0x",
                                        "", "+", "#"]),
                       st.text(alphabet="0123456789abcdefABCDEFx \t\n/", max_size=44)),
             max_size=6).map("/".join),
    st.builds(lambda a, b, leaf: f"senken/v1/validators/0x{a}{b}/{leaf}",
              st.text(alphabet="0123456789abcdef", min_size=36, max_size=40),
              st.text(alphabet="0123456789abcdefABCDEF \t\n\r\x0b\x0cg", max_size=4),
              st.sampled_from([*LEAVES, "readings", ""])),
)


@settings(max_examples=400, deadline=None)
@given(topic_text)
def test_only_exact_validator_topics_parse(topic: str) -> None:
    """Any string: None, or the one validator topic it names, exactly."""
    parsed = parse_validator_topic(topic)
    if parsed is not None:
        address, leaf = parsed
        assert len(address) == 20
        assert validator_topic(address, leaf) == topic


@settings(max_examples=100, deadline=None)
@given(st.from_regex(r"[a-z0-9][a-z0-9-]{2,62}", fullmatch=True),
       st.sampled_from(["readings", "status", "heartbeat"]))
def test_device_topics_are_not_validator_topics(device: str, leaf: str) -> None:
    topic = device_topic(device, leaf)
    assert parse_device_topic(topic) == (device, leaf)
    assert parse_validator_topic(topic) is None
    assert matches(readings_filter(), topic) == (leaf == "readings")
    assert not any(matches(validator_filter(v), topic) for v in LEAVES)
