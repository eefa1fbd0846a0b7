"""Senken's contracts through web3.py, on eth-tester (py-evm, in process) and on a real anvil.

One module-scoped deployment per chain (tests/support/chain.py: deploy_all); every test runs
on an EVM snapshot of it and reverts it afterwards. Validators sign with senken_core's
ValidatorKey over senken_core's Attestation.digest, so Python and the chain agree byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from eth_typing import HexStr
from eth_utils.address import to_checksum_address
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from web3 import Web3
from web3.logs import DISCARD

from senken_core.attestation import (
    ATTESTATION_KEY_TYPE,
    ATTESTATION_TYPE,
    Attestation,
    senken_domain,
)
from senken_core.credit_contracts import UNIT_MG, batch_token_id, load_artifact
from senken_core.eip712 import Domain
from senken_core.secp256k1 import ValidatorKey, recover_address
from tests.support.chain import (
    BACKENDS,
    TOKEN_SUPPLY,
    Chain,
    Deployment,
    ProjectSpec,
    attestation_args,
    calldata,
    deploy_all_with_receipts,
    deploy_contract,
    fresh_chain,
    pass_proposal,
    proposal_state,
    reverts,
    send,
)

SOLAR = ProjectSpec("solar-farm-1", owner="", window_seconds=900, grid_ef_g_per_kwh=400)
WIND = ProjectSpec("wind-park-2", owner="", window_seconds=3600, grid_ef_g_per_kwh=437)
METHODOLOGY = "CDM AMS-I.D"
T2024 = 1_704_067_200  # 2024-01-01T00:00:00Z
HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
ORDER = 2 * HALF_ORDER + 1
MINT_GAS = 1_000_000  # explicit gas skips eth-tester's slow binary-search estimate


def validator_key(i: int) -> ValidatorKey:
    return ValidatorKey(hashlib.sha256(f"senken-test-validator-{i}".encode()).digest())


@dataclass
class Net:
    kind: str
    w3: Web3
    chain: Chain
    d: Deployment
    keys: list[ValidatorKey]  # 0-3 members, 4-5 not
    deployer: str
    owner: str
    small_voter: str
    anyone: str

    @property
    def domain(self) -> Domain:
        return senken_domain(self.w3.eth.chain_id, bytes.fromhex(self.d.addresses.credits[2:]))

    def sign(self, a: Attestation, signers: list[int], domain: Domain | None = None) -> list[bytes]:
        digest = a.digest(domain or self.domain)
        return [self.keys[i].sign_digest(digest) for i in signers]

    def mint(self, a: Attestation, sigs: list[bytes], gas: int | None = MINT_GAS) -> Any:
        return send(self.d.credits.functions.mint(attestation_args(a), sigs), self.anyone,
                    gas=gas)

    def mint_call(self, a: Attestation, sigs: list[bytes]) -> Any:
        """A transaction that is expected to revert (web3 estimates gas, which reverts)."""
        return self.d.credits.functions.mint(attestation_args(a), sigs).transact(
            {"from": self.anyone})


@pytest.fixture(scope="module", params=BACKENDS)
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Net]:
    with ExitStack() as stack:
        _url, w3 = fresh_chain(request.param, stack, tmp_path_factory.mktemp("anvil"))
        accounts = list(w3.eth.accounts)
        deployer, owner, small_voter, anyone = accounts[0], accounts[1], accounts[2], accounts[3]
        keys = [validator_key(i) for i in range(6)]
        d = deploy_all_with_receipts(
            w3, deployer, [k.address for k in keys[:4]], 3,
            projects=[replace(SOLAR, owner=owner), replace(WIND, owner=owner)])
        # the deployer keeps 99% of the votes, small_voter 1% (below the 4% quorum)
        send(d.token.functions.transfer(small_voter, TOKEN_SUPPLY // 100), deployer)
        send(d.token.functions.delegate(deployer), deployer)
        send(d.token.functions.delegate(small_voter), small_voter)
        chain = Chain(w3, request.param)
        chain.advance(1)
        yield Net(request.param, w3, chain, d, keys, deployer, owner, small_voter, anyone)


@pytest.fixture
def env(net: Net) -> Iterator[Net]:
    with net.chain.restored():
        yield net


def solar(**changes: Any) -> Attestation:
    quantity = changes.pop("quantity", 1234)
    co2e_mg = changes.pop("co2e_mg", quantity * 400)
    base = Attestation(
        project="solar-farm-1", device="meter-001", window_start=T2024 + 900 * 40,
        window_seconds=900, methodology=METHODOLOGY, methodology_version=1,
        readings_accepted=15, readings_rejected=0, quantity=quantity, co2e_mg=co2e_mg,
        readings_root=hashlib.sha256(b"readings").digest(),
        model_hash=hashlib.sha256(b"model").digest())
    return replace(base, **changes)


def batch_of(a: Attestation) -> int:
    year = datetime.fromtimestamp(a.window_start, UTC).year
    return batch_token_id(a.project, year, a.methodology)


# ---------------------------------------------------------------- Python and chain agree


def test_typehashes_domain_id_and_digest_match_python(net: Net) -> None:
    c = net.d.credits.functions
    assert c.ATTESTATION_TYPEHASH().call() == ATTESTATION_TYPE.type_hash
    assert c.ATTESTATION_KEY_TYPEHASH().call() == ATTESTATION_KEY_TYPE.type_hash
    assert c.domainSeparator().call() == net.domain.separator
    _fields, name, version, chain_id, contract, _salt, _ext = c.eip712Domain().call()
    assert (name, version, chain_id, contract) == ("Senken", "1", net.w3.eth.chain_id,
                                                   net.d.addresses.credits)
    for a in (solar(), solar(device="meter-xyz", quantity=0, readings_rejected=7),
              solar(window_start=2**40 * 900, quantity=2**64 - 1, co2e_mg=2**64 - 1)):
        assert c.attestationId(attestation_args(a)).call() == a.id
        assert c.attestationDigest(attestation_args(a)).call() == a.digest(net.domain)
    assert c.batchId("solar-farm-1", 2024, METHODOLOGY).call() == \
        batch_token_id("solar-farm-1", 2024, METHODOLOGY)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 253_402_300_799))  # 1970 .. 9999-12-31T23:59:59Z
@example(951_782_400)  # 2000-02-29 (a leap year of the 400 rule)
@example(951_868_799)  # 2000-03-01T23:59:59
@example(4_107_542_400)  # 2100-03-01 (2100 is no leap year)
@example(4_107_542_399)  # 2100-02-28T23:59:59
@example(13_574_563_200)  # 2400-02-29
@example(1_704_067_199)  # 2023-12-31T23:59:59
@example(1_704_067_200)  # 2024-01-01
@example(0)
def test_utc_date_matches_python_datetime(net: Net, timestamp: int) -> None:
    when = datetime.fromtimestamp(timestamp, UTC)
    c = net.d.credits.functions
    assert c.utcDate(timestamp).call() == [when.year, when.month, when.day]
    assert c.vintageOf(timestamp).call() == when.year


# ---------------------------------------------------------------- minting


def test_k_of_n_mint_credits_the_project_owner(env: Net) -> None:
    a = solar()  # 1234 Wh x 400 g/kWh = 493,600 mg = 493 g + 600 mg carried
    receipt = env.mint(a, env.sign(a, [0, 2, 3]))
    c = env.d.credits
    token_id = batch_of(a)
    assert c.functions.balanceOf(env.owner, token_id).call() == 493
    assert c.functions.remainderMg(token_id).call() == 600
    assert c.functions.mintedIn(a.id).call() == token_id
    assert c.functions.uri(token_id).call() == \
        f"https://credits.senken.example/batches/{token_id:064x}"
    assert c.functions.attestationURI(a.id).call() == \
        f"https://credits.senken.example/attestations/{a.id.hex()}"
    project, vintage, methodology, minted, retired, remainder = \
        c.functions.batch(token_id).call()
    assert (project, vintage, methodology, minted, retired, remainder) == \
        ("solar-farm-1", 2024, METHODOLOGY, 493, 0, 600)
    (event,) = c.events.AttestationMinted().process_receipt(receipt, errors=DISCARD)
    assert event["args"]["attestationId"] == a.id
    assert event["args"]["tokenId"] == token_id
    assert event["args"]["owner"] == env.owner
    assert tuple(event["args"]["attestation"].values()) == attestation_args(a)
    assert (event["args"]["units"], event["args"]["remainderMg"],
            event["args"]["validatorEpoch"]) == (493, 600, 1)
    (transfer,) = c.events.TransferSingle().process_receipt(receipt, errors=DISCARD)
    assert (transfer["args"]["to"], transfer["args"]["id"], transfer["args"]["value"]) == \
        (env.owner, token_id, 493)


def test_all_n_signatures_mint_and_vintage_follows_the_utc_year(env: Net) -> None:
    last_2023 = solar(window_start=T2024 - 900)  # 2023-12-31T23:45Z
    first_2024 = solar(window_start=T2024)
    env.mint(last_2023, env.sign(last_2023, [3, 2, 1, 0]))
    env.mint(first_2024, env.sign(first_2024, [1, 2, 3]))
    c = env.d.credits.functions
    assert batch_of(last_2023) == batch_token_id("solar-farm-1", 2023, METHODOLOGY)
    assert batch_of(last_2023) != batch_of(first_2024)
    assert c.balanceOf(env.owner, batch_of(last_2023)).call() == 493
    assert c.balanceOf(env.owner, batch_of(first_2024)).call() == 493


def test_fewer_than_k_signatures_revert(env: Net) -> None:
    a = solar()
    with reverts("TooFewSignatures", 2, 3):
        env.mint_call(a, env.sign(a, [0, 1]))
    with reverts("TooFewSignatures", 0, 3):
        env.mint_call(a, [])
    assert env.d.credits.functions.mintedIn(a.id).call() == 0


def test_duplicate_signer_reverts(env: Net) -> None:
    a = solar()
    with reverts("DuplicateSigner", to_checksum_address(env.keys[1].address)):
        env.mint_call(a, env.sign(a, [0, 1, 1]))


def test_non_member_signer_reverts(env: Net) -> None:
    a = solar()
    with reverts("UnknownSigner", to_checksum_address(env.keys[4].address)):
        env.mint_call(a, env.sign(a, [0, 1, 4]))
    with reverts("TooManySignatures", 5, 4):
        env.mint_call(a, env.sign(a, [0, 1, 2, 3, 4]))


@pytest.mark.parametrize("wrong", ["chain id", "verifying contract", "name"])
def test_signatures_for_another_domain_revert(env: Net, wrong: str) -> None:
    a = solar()
    right = env.domain
    other = {"chain id": replace(right, chain_id=right.chain_id + 1),
             "verifying contract": replace(
                 right, verifying_contract=bytes.fromhex(env.d.addresses.registry[2:])),
             "name": replace(right, name="Senken-test")}[wrong]
    sigs = env.sign(a, [0, 1, 2], domain=other)
    # the chain recovers whoever would have signed its own digest: nobody it knows
    expected = to_checksum_address(recover_address(a.digest(right), sigs[0]))
    assert expected not in {to_checksum_address(k.address) for k in env.keys}
    with reverts("UnknownSigner", expected):
        env.mint_call(a, sigs)


def test_replayed_attestation_reverts_already_minted(env: Net) -> None:
    a = solar()
    sigs = env.sign(a, [0, 1, 2])
    env.mint(a, sigs)
    with reverts("AlreadyMinted", a.id):
        env.mint_call(a, sigs)
    # another attestation of the same window (same id), validly signed: still refused
    again = solar(quantity=999, readings_accepted=14)
    assert again.id == a.id
    with reverts("AlreadyMinted", a.id):
        env.mint_call(again, env.sign(again, [1, 2, 3]))
    assert env.d.credits.functions.balanceOf(env.owner, batch_of(a)).call() == 493


@pytest.mark.parametrize("tamper", [
    {"quantity": 1235, "co2e_mg": 1235 * 400},
    {"readings_root": b"\x00" * 32},
    {"readings_accepted": 16},
    {"model_hash": b"\x01" * 32},
])
def test_tampered_attestation_reverts(env: Net, tamper: dict[str, Any]) -> None:
    signed = solar()
    sigs = env.sign(signed, [0, 1, 2])
    tampered = replace(signed, **tamper)
    with reverts("UnknownSigner"):
        env.mint_call(tampered, sigs)


def test_high_s_and_malformed_signatures_revert(env: Net) -> None:
    a = solar()
    good = env.sign(a, [0, 1, 2])
    sig = good[2]
    s = int.from_bytes(sig[32:64], "big")
    assert s <= HALF_ORDER  # libsecp256k1 signs low s
    high_s = (ORDER - s).to_bytes(32, "big")
    flipped = sig[:32] + high_s + bytes([55 - sig[64]])  # the same signature, malleated
    with reverts("ECDSAInvalidSignatureS", high_s):
        env.mint_call(a, [*good[:2], flipped])
    with reverts("ECDSAInvalidSignatureLength", 64):
        env.mint_call(a, [*good[:2], sig[:64]])
    with reverts("ECDSAInvalidSignature"):
        env.mint_call(a, [*good[:2], sig[:64] + bytes([29])])


def test_attestation_is_checked_against_the_registry(env: Net) -> None:
    now = env.chain.now()
    sigs: list[bytes] = []  # registry checks come before the signature check
    cases: list[tuple[Attestation, str, tuple[Any, ...]]] = [
        (solar(co2e_mg=1234 * 400 + 1), "Co2eMismatch", (1234 * 400 + 1, 1234 * 400)),
        (solar(project="no-such-farm"), "UnknownProject", ("no-such-farm",)),
        (solar(methodology="CDM AMS-I.F"), "MethodologyMismatch", ("CDM AMS-I.F",)),
        (solar(methodology_version=2), "MethodologyVersionMismatch", (2, 1)),
        (solar(window_seconds=300, window_start=T2024 + 300), "WindowGridMismatch",
         (300, 900)),
        (solar(window_start=(now // 900 + 10) * 900), "WindowNotEnded",
         ((now // 900 + 11) * 900, None)),
    ]
    for a, name, args in cases:
        with reverts(name) as caught:
            env.mint_call(a, sigs)
        assert all(want is None or got == want for got, want in zip(caught.args, args,
                                                                    strict=True)), (name,
                                                                                   caught)


def test_off_grid_window_and_window_before_the_first_term_revert(env: Net) -> None:
    # Python's Attestation refuses an off-grid window; the contract refuses it too
    off_grid = list(attestation_args(solar()))
    off_grid[2] += 1
    with reverts("WindowOffGrid", off_grid[2], 900):
        env.d.credits.functions.mint(tuple(off_grid), []).transact({"from": env.anyone})
    zero = list(attestation_args(solar()))
    zero[3] = 0
    with reverts("WindowOffGrid", zero[2], 0):
        env.d.credits.functions.mint(tuple(zero), []).transact({"from": env.anyone})
    # a registry whose only term starts in 2025 has no term for a 2024 window
    registry = deploy_contract(env.w3, "ProjectRegistry", env.deployer, env.deployer)
    send(registry.functions.registerProject("late-farm", env.owner, METHODOLOGY, 900, 1, 400,
                                            T2024 + 366 * 86400), env.deployer)
    with reverts("NoTermForWindow", "late-farm", T2024):
        registry.functions.mintTerms("late-farm", T2024).call()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 40_000), min_size=1, max_size=5))
def test_fractional_windows_accumulate_without_creating_or_losing_co2e(
        net: Net, quantities: list[int]) -> None:
    with net.chain.restored():
        total_mg = 0
        token_id = 0
        for i, quantity in enumerate(quantities):
            a = Attestation("wind-park-2", f"turbine-{i:02d}", T2024 + 3600 * i, 3600,
                            METHODOLOGY, 1, 60, 0, quantity, quantity * 437, b"\x07" * 32,
                            b"\x08" * 32)
            net.mint(a, net.sign(a, [0, 1, 2]))
            total_mg += a.co2e_mg
            token_id = batch_of(a)
            units = net.d.credits.functions.balanceOf(net.owner, token_id).call()
            remainder = net.d.credits.functions.remainderMg(token_id).call()
            assert 0 <= remainder < UNIT_MG
            assert units * UNIT_MG + remainder == total_mg
        batch = net.d.credits.functions.batch(token_id).call()
        assert batch[3] * UNIT_MG + batch[5] == total_mg


# ---------------------------------------------------------------- retirement


def test_retire_burns_and_records(env: Net) -> None:
    a = solar(quantity=10_000)  # 4,000,000 mg = 4000 units
    env.mint(a, env.sign(a, [0, 1, 2]))
    token_id = batch_of(a)
    c = env.d.credits
    receipt = send(c.functions.retire(token_id, 1500, "ACME GmbH", "2024 scope 2 offset", "DE"),
                   env.owner)
    block_time = env.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert c.functions.balanceOf(env.owner, token_id).call() == 2500
    (event,) = c.events.Retired().process_receipt(receipt, errors=DISCARD)
    assert dict(event["args"]) == {
        "retirementId": 1, "holder": env.owner, "tokenId": token_id, "amount": 1500,
        "beneficiary": "ACME GmbH", "reason": "2024 scope 2 offset", "jurisdiction": "DE",
        "timestamp": block_time}
    (burn,) = c.events.TransferSingle().process_receipt(receipt, errors=DISCARD)
    assert (burn["args"]["from"], burn["args"]["to"], burn["args"]["value"]) == \
        (env.owner, "0x" + "00" * 20, 1500)
    assert c.functions.retirement(1).call() == (
        env.owner, block_time, b"DE", token_id, 1500, "ACME GmbH", "2024 scope 2 offset")
    assert c.functions.retirementCount().call() == 1
    assert c.functions.batch(token_id).call()[3:5] == (4000, 1500)
    # an approved operator retires on the holder's behalf; a stranger cannot
    send(c.functions.setApprovalForAll(env.deployer, True), env.owner)
    send(c.functions.retireFrom(env.owner, token_id, 500, "Beneficiary B", "", "JP"),
         env.deployer)
    assert c.functions.retirement(2).call()[0] == env.owner
    with reverts("ERC1155MissingApprovalForAll", env.anyone, env.owner):
        c.functions.retireFrom(env.owner, token_id, 1, "x", "", "JP").transact(
            {"from": env.anyone})
    assert c.functions.balanceOf(env.owner, token_id).call() == 2000


def test_retire_rejects_bad_input(env: Net) -> None:
    a = solar(quantity=10_000)
    env.mint(a, env.sign(a, [0, 1, 2]))
    token_id = batch_of(a)
    retire = env.d.credits.functions.retire

    def attempt(*args: Any) -> None:
        retire(*args).transact({"from": env.owner})

    for code in ("de", "DEU", "D", "", "D1", "Ü"):
        with reverts("InvalidJurisdiction", code):
            attempt(token_id, 1, "ACME", "", code)
    with reverts("ERC1155InsufficientBalance", env.owner, 4000, 4001, token_id):
        attempt(token_id, 4001, "ACME", "", "DE")
    with reverts("ERC1155InsufficientBalance", env.owner, 0, 1, token_id + 1):
        attempt(token_id + 1, 1, "ACME", "", "DE")
    with reverts("ZeroAmount"):
        attempt(token_id, 0, "ACME", "", "DE")
    with reverts("InvalidBeneficiary"):
        attempt(token_id, 1, "", "", "DE")
    with reverts("ReasonTooLong", 1025, 1024):
        attempt(token_id, 1, "ACME", "r" * 1025, "DE")
    with reverts("UnknownRetirement", 1):
        env.d.credits.functions.retirement(1).call()
    assert env.d.credits.functions.balanceOf(env.owner, token_id).call() == 4000


# ---------------------------------------------------------------- governance


def test_governance_adds_a_validator_and_a_methodology_term(env: Net) -> None:
    d, newcomer = env.d, env.keys[4]
    members, k, epoch = d.validator_set.functions.validators().call()
    assert (len(members), k, epoch) == (4, 3, 1)
    effective = (env.chain.now() // 900 + 10 * 96) * 900  # ten days ahead, on the grid
    receipts: dict[str, Any] = {}
    _, state = pass_proposal(d, env.chain, env.deployer, [
        (d.addresses.validator_set,
         calldata(d.validator_set, "addValidator", to_checksum_address(newcomer.address), 3)),
        (d.addresses.registry,
         calldata(d.registry, "addMethodologyTerm", "solar-farm-1", 2, 500, effective)),
    ], "Add validator 5 (n = 5, k = 3); solar-farm-1 grid EF 500 g/kWh", [(env.deployer, 1)],
        receipts=receipts)
    assert state == "Executed"
    members, k, epoch = d.validator_set.functions.validators().call()
    assert (len(members), k, epoch) == (5, 3, 2)
    assert to_checksum_address(newcomer.address) in members
    # the newcomer's signature now counts
    a = solar()
    env.mint(a, env.sign(a, [4, 0, 1]))
    # windows from `effective` on are credited under version 2 at 500 g/kWh, earlier ones not
    env.chain.advance(effective + 900 - env.chain.now())
    v1 = solar(window_start=effective)
    with reverts("MethodologyVersionMismatch", 1, 2):
        env.mint_call(v1, env.sign(v1, [0, 1, 2]))
    v2 = solar(window_start=effective, methodology_version=2, co2e_mg=1234 * 500)
    env.mint(v2, env.sign(v2, [0, 1, 2]))
    assert d.registry.functions.terms("solar-farm-1").call() == [(1, 400, 0), (2, 500, effective)]


def test_proposal_without_quorum_is_defeated(env: Net) -> None:
    d = env.d
    proposal_id, state = pass_proposal(d, env.chain, env.small_voter, [
        (d.addresses.validator_set, calldata(d.validator_set, "setThreshold", 4)),
    ], "k = 4 with 1% of the votes", [(env.small_voter, 1)])
    assert state == "Defeated"
    assert d.governor.functions.quorum(d.governor.functions.proposalSnapshot(proposal_id)
                                       .call()).call() == TOKEN_SUPPLY * 4 // 100
    assert d.validator_set.functions.threshold().call() == 3


def test_only_the_timelock_governs(env: Net) -> None:
    d, someone = env.d, env.deployer
    newcomer = to_checksum_address(env.keys[4].address)
    for fn in (d.validator_set.functions.addValidator(newcomer, 3),
               d.validator_set.functions.setThreshold(4),
               d.validator_set.functions.removeValidator(
                   to_checksum_address(env.keys[0].address), 3),
               d.validator_set.functions.transferGovernance(someone),
               d.registry.functions.registerProject("rogue-farm", someone, METHODOLOGY, 900, 1,
                                                    9000, 0),
               d.registry.functions.setProjectOwner("solar-farm-1", someone),
               d.registry.functions.addMethodologyTerm("solar-farm-1", 2, 9000, 2**40),
               d.credits.functions.setBaseURI("https://evil.example/")):
        with reverts("NotGovernance", someone):
            fn.transact({"from": someone})
    for contract in (d.validator_set, d.registry, d.credits):
        assert contract.functions.governance().call() == d.addresses.timelock
    admin = d.timelock.functions.DEFAULT_ADMIN_ROLE().call()
    assert not d.timelock.functions.hasRole(admin, env.deployer).call()
    proposer = d.timelock.functions.PROPOSER_ROLE().call()
    assert d.timelock.functions.hasRole(proposer, d.addresses.governor).call()
    assert not d.timelock.functions.hasRole(proposer, env.deployer).call()
    assert d.token.functions.CLOCK_MODE().call() == "mode=timestamp"
    assert d.governor.functions.CLOCK_MODE().call() == "mode=timestamp"


def test_threshold_below_safety_reverts_even_through_governance(env: Net) -> None:
    d = env.d
    description = "k = 2 of 4 (not a majority)"
    action = (d.addresses.validator_set, calldata(d.validator_set, "setThreshold", 2))
    proposal_id, state = pass_proposal(d, env.chain, env.deployer, [action], description,
                                       [(env.deployer, 1)], execute=False)
    assert state == "Succeeded"  # the vote passes; the safety rule holds at execution
    targets, values, datas = [action[0]], [0], [Web3.to_bytes(hexstr=HexStr(action[1]))]
    description_hash = Web3.keccak(text=description)
    send(d.governor.functions.queue(targets, values, datas, description_hash), env.deployer)
    env.chain.advance(d.settings.timelock_delay_s + 1)
    with reverts("ThresholdBelowSafety", 2, 4):
        d.governor.functions.execute(targets, values, datas, description_hash).transact(
            {"from": env.deployer})
    assert proposal_state(d, proposal_id) == "Queued"
    assert d.validator_set.functions.validators().call()[1:] == [3, 1]


def test_validator_set_refuses_unsafe_sets_at_deployment(env: Net) -> None:
    artifact = load_artifact("ValidatorSet")
    factory = env.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    members = [to_checksum_address(k.address) for k in env.keys[:4]]
    for k, error in ((2, "ThresholdBelowSafety"), (0, "ThresholdBelowSafety"),
                     (5, "ThresholdAboveMembers")):
        with reverts(error, k, 4):
            factory.constructor(env.deployer, members, k).transact({"from": env.deployer})
    with reverts("AlreadyValidator", members[0]):
        factory.constructor(env.deployer, [*members, members[0]], 3).transact(
            {"from": env.deployer})


def test_registry_refuses_bad_governance_input(env: Net) -> None:
    gov = env.deployer
    registry = deploy_contract(env.w3, "ProjectRegistry", gov, gov)
    f = registry.functions

    def attempt(fn: Any) -> None:
        fn.transact({"from": gov})

    for bad in ("ab", "-farm", "Farm-1", "farm_1", "x" * 64):
        with reverts("InvalidProjectId", bad):
            attempt(f.registerProject(bad, env.owner, METHODOLOGY, 900, 1, 400, 0))
    with reverts("ZeroOwner"):
        attempt(f.registerProject("farm-1", "0x" + "00" * 20, METHODOLOGY, 900, 1, 400, 0))
    with reverts("InvalidMethodology"):
        attempt(f.registerProject("farm-1", env.owner, "", 900, 1, 400, 0))
    with reverts("InvalidWindowSeconds", 0):
        attempt(f.registerProject("farm-1", env.owner, METHODOLOGY, 0, 1, 400, 0))
    with reverts("InvalidGridEmissionFactor", 10_001):
        attempt(f.registerProject("farm-1", env.owner, METHODOLOGY, 900, 1, 10_001, 0))
    send(f.registerProject("farm-1", env.owner, METHODOLOGY, 900, 1, 400, 0), gov)
    with reverts("ProjectExists", "farm-1"):
        attempt(f.registerProject("farm-1", env.owner, METHODOLOGY, 900, 1, 400, 0))
    now = env.chain.now()
    with reverts("VersionNotIncreasing", 1, 1):
        attempt(f.addMethodologyTerm("farm-1", 1, 500, now + 3600))
    with reverts("TermInPast") as caught:  # (effectiveFrom, block time)
        attempt(f.addMethodologyTerm("farm-1", 2, 500, now - 3600))
    assert caught.args[0] == now - 3600 < caught.args[1]
    with reverts("InvalidGridEmissionFactor", 20_000):
        attempt(f.addMethodologyTerm("farm-1", 2, 20_000, now + 3600))
    send(f.addMethodologyTerm("farm-1", 2, 500, now + 3600), gov)
    with reverts("TermNotAfterLatest", now + 3600, now + 3600):
        attempt(f.addMethodologyTerm("farm-1", 3, 500, now + 3600))
    with reverts("UnknownProject", "farm-2"):
        attempt(f.setProjectOwner("farm-2", env.owner))
    send(f.setProjectOwner("farm-1", env.anyone), gov)
    assert f.project("farm-1").call()[0] == env.anyone
    assert f.projectIds().call() == ["farm-1"]
    with reverts("ZeroGovernance"):
        attempt(f.transferGovernance("0x" + "00" * 20))


def test_validator_set_governance_paths(env: Net) -> None:
    gov = env.deployer
    members = [to_checksum_address(k.address) for k in env.keys[:4]]
    vs = deploy_contract(env.w3, "ValidatorSet", gov, gov, members, 3)
    f = vs.functions

    def attempt(fn: Any) -> None:
        fn.transact({"from": gov})

    with reverts("ZeroValidator"):
        attempt(f.addValidator("0x" + "00" * 20, 3))
    with reverts("AlreadyValidator", members[1]):
        attempt(f.addValidator(members[1], 3))
    fifth, sixth = (to_checksum_address(k.address) for k in env.keys[4:6])
    with reverts("NotValidator", fifth):
        attempt(f.removeValidator(fifth, 3))
    receipt = send(f.addValidator(fifth, 3), gov)  # n = 5, k = 3: 6 > 5, safe
    (changed,) = vs.events.ValidatorSetChanged().process_receipt(receipt, errors=DISCARD)
    assert (changed["args"]["epoch"], len(changed["args"]["members"]),
            changed["args"]["threshold"]) == (2, 5, 3)
    with reverts("ThresholdBelowSafety", 3, 6):  # n = 6 needs k = 4
        attempt(f.addValidator(sixth, 3))
    send(f.addValidator(sixth, 4), gov)
    send(f.removeValidator(members[0], 3), gov)  # n = 5, k = 3
    got, k, epoch = f.validators().call()
    assert sorted(got) == sorted([*members[1:], fifth, sixth])
    assert (k, epoch) == (3, 4)
    with reverts("ThresholdAboveMembers", 6, 5):
        attempt(f.setThreshold(6))
    send(f.setThreshold(5), gov)
    assert (f.threshold().call(), f.epoch().call(), f.memberCount().call()) == (5, 5, 5)
    assert f.isValidator(fifth).call() and not f.isValidator(members[0]).call()


def test_deployment_records_artifacts_match_chain_code(net: Net) -> None:
    for name, address in (("ValidatorSet", net.d.addresses.validator_set),
                          ("ProjectRegistry", net.d.addresses.registry)):
        # no immutables in these two: the runtime code is the artifact's byte for byte
        assert net.w3.eth.get_code(to_checksum_address(address)) == \
            Web3.to_bytes(hexstr=HexStr(load_artifact(name).deployed_bytecode))

