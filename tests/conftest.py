from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess
from tests.support.mosquitto import Mosquitto


@pytest.fixture
def topic_prefix() -> str:
    """One topic prefix per test, so tests on the shared broker never see each other."""
    return f"test-{uuid.uuid4().hex[:10]}/v1"


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of the test's own, which the test may stop and start."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def agent_processes() -> Iterator[list[AgentProcess]]:
    """Agents a test started; any still running at teardown is killed, pass or fail."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()
