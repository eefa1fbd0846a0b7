"""The edge agent's composition root: builds every part from the config and runs them.

Threads and what flows between them (``pipeline_threads = 2``, the default)::

    serial port --lines--> [serial thread: SerialSource -> ReadingPipeline.check]
                            (parse, validate, counter, outbox-full check, score,
                             reserve seq, encode)
                                        |
                                        | checked batches, bounded FIFO (Signer.put blocks)
                                        v
                           [signer thread: Signer -> ReadingPipeline.store]
                            (sign the batch: one GIL-free native call; commit) --> outbox
                                                                              |
    broker <--QoS 1 batches-- [publisher thread: Publisher] <--peek / delete on ack--+
                              (paho network thread: callbacks -> acked list, wake event)

With ``pipeline_threads = 1`` the serial thread also runs ``store`` (no signer thread): for a
single-core device, where a second thread only adds hand-off costs.

The main thread waits for SIGINT/SIGTERM and writes status.json about once a second. ``stop``
joins the serial thread first, then lets the signer store every batch already checked and
scored, then stops the publisher. An unexpected error on the serial or signer thread (the
outbox cannot be written, say) is logged and put in ``last_error``, and stops the agent:
``run_forever`` then raises :class:`AgentFailed`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.config import EdgeConfig
from edge_agent.outbox import Outbox
from edge_agent.pipeline import ReadingPipeline, Scorer
from edge_agent.publisher import Publisher
from edge_agent.serial_source import SerialSource
from edge_agent.signer import Signer, SignerFailed
from edge_agent.stats import AgentStats, write_status
from senken_core.anomaly import AnomalyModel, ReadingScorer
from senken_core.errors import SenkenError
from senken_core.keys import DeviceKey
from senken_core.sensors import sensor_kind

__all__ = ["AGENT_VERSION", "AgentAlreadyRunning", "AgentFailed", "EdgeAgent", "load_model"]

AGENT_VERSION = "0.1.0"
log = logging.getLogger(__name__)


class AgentAlreadyRunning(SenkenError):
    """Another agent holds this state directory."""


class AgentFailed(SenkenError):
    """A pipeline thread stopped on an unexpected error (the ``__cause__``); the agent stopped."""


def _lock_state_dir(cfg: EdgeConfig) -> int:
    """Hold an exclusive lock on the state dir for the agent's life: one agent per outbox."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.state_dir / "agent.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AgentAlreadyRunning(
            f"another agent (pid {holder}) is running on {cfg.state_dir}; stop it first "
            "(two agents would share one outbox and one serial port)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def load_model(cfg: EdgeConfig) -> AnomalyModel:
    expected = bytes.fromhex(cfg.model.sha256) if cfg.model.sha256 else None
    return AnomalyModel.load(cfg.model.path, expected_sha256=expected)


