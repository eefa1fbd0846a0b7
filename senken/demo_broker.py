"""The demo's MQTT broker and small helpers (ports, waiting, JSON over HTTP).

The broker is the first that works of: one already listening on 127.0.0.1:1883; the
``mosquitto`` binary started on a free port; the amqtt broker run in-process (MQTT 3.1.1 only:
the demo then tells every part to speak 3.1.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

__all__ = ["Broker", "DemoError", "broker", "free_port", "get_bytes", "get_json", "listening",
           "wait_for"]


class DemoError(click.ClickException):
    """Something the demo needs did not start or work: one line, exit code 1."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class Broker:
    port: int
    protocol: str  # "5" or "3.1.1"
    what: str
    external: bool = False  # someone else's: clear what the demo retained there at the end

    def clear_retained(self, topics: Iterable[str]) -> None:
        """Publish an empty retained message on each topic, which deletes the one kept."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        client = paho.Client(CallbackAPIVersion.VERSION2,
                             protocol=paho.MQTTv5 if self.protocol == "5" else paho.MQTTv311)
        try:
            client.connect("127.0.0.1", self.port)
        except OSError:
            return
        client.loop_start()
        try:
            for topic in topics:
                client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        except (RuntimeError, ValueError):
            pass
        finally:
            client.disconnect()
            client.loop_stop()


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(interval)
    return True


def get_bytes(url: str, timeout: float = 5.0) -> bytes | None:
    """The body of a GET answered 200, or None (not reachable, not found, an error status)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def get_json(url: str, timeout: float = 5.0) -> Any:
    """The JSON body of a GET, also of a 503 (a health endpoint saying "degraded"); None if
    nothing answers with JSON."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except (urllib.error.URLError, OSError, ValueError):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


@contextlib.contextmanager
def broker(workdir: Path, requested: str | None) -> Iterator[Broker]:
    """A broker for the demo.

    ``requested``: ``127.0.0.1:PORT`` (use that broker), ``mosquitto`` (start one), ``amqtt``
    (run one in-process), or None (the first that works, in the order of the module doc).
    """
    if requested not in (None, "mosquitto", "amqtt"):
        host, _, port_text = requested.rpartition(":")
        if host not in ("127.0.0.1", "localhost") or not port_text.isdigit():
            raise click.BadParameter("use 127.0.0.1:PORT", param_hint="--broker")
        if not listening(int(port_text)):
            raise DemoError(f"no broker listening on {requested}")
        yield Broker(int(port_text), "5", f"broker at {requested}", external=True)
        return
    if requested is None and listening(1883):
        yield Broker(1883, "5", "Mosquitto already running at 127.0.0.1:1883", external=True)
        return
    port = free_port()
    if requested == "mosquitto" and not shutil.which("mosquitto"):
        raise DemoError("mosquitto is not installed (apt-get install mosquitto)")
    if requested != "amqtt" and shutil.which("mosquitto"):
        conf = workdir / "mosquitto.conf"
        log = workdir / "logs" / "mosquitto.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        "max_queued_messages 100000\n")
        with log.open("ab") as out:
            proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if not wait_for(lambda: listening(port) or proc.poll() is not None, 10) or \
                    proc.poll() is not None:
                raise DemoError(f"mosquitto did not start: see {log}")
            yield Broker(port, "5", f"Mosquitto started on 127.0.0.1:{port}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    try:
        from amqtt.broker import Broker as Amqtt
    except ImportError:
        raise DemoError("no MQTT broker: install mosquitto (apt-get install mosquitto) or "
                        "amqtt (pip install amqtt)") from None
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="amqtt", daemon=True)
    thread.start()
    amqtt = Amqtt({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}}},
                  loop=loop)
    asyncio.run_coroutine_threadsafe(amqtt.start(), loop).result(30)
    try:
        yield Broker(port, "3.1.1", f"amqtt broker in-process on 127.0.0.1:{port} (MQTT 3.1.1)")
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(amqtt.shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
