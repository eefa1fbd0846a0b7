"""``senken``: one command, a subcommand group per role.

Groups are imported only when used, so ``senken edge run`` on a device loads the agent and
nothing of the simulator, the model tooling or the demo.
"""

from __future__ import annotations

import importlib

import click

__all__ = ["cli", "main"]

_GROUPS = {
    "chain": ("senken.chain_cli", "chain_group"),
    "demo": ("senken.demo", "demo_cmd"),
    "edge": ("edge_agent.cli", "edge_group"),
    "gateway": ("gateway.cli", "gateway_group"),
    "ledger": ("ledger.cli", "ledger_group"),
    "model": ("edge_agent.model.cli", "model_group"),
    "network": ("senken.network_cli", "network_group"),
    "sim": ("firmware_sim.cli", "sim_group"),
    "validator": ("validator.cli", "validator_group"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _GROUPS:
            return None
        module, attr = _GROUPS[cmd_name]
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, help="Senken: signed field readings to verifiable carbon credits.")
@click.version_option(package_name="senken")
def cli() -> None:
    pass


def main() -> None:
    cli()
