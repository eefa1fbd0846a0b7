"""The edge agent's import guard for the chain side: senken_core reads the chain
(``senken_core.chain_schedule``, shared by the validator and the ledger), but web3 and its
eth_* libraries load only when a chain is read, never with the agent (its memory budget:
bench/README.md; numpy and pydantic are guarded in test_anomaly.py)."""

from __future__ import annotations

import subprocess
import sys

CHAIN_LIBRARIES = ("web3", "eth_utils", "eth_abi", "eth_account", "eth_typing", "eth_hash")


def test_the_agent_and_the_shared_chain_reader_load_no_web3() -> None:
    code = (
        "import sys\n"
        "import edge_agent.app, edge_agent.cli\n"
        "import senken_core, senken_core.chain_schedule, senken_core.membership\n"
        f"bad = {{m.split('.')[0] for m in sys.modules}} & set({CHAIN_LIBRARIES!r})\n"
        "assert not bad, f'imported {sorted(bad)}'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
