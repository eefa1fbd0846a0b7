"""``senken``: one command, a subcommand group per role."""

from __future__ import annotations

import click

from edge_agent.cli import edge_group
from edge_agent.model.cli import model_group
from firmware_sim.cli import sim_group
from senken.demo import demo_cmd

__all__ = ["cli", "main"]


@click.group(help="Senken: signed field readings to verifiable carbon credits.")
@click.version_option(package_name="senken")
def cli() -> None:
    pass


cli.add_command(edge_group)
cli.add_command(sim_group)
cli.add_command(model_group)
cli.add_command(demo_cmd)


def main() -> None:
    cli()
