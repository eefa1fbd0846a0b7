"""The committed contract artifacts: they load, they are what the pinned build makes of the
current sources, and rebuilding gives byte-identical files (contracts/build.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from senken_core.credit_contracts import (
    CONTRACT_NAMES,
    UNIT_MG,
    batch_token_id,
    error_signatures,
    load_artifact,
)
from tests.support.anvil import ensure_node_modules

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "contracts"
ARTIFACTS = ROOT / "senken_core" / "contracts"


def test_every_artifact_loads_with_abi_and_bytecode() -> None:
    for name in CONTRACT_NAMES:
        artifact = load_artifact(name)
        assert artifact.name == name
        assert artifact.abi and artifact.bytecode.startswith("0x")
        assert bytes.fromhex(artifact.bytecode[2:])
        assert bytes.fromhex(artifact.deployed_bytecode[2:])
        assert len(artifact.deployed_bytecode) // 2 - 1 <= 24_576  # EIP-170
        assert artifact.compiler_version.startswith("0.8.28+commit.7893614a")
        assert artifact.settings["evmVersion"] == "cancun"
        assert artifact.settings["optimizer"] == {"enabled": True, "runs": 200}
        assert artifact.settings["metadata"]["bytecodeHash"] == "none"
    assert sorted(p.stem for p in ARTIFACTS.glob("*.json")) == sorted(CONTRACT_NAMES)
    with pytest.raises(ValueError, match="unknown contract"):
        load_artifact("Nope")


def test_artifacts_name_every_custom_error_the_tests_rely_on() -> None:
    names = {s.partition("(")[0] for s in error_signatures().values()}
    assert {"UnknownSigner", "DuplicateSigner", "TooFewSignatures", "AlreadyMinted",
            "ThresholdBelowSafety", "NotGovernance", "InvalidJurisdiction",
            "ECDSAInvalidSignatureS", "Co2eMismatch"} <= names
    assert error_signatures()[bytes.fromhex("d7e8a2c2")] == "UnknownSigner(address)"


def test_artifact_source_hashes_match_the_sources_in_the_tree() -> None:
    """Cheap staleness check: every src/ file an artifact was built from is unchanged."""
    for name in CONTRACT_NAMES:
        for unit, sha in load_artifact(name).sources.items():
            if unit.startswith("src/"):
                digest = hashlib.sha256((CONTRACTS / unit).read_bytes()).hexdigest()
                assert digest == sha, f"{name}: {unit} changed; run contracts/build.py"
    built_from = {u for n in CONTRACT_NAMES for u in load_artifact(n).sources
                  if u.startswith("src/")}
    assert built_from == {f"src/{p.name}" for p in (CONTRACTS / "src").glob("*.sol")}


def test_npm_pins_are_exact_and_locked() -> None:
    manifest = json.loads((CONTRACTS / "package.json").read_text())
    lock = json.loads((CONTRACTS / "package-lock.json").read_text())
    pins = {**manifest["dependencies"], **manifest["devDependencies"]}
    assert pins.keys() >= {"solc", "@openzeppelin/contracts", "@foundry-rs/anvil",
                           "@foundry-rs/cast"}
    for package, version in pins.items():
        assert version[0].isdigit(), f"{package} must be pinned exactly, not {version}"
        assert lock["packages"][f"node_modules/{package}"]["version"] == version
    assert pins["solc"] == "0.8.28"


def test_batch_token_id_and_unit() -> None:
    assert UNIT_MG == 1000
    a = batch_token_id("solar-farm-1", 2024, "CDM AMS-I.D")
    assert a != batch_token_id("solar-farm-1", 2025, "CDM AMS-I.D")
    assert 0 < a < 2**256


def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    ensure_node_modules()
    out = tmp_path / "artifacts"
    subprocess.run([sys.executable, str(CONTRACTS / "build.py"), "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    for name in CONTRACT_NAMES:
        fresh = (out / f"{name}.json").read_bytes()
        committed = (ARTIFACTS / f"{name}.json").read_bytes()
        assert fresh == committed, f"{name}.json: a rebuild differs from the committed artifact"
