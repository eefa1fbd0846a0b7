"""``senken sim``: run simulated sensor devices on pseudo-terminals."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import click

from firmware_sim.device import SimulatedDevice
from firmware_sim.faults import Fault, FaultScriptError, check_faults, load_fault_script
from firmware_sim.replay import Replayer, ReplayError, ReplaySpec
from firmware_sim.signals import make_generator
from senken_core.frame import Frame, encode_frame
from senken_core.sensors import SENSOR_KINDS

__all__ = ["sim_group"]

_KIND = click.Choice(sorted(SENSOR_KINDS), case_sensitive=False)


@click.group(
    name="sim",
    help="Simulated sensor firmware: devices that write SK1 frames to pseudo-terminals, "
    "with scriptable faults and replay of recorded series.",
)
def sim_group() -> None:
    """The ``sim`` command group."""


@sim_group.command("kinds")
def kinds_cmd() -> None:
    """List sensor kinds and their channels (unit, range)."""
    for kind in SENSOR_KINDS.values():
        click.echo(f"{kind.name}: {kind.description}")
        for c in kind.channels:
            extra = ", cumulative" if c.cumulative else ""
            click.echo(
                f"  {c.name:<20} {c.unit:<10} [{c.minimum}, {c.maximum}]{extra}  {c.description}"
            )


@sim_group.command("frame")
@click.option("--kind", "kind", type=_KIND, required=True, help="Sensor kind.")
@click.option("--seed", type=int, default=0, show_default=True, help="Value generator seed.")
@click.option("--counter", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
def frame_cmd(kind: str, seed: int, counter: int) -> None:
    """Print one example frame (without the CRLF line end)."""
    generator = make_generator(kind.lower(), seed)
    t = time.time()
    frame = Frame(counter, int(t * 1000), kind.lower(), generator.values(t, 1.0))
    click.echo(encode_frame(frame).rstrip(b"\r\n").decode("ascii"))


def _link_name(index: int, kind: str) -> str:
    return f"usb-Senken_Sim_{kind}_{index:04d}-if00-port0"


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM/SIGINT (main thread only); restore the handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@sim_group.command("run")
@click.option("--devices", "n_devices", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(0, min_open=True),
    default=1.0,
    show_default=True,
    help="Frames per second per device ('inf' for back to back).",
)
@click.option(
    "--kind",
    "kinds",
    type=_KIND,
    multiple=True,
    help="Sensor kind; repeat to cycle kinds over the devices (default: all kinds).",
)
@click.option(
    "--link-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Create a stable symlink per device in this directory (like /dev/serial/by-id).",
)
@click.option(
    "--faults",
    "faults_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Fault script (TOML or JSON), see docs/firmware_sim.md.",
)
@click.option(
    "--replay",
    "replays",
    multiple=True,
    metavar="CSV:CHANNEL[:LOW:HIGH]",
    help="Replay a recorded series as CHANNEL on every device that has it "
    "(CSV: a path or a bundled name such as nab/nyc_taxi.csv).",
)
@click.option("--duration", type=click.FloatRange(0, min_open=True), help="Stop after S seconds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Device i uses seed+i.")
@click.option(
    "--progress",
    type=click.FloatRange(0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds between progress lines.",
)
def run_cmd(
    n_devices: int,
    rate: float,
    kinds: tuple[str, ...],
    link_dir: Path | None,
    faults_file: Path | None,
    replays: tuple[str, ...],
    duration: float | None,
    seed: int,
    progress: float,
) -> None:
    """Run N devices until Ctrl-C, SIGTERM or --duration."""
    kind_cycle = [k.lower() for k in kinds] or list(SENSOR_KINDS)
    faults: list[Fault] = []
    if faults_file is not None:
        try:
            faults = load_fault_script(faults_file)
        except FaultScriptError as exc:
            raise click.BadParameter(str(exc), param_hint="--faults") from None
    specs: list[ReplaySpec] = []
    for text in replays:
        try:
            spec = ReplaySpec.parse(text)
        except ReplayError as exc:
            raise click.BadParameter(str(exc), param_hint="--replay") from None
        specs.append(spec)

    plan = []
    for index in range(n_devices):
        kind = kind_cycle[index % len(kind_cycle)]
        try:
            mine = check_faults(faults, kind, index, source=str(faults_file), by_channel=True)
        except FaultScriptError as exc:
            raise click.BadParameter(
                f"device {index} ({kind}): {exc}", param_hint="--faults"
            ) from None
        replay = _replay_for(kind, specs)
        plan.append((index, kind, mine, replay))
    used = {id(f) for _, _, mine, _ in plan for f in mine}
    for entry, fault in enumerate(faults):
        if id(fault) not in used:
            raise click.BadParameter(
                f"{faults_file}: faults[{entry}] ({fault.fault}) applies to no device "
                f"(kinds: {', '.join(sorted(set(kind_cycle)))}; devices 0..{n_devices - 1})",
                param_hint="--faults",
            )
    for spec in specs:
        if not any(spec.channel in SENSOR_KINDS[kind].channel_names for _, kind, _, _ in plan):
            raise click.BadParameter(
                f"no device has channel {spec.channel!r} (kinds: {', '.join(set(kind_cycle))})",
                param_hint="--replay",
            )

    devices: list[SimulatedDevice] = []
    stop = threading.Event()
    try:
        for index, kind, mine, replay in plan:
            link = link_dir / _link_name(index, kind) if link_dir is not None else None
            devices.append(
                SimulatedDevice(
                    kind, rate, seed=seed + index, link=link, faults=mine, replay=replay
                )
            )
            dev = devices[-1]
            where = f" link {dev.link}" if dev.link is not None else ""
            click.echo(f"device {index} {kind} {dev.path}{where}")
        with _stop_on_signals(stop):
            for dev in devices:
                dev.start()
            started = time.monotonic()
            end = started + duration if duration is not None else math.inf
            while not stop.is_set():
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                if stop.wait(min(progress, remaining)):
                    break
                _progress(devices, time.monotonic() - started)
    except OSError as exc:
        raise click.ClickException(f"cannot create a pseudo-terminal or link: {exc}") from None
    finally:
        for dev in devices:
            dev.stop()
    _progress(devices, None)


def _replay_for(kind: str, specs: list[ReplaySpec]) -> ReplaySpec | None:
    mine = [s for s in specs if s.channel in SENSOR_KINDS[kind].channel_names]
    if len(mine) > 1:
        raise click.BadParameter(
            f"more than one replay for {kind} ({', '.join(s.channel for s in mine)}); "
            "one replayed channel per device",
            param_hint="--replay",
        )
    if not mine:
        return None
    try:
        Replayer.load(mine[0], kind)
    except ReplayError as exc:
        raise click.BadParameter(str(exc), param_hint="--replay") from None
    return mine[0]


def _progress(devices: list[SimulatedDevice], elapsed: float | None) -> None:
    counts = " ".join(f"{i}:{d.frames_written}/{d.slots}" for i, d in enumerate(devices))
    label = "final" if elapsed is None else f"t={elapsed:.1f}s"
    click.echo(f"{label} frames written/generated {counts}")
