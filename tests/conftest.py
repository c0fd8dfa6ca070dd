"""Shared fixtures: real agents (see ``tests/agents.py``) and the sample modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agents import SAMPLES, Agent, AgentPool


@pytest.fixture(scope="session")
def samples() -> Path:
    """``ROOT/sample``: the committed .wasm modules and their sources."""
    return SAMPLES


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[AgentPool]:
    """Start agents for one test (``agent_factory("-workers", "1")``); all stopped after it."""
    pool = AgentPool(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="module")
def module_agent_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentPool]:
    """Like ``agent_factory``, for agents shared by the tests of one module."""
    pool = AgentPool(tmp_path_factory.mktemp("agents"))
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="module")
def agent(module_agent_factory: AgentPool) -> Agent:
    """One single agent (mesh off) shared by a test module; tests use their own module names."""
    return module_agent_factory()
