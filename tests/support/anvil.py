"""A real anvil node (Foundry, from the npm package under contracts/) started by a test.

``@foundry-rs/anvil`` ships its Linux binary as an optional npm dependency
(``@foundry-rs/anvil-linux-amd64``), so ``npm ci`` in contracts/ brings it from the npm
registry: nothing is downloaded from elsewhere. :func:`ensure_node_modules` runs that
``npm ci`` once when node_modules is missing.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.mosquitto import free_port
from tests.support.waiting import wait_until

CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "contracts"
NODE_MODULES = CONTRACTS_DIR / "node_modules"

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def ensure_node_modules() -> Path:
    """contracts/node_modules as package-lock.json pins it (``npm ci`` if it is missing)."""
    if not (NODE_MODULES / "solc" / "package.json").exists() \
            or not (NODE_MODULES / "@foundry-rs" / "anvil").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed: the contract tests need it (npm ci)")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=CONTRACTS_DIR, check=True,
                       stdout=subprocess.DEVNULL, timeout=600)
    return NODE_MODULES


def _foundry_binary(tool: str) -> Path:
    """The platform binary of @foundry-rs/<tool> (not its node wrapper: one process less)."""
    ensure_node_modules()
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform, sys.platform)
    arch = _ARCH.get(platform.machine().lower(), platform.machine().lower())
    binary = NODE_MODULES / "@foundry-rs" / f"{tool}-{system}-{arch}" / "bin" / tool
    if not binary.exists():
        raise RuntimeError(f"{binary} missing: `npm ci` in contracts/ did not bring {tool} "
                           f"for {system}-{arch}")
    return binary


def anvil_binary() -> Path:
    """foundry's anvil: the real chain node of the tests."""
    return _foundry_binary("anvil")


def cast_binary() -> Path:
    """foundry's own client, for checks that must not go through this project's code."""
    return _foundry_binary("cast")


def cast_call(url: str, to: str, signature: str, *args: object) -> str:
    """``cast call TO SIGNATURE ARGS --rpc-url URL``: its decoded output, as cast prints it."""
    done = subprocess.run([str(cast_binary()), "call", to, signature, *map(str, args),
                           "--rpc-url", url], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"cast call {signature}: {done.stderr.strip()}")
    return done.stdout.strip()


def rpc(url: str, method: str, params: list[object] | None = None) -> object:
    """One JSON-RPC call; raises on a transport error or an RPC error."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                       "params": params or []}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=2) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


def _answers(url: str) -> bool:
    try:
        rpc(url, "eth_chainId")
        return True
    except (OSError, urllib.error.URLError, RuntimeError, ValueError):
        return False


@contextmanager
def running_anvil(log_dir: Path, chain_id: int = 31337,
                  block_time_s: int | None = None) -> Iterator[str]:
    """Start anvil on a free loopback port; yield its HTTP JSON-RPC URL once it answers;
    stop it at the end (pass or fail). ``block_time_s``: mine a block that often, as a live
    chain does (default: a block per transaction only)."""
    binary = anvil_binary()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "anvil.log"
    for _attempt in range(3):  # another process may take the free port before anvil binds it
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [str(binary), "--host", "127.0.0.1", "--port", str(port),
                 "--chain-id", str(chain_id), "--hardfork", "prague", "--accounts", "10",
                 *(["--block-time", str(block_time_s)] if block_time_s else [])],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        def up_or_gone(p: subprocess.Popen[bytes] = proc, u: str = url) -> bool:
            return p.poll() is not None or _answers(u)

        try:
            wait_until(up_or_gone, 30, "anvil to answer JSON-RPC")
        except AssertionError:
            proc.kill()
            proc.wait(timeout=10)
            raise
        if proc.poll() is None:
            break
        proc.wait(timeout=10)
    else:
        raise RuntimeError(f"anvil did not start; see {log_path}:\n{log_path.read_text()[-2000:]}")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
