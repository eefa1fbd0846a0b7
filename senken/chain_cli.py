"""``senken chain ...``: the on-chain side of a network: a key to send with, and the deployment.

::

    senken chain dev-node --port 8545 --fund 0xADDRESS
    senken chain keygen --out minter.key
    senken chain deploy --url http://127.0.0.1:8545 --key-file deployer.key \\
        --network network.toml --out addresses.json

``deploy`` deploys the whole contract set (``ledger.deploy``) with the network file's
validators, threshold and projects (each needs ``owner_address``), writes the addresses file
the ledger reads (``[chain] addresses_file``), and prints what the network file must then say
(``chain_id``, ``credit_contract``): validators sign for that EIP-712 domain.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["chain_group"]


@click.group(name="chain", help="Keys and contract deployment for the credit chain.")
def chain_group() -> None:
    pass


@chain_group.command("dev-node")
@click.option("--port", type=click.IntRange(0, 65535), default=8545, show_default=True,
              help="loopback port for JSON-RPC (0: a free one)")
@click.option("--fund", "fund", multiple=True, metavar="0xADDRESS",
              help="give this address 1000 ether of play money (repeatable)")
def dev_node_cmd(port: int, fund: tuple[str, ...]) -> None:
    """A development chain: in-process eth-tester (py-evm) served over JSON-RPC on
    127.0.0.1, until Ctrl-C. State is in memory only; for demos and development."""
    import threading

    from ledger.devchain import DevChain
    from senken_core.errors import SenkenError
    from senken_core.network import parse_address

    try:
        recipients = [parse_address(a) for a in fund]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fund") from None
    try:
        chain = DevChain(port=port)
        url = chain.start()
        for address in recipients:
            chain.fund("0x" + address.hex())
    except SenkenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"development chain (eth-tester) at {url}, chain id {chain.chain_id}")
    for address in recipients:
        click.echo(f"  funded 0x{address.hex()}")
    click.echo("Ctrl-C stops it (its state is gone then)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        chain.stop()


@chain_group.command("keygen")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="where to write the key (mode 0600; never overwritten)")
def keygen_cmd(out: Path) -> None:
    """Write a new secp256k1 key (a deployer's or the ledger's minter key); print its
    address, which needs ether to pay for gas."""
    from senken_core.errors import SenkenError
    from senken_core.secp256k1 import ValidatorKey

    key = ValidatorKey.generate()
    try:
        key.save(out)
    except SenkenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"key:      {out}")
    click.echo(f"address:  0x{key.address.hex()}   (fund it: it pays for gas)")


@chain_group.command("deploy")
@click.option("--url", required=True, help="the node's JSON-RPC URL")
@click.option("--key-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              required=True, help="the deployer's key (senken chain keygen, or 64 hex digits)")
@click.option("--network", "network_file", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="the network file: validators, threshold, projects with owner_address")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="the addresses file to write")
@click.option("--token-holder", default=None,
              help="who receives the governance token supply [default: the deployer]")
@click.option("--voting-delay-s", type=click.IntRange(0), default=86_400, show_default=True)
@click.option("--voting-period-s", type=click.IntRange(1), default=7 * 86_400,
              show_default=True)
@click.option("--timelock-delay-s", type=click.IntRange(0), default=2 * 86_400,
              show_default=True)
@click.option("--quorum-percent", type=click.IntRange(0, 100), default=4, show_default=True)
@click.option("--base-uri", default="https://credits.senken.example/", show_default=True,
              help="metadata base URI of the credit tokens")
@click.option("--timeout-s", type=click.FloatRange(1), default=120.0, show_default=True,
              help="how long to wait for each receipt")
def deploy_cmd(url: str, key_file: Path, network_file: Path, out: Path,
               token_holder: str | None, voting_delay_s: int, voting_period_s: int,
               timelock_delay_s: int, quorum_percent: int, base_uri: str,
               timeout_s: float) -> None:
    """Deploy token, timelock, governor, validator set, project registry and credit contract;
    write the addresses; print what the network file and the ledger config must say."""
    from ledger.chain_app import load_minter_key
    from ledger.chain_node import ETH_TESTER, ChainNode, redact_url
    from ledger.chain_tx import TxSender
    from ledger.deploy import GovernanceSettings, deploy_network, network_mismatch
    from senken_core.errors import SenkenError
    from senken_core.network import load_network_config, parse_address

    if url == ETH_TESTER:
        raise click.BadParameter("eth-tester is a chain inside one process: deploy to it from "
                                 "that process (ledger.deploy.deploy_all), not from here",
                                 param_hint="--url")
    if token_holder is not None:
        try:
            parse_address(token_holder)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--token-holder") from None
    if out.exists():
        raise click.ClickException(f"{out} exists; move it away first (it names a deployment)")
    try:
        network = load_network_config(network_file)
        key = load_minter_key(key_file)
        node = ChainNode.connect(url, timeout_s=min(timeout_s, 30.0))
        sender = TxSender(node, key)
        click.echo(f"deploying to {redact_url(url)} (chain {sender.chain_id}) from "
                   f"{sender.address}")
        settings = GovernanceSettings(voting_delay_s, voting_period_s, 0, quorum_percent,
                                      timelock_delay_s)
        addresses = deploy_network(
            node, sender, network, settings=settings, token_holder=token_holder,
            base_uri=base_uri, timeout_s=timeout_s,
            progress=lambda step: click.echo(f"  {step}"))
        addresses.save(out)
    except SenkenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"\ndeployed from block {addresses.deployed_block} on chain "
               f"{addresses.chain_id}:")
    for name, address in addresses.by_contract().items():
        click.echo(f"  {name:<16} {address}")
    click.echo(f"addresses: {out}")
    wrong = network_mismatch(network, addresses)
    if wrong:
        click.echo(f"\nnow set in {network_file} (every validator and the ledger must load the "
                   "same file; validators sign for this chain and contract):")
        for line in wrong:
            click.echo(f"  {line}")
    click.echo("\nand in the ledger's config:")
    click.echo("  [chain]")
    click.echo(f'  url = "{redact_url(url)}"   (the full URL if it carries a path or key)')
    click.echo(f'  addresses_file = "{out.resolve()}"')
    click.echo('  minter_key_file = "<a funded key: senken chain keygen>"')
