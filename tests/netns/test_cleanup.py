"""A killed test run leaves nothing behind (issue 11, item 5).

A pytest of its own runs ``lab_holder.py`` (a 2-host lab: namespaces, veths, a bridge,
two agents, a temp dir) and is killed while the lab is up: by SIGTERM or SIGINT the lab
removes itself before the process ends; after SIGKILL nothing can run, and
``make lab-down`` finds what was left by the lab's name prefix and the agents' PIDs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agents import ROOT, wait_for

from .lab import existing_names, pid_alive

HERE = Path(__file__).resolve().parent


def leftovers(state: dict[str, Any]) -> list[str]:
    """What of the lab in ``state`` still exists."""
    names = [state["client_ns"], *[h["ns"] for h in state["hosts"]]]
    links = [state["bridge"], state["client_veth"], *[h["veth"] for h in state["hosts"]]]
    pids = [h["pid"] for h in state["hosts"] if h.get("pid")]
    netns, ifaces = existing_names("netns"), existing_names("link")
    return ([f"netns {n}" for n in names if n in netns]
            + [f"link {n}" for n in links if n in ifaces]
            + [f"agent pid {p}" for p in pids if pid_alive(p)]
            + [f"dir {state['root']}"] * Path(state["root"]).exists())


def lab_down() -> str:
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "lab-down"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_killed_test_run_leaves_nothing_after_lab_down(tmp_path: Path, sig: int) -> None:
    ready = tmp_path / "lab.json"
    log = open(tmp_path / "pytest.log", "wb")  # noqa: SIM115 - closed below
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s",
         str(HERE / "lab_holder.py")],
        cwd=ROOT, env={**os.environ, "NEBULA_LAB_HOLD": str(ready)}, stdout=log,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)  # the signal goes to pytest alone, as `kill <pid>` sends it
    try:
        wait_for(lambda: ready.exists() or run.poll() is not None, 90,
                 msg="the inner test run to have its lab up")
        assert run.poll() is None, (tmp_path / "pytest.log").read_text()[-3000:]
        state = json.loads(ready.read_text())
        assert len(leftovers(state)) == 3 + 4 + 2 + 1  # netns, links, agents, temp dir
        os.kill(run.pid, sig)
        run.wait(60)
    finally:
        if run.poll() is None:
            os.kill(run.pid, signal.SIGKILL)
            run.wait(10)
        log.close()
    output = (tmp_path / "pytest.log").read_text()
    if sig == signal.SIGKILL:
        assert leftovers(state), "a SIGKILLed run cannot clean up: this is lab-down's job"
    else:
        assert run.returncode != 0, output[-2000:]
        assert leftovers(state) == [], output[-2000:]  # the run cleaned up on the signal
    said = lab_down()
    assert leftovers(state) == [], said
    again = lab_down()  # idempotent, and nothing of this lab is left to find
    assert state["prefix"] not in again, again