@dataclass
class EdgeAgent:
    """One running agent. ``start`` returns once its threads run; ``stop`` joins them."""

    cfg: EdgeConfig

    def __post_init__(self) -> None:
        cfg = self.cfg
        self._lock_fd = _lock_state_dir(cfg)
        self.stop_event = threading.Event()
        self.stats = AgentStats()
        self.key = DeviceKey.load(cfg.key_path)
        self.model = load_model(cfg)
        self.outbox = Outbox(cfg.outbox_path, cfg.outbox.max_readings)

        def scorer_for_kind(kind: str) -> Scorer:
            return ReadingScorer(self.model, sensor_kind(kind).channels)

        self.pipeline = ReadingPipeline(
            device_id=cfg.device_id,
            key=self.key,
            outbox=self.outbox,
            scorer_for_kind=scorer_for_kind,
            model_sha256=self.model.sha256,
            stats=self.stats,
            expected_kind=cfg.serial.kind,
            max_clock_skew_ms=int(cfg.max_clock_skew_s * 1000),
        )
        self.signer: Signer | None = None
        if cfg.pipeline_threads == 2:
            self.signer = Signer(self.pipeline.store, on_stored=self._stored,
                                 on_failure=self._fail, release=self.pipeline.discard)
        self.source = SerialSource(cfg.serial.port, cfg.serial.baudrate, self._handle_lines,
                                   self.stats, self.stop_event)
        self.failure: BaseException | None = None
        self.publisher = Publisher(cfg, self.outbox, self.stats, self.stop_event,
                                   self.identity)
        self._threads: list[threading.Thread] = []
        self._last_status = 0.0

    def identity(self) -> dict[str, Any]:
        return {
            "device": self.cfg.device_id,
            "agent_version": AGENT_VERSION,
            "model_sha256": self.model.sha256.hex(),
            "public_key": self.key.public_key.hex(),
        }

    def status(self) -> dict[str, Any]:
        return {**self.identity(), **self.stats.snapshot(), "pid": os.getpid(),
                "outbox_depth": self.outbox.depth, "updated_ms": int(time.time() * 1000)}

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_status >= 1.0:
            self._last_status = now
            try:
                write_status(self.cfg.status_path, self.status())
            except OSError as exc:
                log.warning("cannot write %s: %s", self.cfg.status_path, exc)

    def _stored(self, stored: int) -> None:
        if stored:
            self.publisher.wake.set()

    def _handle_lines(self, lines: Sequence[bytes]) -> int:
        """Stage A on the serial thread; stage B here too, or queued for the signer thread."""
        if self.signer is None:
            stored = self.pipeline.process(lines)
            self._stored(stored)
            return stored
        batch = self.pipeline.check(lines)
        if batch is not None:
            try:
                self.signer.put(batch)
            except BaseException:
                self.pipeline.discard(batch)
                raise
        return 0

    def _run_serial(self) -> None:
        try:
            self.source.run()
        except SignerFailed:
            pass  # already reported by the signer thread
        except BaseException as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """A pipeline thread died: report it (log, last_error, status) and stop the agent."""
        if self.failure is None:
            self.failure = exc
        message = f"reading pipeline stopped: {exc}; the agent stops (see the log)"
        log.error("%s", message, exc_info=exc)
        self.stats.error(message)
        self.stop_event.set()

    def start(self) -> None:
        if self.signer is not None:
            self.signer.start()
        for name, target in (("serial", self._run_serial),
                             ("publisher", lambda: self.publisher.run(self._tick))):
            thread = threading.Thread(target=target, name=f"senken-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("agent %s started: device %s, port %s, broker %s:%s, outbox depth %d",
                 AGENT_VERSION, self.cfg.device_id, self.cfg.serial.port, self.cfg.mqtt.host,
                 self.cfg.mqtt.port, self.outbox.depth)

    def stop(self) -> None:
        """Stop reading, store every batch already checked and scored, stop publishing.

        Idempotent in effect; safe to call after a pipeline failure (see :attr:`failure`).
        """
        self.stop_event.set()
        self.publisher.wake.set()
        serial, *others = self._threads or [None]
        if serial is not None:
            serial.join(timeout=10)
        if self.signer is not None:
            try:
                # The serial thread has returned (or is stuck in a port call): nothing more is
                # put; every batch already put is signed and committed before this returns.
                if not self.signer.close(timeout=60):
                    log.error("signer thread still storing after 60 s; stopping anyway")
            except SignerFailed:
                pass  # reported when it happened; self.failure holds it
        for thread in others:
            thread.join(timeout=10)
        self.stats.serial_state = "stopped"
        self._last_status = 0.0
        self._tick()
        self.outbox.close()
        os.close(self._lock_fd)

    def run_forever(self) -> None:
        """Run until SIGINT or SIGTERM."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop_event.set())
        self.start()
        try:
            while not self.stop_event.wait(1.0):
                pass
        finally:
            self.stop()
        if self.failure is not None:
            raise AgentFailed(f"the agent stopped: {self.failure}") from self.failure
