"""Build Senken's contracts offline and reproducibly into senken_core/contracts/<Name>.json.

Run with the project's Python (``.venv/bin/python contracts/build.py``) after ``npm ci`` in
contracts/: it feeds a standard-JSON input with pinned settings to the pinned solc (solcjs,
from node_modules, through compile.mjs) and writes, for each deployable contract, its ABI,
creation and runtime bytecode, the compiler version, the settings and the sha256 of every
source it was built from. The same sources, compiler and settings give byte-identical files
(tests/unit/test_contracts_build.py rebuilds and compares). ``--check`` compares instead of
writing; ``--out DIR`` writes elsewhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
NODE_MODULES = HERE / "node_modules"
DEFAULT_OUT = HERE.parent / "senken_core" / "contracts"

# The deployable contracts, in deployment order; libraries and abstract bases get no artifact.
CONTRACTS = ("SenkenToken", "SenkenTimelock", "SenkenGovernor", "ValidatorSet",
             "ProjectRegistry", "SenkenCredits")

SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",  # solc 0.8.28's newest; eth-tester (Prague) and anvil run it
    "metadata": {"bytecodeHash": "none", "useLiteralContent": False},
    "libraries": {},
    "remappings": [],
}
NOTICE = ("Built from Senken's contracts/src (Apache-2.0) and OpenZeppelin Contracts "
          "(MIT License; an npm dependency, not copied), whose compiled code this bytecode "
          "includes.")


class BuildError(RuntimeError):
    pass


def _pinned(package: str) -> str:
    """The version package-lock.json pins for ``package``, checked against node_modules."""
    lock = json.loads((HERE / "package-lock.json").read_text())
    locked = lock["packages"].get(f"node_modules/{package}", {}).get("version")
    if not locked:
        raise BuildError(f"{package} is not in contracts/package-lock.json")
    manifest = NODE_MODULES / package / "package.json"
    if not manifest.exists():
        raise BuildError(f"{manifest} missing: run `npm ci` in contracts/")
    installed = json.loads(manifest.read_text())["version"]
    if installed != locked:
        raise BuildError(f"{package} {installed} installed, {locked} pinned: run `npm ci`")
    return str(locked)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise BuildError("node is not on PATH")
    return node


def compiler_version() -> str:
    out = subprocess.run([_node(), str(HERE / "compile.mjs"), "--version"], check=True,
                         capture_output=True, text=True, cwd=HERE)
    return out.stdout.strip()


def standard_input() -> dict[str, Any]:
    sources = {f"src/{p.name}": {"content": p.read_text(encoding="utf-8")}
               for p in sorted(SRC.glob("*.sol"))}
    selection = {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object",
                             "metadata"]}}
    return {"language": "Solidity", "sources": sources,
            "settings": {**SETTINGS, "outputSelection": selection}}


def compile_sources() -> dict[str, Any]:
    proc = subprocess.run([_node(), str(HERE / "compile.mjs")],
                          input=json.dumps(standard_input(), sort_keys=True),
                          capture_output=True, text=True, cwd=HERE)
    if proc.returncode != 0:
        raise BuildError(f"solc failed: {proc.stderr.strip()}")
    output: dict[str, Any] = json.loads(proc.stdout)
    # errors, and warnings about our own sources, fail the build
    errors = [e for e in output.get("errors", []) if e["severity"] == "error"
              or e.get("sourceLocation", {}).get("file", "").startswith("src/")]
    if errors:
        raise BuildError("\n".join(e["formattedMessage"] for e in errors))
    return output


def _source_path(unit: str) -> Path:
    if unit.startswith("src/"):
        return HERE / unit
    if unit.startswith("@openzeppelin/contracts/"):
        return NODE_MODULES / unit
    raise BuildError(f"unexpected source unit {unit}")


def artifacts() -> dict[str, bytes]:
    """Compile and return ``{file name: bytes}`` of every artifact."""
    versions = {p: _pinned(p) for p in ("solc", "@openzeppelin/contracts")}
    version = compiler_version()
    if not version.startswith(versions["solc"] + "+"):
        raise BuildError(f"solc {version} does not match the pinned {versions['solc']}")
    output = compile_sources()
    found = {name: (unit, data) for unit, contracts in output["contracts"].items()
             for name, data in contracts.items()}
    result: dict[str, bytes] = {}
    for name in CONTRACTS:
        unit, data = found[name]
        metadata = json.loads(data["metadata"])
        sources = {path: hashlib.sha256(_source_path(path).read_bytes()).hexdigest()
                   for path in sorted(metadata["sources"])}
        artifact = {
            "contractName": name,
            "sourceName": unit,
            "abi": data["abi"],
            "bytecode": "0x" + data["evm"]["bytecode"]["object"],
            "deployedBytecode": "0x" + data["evm"]["deployedBytecode"]["object"],
            "compiler": {"name": "solc", "version": version,
                         "npm": f"solc@{versions['solc']}"},
            "dependencies": {"@openzeppelin/contracts": versions["@openzeppelin/contracts"]},
            "settings": SETTINGS,
            "sources": sources,
            "notice": NOTICE,
        }
        if len(artifact["deployedBytecode"]) // 2 - 1 > 24_576:
            raise BuildError(f"{name} is over the EIP-170 size limit of 24576 bytes")
        result[f"{name}.json"] = (json.dumps(artifact, indent=1, sort_keys=True) + "\n").encode()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true",
                        help="compare with the artifacts in --out instead of writing")
    args = parser.parse_args(argv)
    try:
        built = artifacts()
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 2
    if args.check:
        stale = [name for name, data in built.items()
                 if not (args.out / name).exists() or (args.out / name).read_bytes() != data]
        for name in stale:
            print(f"{args.out / name}: differs from a fresh build", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in built.items():
        (args.out / name).write_bytes(data)
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
