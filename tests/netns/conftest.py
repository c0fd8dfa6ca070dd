"""Fixtures for the netns lab: one 5-host lab per test module, reset between tests.

Every test here is skipped, with the reason, when the lab cannot run (not root, no
``ip netns``); tests marked ``nft`` also when ``nft`` is missing. With
``NEBULA_LAB_REQUIRED=1`` (CI) such a run fails instead of skipping. Labs left by a
run that was itself killed are removed first. A failing
test gets the tail of every host's agent log in its report; the measured convergence
times are printed at the end of the run (and written to ``$NEBULA_LAB_TIMES``, if set).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .lab import Lab, nft_unavailable, sweep_stale, unavailable

HERE = Path(__file__).resolve().parent
MEASURED: dict[str, Any] = {}
"""Scenario -> measured times (seconds), filled by the tests through ``record``."""


REQUIRED_ENV = "NEBULA_LAB_REQUIRED"
"""``1`` (set by ``.ci/run``): a lab test that cannot run is an error, not a skip, so a
machine without root or nftables cannot pass CI by skipping the lab."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why: str | None = None
    nft_why = nft_unavailable()
    required = os.environ.get(REQUIRED_ENV) == "1"
    missing: set[str] = set()
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.netns)
        why = why if why is not None else (unavailable() or "")
        reason = f"netns lab: {why}" if why else None
        if reason is None and nft_why and item.get_closest_marker("nft") is not None:
            reason = (f"needs nftables: {nft_why} (Debian/Ubuntu: "
                      "sudo apt-get install -y nftables)")
        if reason is None:
            continue
        if required:
            missing.add(reason)
        else:
            item.add_marker(pytest.mark.skip(reason=reason))
    if missing:
        raise pytest.UsageError(f"{REQUIRED_ENV}=1, but lab tests cannot run here: "
                                + "; ".join(sorted(missing)))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Five hosts with an agent each (``-fast``), for every test of a module."""
    sweep_stale()
    with Lab(5) as the_lab:
        yield the_lab


@pytest.fixture(autouse=True)
def _lab_reset(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test using ``lab``: links up, no loss, no partition, every agent running."""
    yield
    if "lab" not in request.fixturenames:
        return
    the_lab: Lab = request.getfixturevalue("lab")
    if the_lab._closed:
        return
    the_lab.reset_network()
    for i in the_lab.hosts:
        if not the_lab.alive(i):
            the_lab.restart(i)


@pytest.fixture(scope="session")
def record() -> dict[str, Any]:
    return MEASURED


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    the_lab = getattr(item, "funcargs", {}).get("lab")
    if report.failed and isinstance(the_lab, Lab) and not the_lab._closed:
        for i in the_lab.hosts:
            tail = "\n".join(the_lab.log(i).splitlines()[-40:])
            report.sections.append((f"h{i} agent log (last 40 lines)", tail))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not MEASURED:
        return
    terminalreporter.section("netns lab: measured times (s)")
    for key, value in MEASURED.items():
        terminalreporter.write_line(f"{key}: {json.dumps(value)}")
    out = os.environ.get("NEBULA_LAB_TIMES")
    if out:
        Path(out).write_text(json.dumps({"at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                         **MEASURED}, indent=2))
