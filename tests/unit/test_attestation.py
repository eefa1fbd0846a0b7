"""Attestations, their EIP-712 digest and validator signatures, checked against eth-account."""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core.attestation import (
    ATTESTATION_KEY_TYPE,
    ATTESTATION_TYPE,
    Attestation,
    senken_domain,
)
from senken_core.eip712 import Domain, Eip712Error, keccak256
from senken_core.errors import KeyFileError, PayloadError, SignatureError
from senken_core.secp256k1 import ValidatorKey, recover_address

CONTRACT = bytes.fromhex("5FbDB2315678afecb367f032d93F642f64180aa3")
DOMAIN = senken_domain(31337, CONTRACT)


def sample(**changes: object) -> Attestation:
    base = Attestation(
        project="pv-plant-7", device="pv-7-meter-1", window_start=1_795_003_200,
        window_seconds=3600, methodology="CDM AMS-I.D", methodology_version=1,
        readings_accepted=3598, readings_rejected=2, quantity=1_250_000, co2e_mg=812_500,
        readings_root=bytes(range(32)), model_hash=b"\x11" * 32)
    return replace(base, **changes)  # type: ignore[arg-type]


ids = st.from_regex(r"[a-z0-9][a-z0-9-]{2,20}", fullmatch=True)
attestations = st.builds(
    lambda p, d, w, ws, m, mv, a, r, q, g, root, mh: Attestation(p, d, w * ws, ws, m, mv, a, r,
                                                                   q, g, root, mh),
    ids, ids, st.integers(0, 2**30), st.sampled_from([60, 900, 3600, 86400]),
    st.text(min_size=1, max_size=20), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
    st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))


def eth_account_digest(att: Attestation, domain: Domain) -> bytes:
    message = {
        "project": att.project, "device": att.device, "windowStart": att.window_start,
        "windowSeconds": att.window_seconds, "methodology": att.methodology,
        "methodologyVersion": att.methodology_version, "readingsAccepted": att.readings_accepted,
        "readingsRejected": att.readings_rejected, "quantity": att.quantity,
        "co2eMg": att.co2e_mg, "readingsRoot": att.readings_root,
        "modelHash": att.model_hash}
    typed = {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"},
                             {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"},
                             {"name": "verifyingContract", "type": "address"}],
            "Attestation": [{"name": m, "type": k} for m, k in ATTESTATION_TYPE.members],
        },
        "primaryType": "Attestation",
        "domain": {"name": domain.name, "version": domain.version, "chainId": domain.chain_id,
                   "verifyingContract": "0x" + domain.verifying_contract.hex()},
        "message": message,
    }
    signable = encode_typed_data(full_message=typed)
    return keccak256(b"\x19" + signable.version + signable.header + signable.body)


@settings(max_examples=60, deadline=None)
@given(attestations, st.integers(1, 2**64), st.binary(min_size=20, max_size=20))
def test_digest_equals_eth_account(att: Attestation, chain_id: int, contract: bytes) -> None:
    domain = senken_domain(chain_id, contract)
    assert att.digest(domain) == eth_account_digest(att, domain)


def test_id_is_the_window_key_whatever_the_contents() -> None:
    a = sample()
    assert a.id == sample(readings_accepted=1, quantity=7, readings_root=b"\x00" * 32).id
    for other in (sample(device="pv-7-meter-2"), sample(project="pv-plant-8"),
                  sample(window_start=a.window_start + 3600), sample(window_seconds=900),
                  sample(methodology_version=2)):
        assert other.id != a.id
    # an independent computation: keccak256(abi.encode(typehash, keccak(project), ...))
    expected = keccak256(abi_encode(
        ["bytes32", "bytes32", "bytes32", "uint64", "uint32", "uint32"],
        [ATTESTATION_KEY_TYPE.type_hash, keccak256(a.project.encode()),
         keccak256(a.device.encode()), a.window_start, a.window_seconds,
         a.methodology_version]))
    assert a.id == expected


def test_validator_signature_matches_eth_account_and_recovers() -> None:
    key = ValidatorKey.generate()
    digest = sample().digest(DOMAIN)
    sig = key.sign_digest(digest)
    assert sig == Account.unsafe_sign_hash(digest, key._key.secret).signature
    assert recover_address(digest, sig) == key.address
    assert Account._recover_hash(digest, signature=sig).lower() == "0x" + key.address.hex()


def test_a_signature_for_another_chain_contract_or_content_names_someone_else() -> None:
    key = ValidatorKey.generate()
    sig = key.sign_digest(sample().digest(DOMAIN))
    for digest in (sample().digest(senken_domain(1, CONTRACT)),
                   sample().digest(senken_domain(31337, b"\x01" * 20)),
                   sample(co2e_mg=812_501).digest(DOMAIN)):
        assert recover_address(digest, sig) != key.address


def test_malformed_signatures_are_refused() -> None:
    key = ValidatorKey.generate()
    digest = keccak256(b"x")
    sig = key.sign_digest(digest)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = sig[:32] + (n - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big") + bytes(
        [55 - sig[64]])  # the same signature's other encoding
    for bad, match in ((sig[:64], "65 bytes"), (sig[:64] + b"\x00", "27 or 28"),
                       (high_s, "high s"), (bytes(32) + sig[32:], "out of range")):
        with pytest.raises(SignatureError, match=match):
            recover_address(digest, bad)
    with pytest.raises(SignatureError, match="32 bytes"):
        recover_address(b"short", sig)


def test_validator_key_file(tmp_path: Path) -> None:
    key = ValidatorKey.generate()
    path = tmp_path / "validator.key"
    key.save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert ValidatorKey.load(path).address == key.address
    with pytest.raises(KeyFileError, match="never overwritten"):
        ValidatorKey.generate().save(path)
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        ValidatorKey.load(path)
    with pytest.raises(KeyFileError, match="senken validator init"):
        ValidatorKey.load(tmp_path / "missing.key")


@pytest.mark.parametrize(("changes", "match"), [
    ({"device": "Bad Id"}, "device"),
    ({"window_start": 1_795_003_201}, "grid"),
    ({"window_seconds": 0}, "grid"),
    ({"readings_accepted": -1}, "readings_accepted"),
    ({"quantity": 2**64}, "quantity"),
    ({"readings_root": b"short"}, "readings_root"),
    ({"methodology": ""}, "methodology"),
    ({"readings_rejected": True}, "readings_rejected"),
])
def test_invalid_attestations_are_refused(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample(**changes)


@settings(max_examples=60, deadline=None)
@given(attestations)
def test_wire_round_trip(att: Attestation) -> None:
    assert Attestation.from_wire(att.to_wire()) == att


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_from_wire_answers_any_bytes_with_payload_error(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        Attestation.from_wire(data)


def test_from_wire_says_what_is_wrong() -> None:
    from senken_core import canonical

    good = canonical.decode(sample().to_wire())
    assert isinstance(good, dict)
    cases = [({**good, "schema": 9}, "schema"), ({**good, "extra": 1}, "unknown fields"),
             ({k: v for k, v in good.items() if k != "quantity"}, "missing fields"),
             ({**good, "window_start": 5}, "grid"), ([1, 2], "expected a map")]
    for value, match in cases:
        with pytest.raises(PayloadError, match=match):
            Attestation.from_wire(canonical.encode(value))  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="canonical"):
        Attestation.from_wire(b"\xff")


def test_struct_values_are_type_checked() -> None:
    with pytest.raises(Eip712Error, match="uint64"):
        ATTESTATION_KEY_TYPE.hash_struct({"project": "a", "device": "b", "windowStart": -1,
                                          "windowSeconds": 1, "methodologyVersion": 1})
    with pytest.raises(Eip712Error, match="missing"):
        ATTESTATION_KEY_TYPE.hash_struct({})
