"""The single-file binaries ``bin/edge`` and ``bin/nebctl`` (issue #5), run as a user with
no venv and no checkout would: copied to a temporary directory outside the checkout and
started from there with an environment holding only PATH (``env -i PATH=/usr/bin:/bin``).

The binaries are built first (``packaging/build_binaries.py``: PyInstaller, needs the
``build`` extra) if ``bin/edge`` is missing or older than the sources; set
``NEBULA_EDGE_BIN_DIR`` to test prebuilt ones (a CI artefact, say) instead.

* a lone agent (``-mesh=false``): deploy ``double`` with ``nebctl``, call it over HTTP and
  with ``nebctl``, ``{"result": 42}``; SIGTERM by PID stops it with exit code 0;
* two agents with the mesh on, mDNS on 127.0.0.1 only
  (``NEBULA_EDGE_MDNS_INTERFACES=127.0.0.1``) and ``-fast`` timers, find each other, and a
  module deployed to one runs on the other. Other agents on this machine's loopback may
  join that mesh too, so the module name is unique and peers are not counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents import ROOT, SAMPLES, free_port, http, wait_for

DOUBLE = SAMPLES / "double" / "double.wasm"
HOST = "127.0.0.1"
CLEAN_PATH = "/usr/bin:/bin"
BUILD_TIMEOUT_S = 1200
"""A build from scratch takes 2-4 min on 2 cores; 20 min means something is wrong."""

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 300)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def bin_dir(request: pytest.FixtureRequest) -> Path:
    """Where the binaries under test are: NEBULA_EDGE_BIN_DIR, else bin/ (built if stale)."""
    given = os.environ.get("NEBULA_EDGE_BIN_DIR")
    if given:
        d = Path(given).resolve()
        assert (d / "edge").is_file() and (d / "nebctl").is_file(), (
            f"NEBULA_EDGE_BIN_DIR={given} holds no edge and nebctl")
        return d
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(ROOT / "packaging" / "build_binaries.py")],
                       cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    took = time.monotonic() - t0
    assert r.returncode == 0, (
        f"building the binaries failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    last = (r.stdout.strip().splitlines() or [""])[-1]
    # Said on the terminal even under -q and output capture: what the build cost this run.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\ntest_binaries: {last} [{took:.0f} s in this test]", flush=True)
    return ROOT / "bin"


@pytest.fixture
def outside(tmp_path: Path, bin_dir: Path) -> Path:
    """A directory outside the checkout holding copies of edge, nebctl and double.wasm."""
    work = tmp_path / "outside"
    work.mkdir()
    assert ROOT not in work.resolve().parents, f"{work} is inside the checkout"
    for name in ("edge", "nebctl"):
        shutil.copy2(bin_dir / name, work / name)
    shutil.copy2(DOUBLE, work / "double.wasm")
    return work


class BinAgent:
    """``./edge`` started in ``cwd`` with ``env`` exactly (nothing inherited)."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.p2p_port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.argv = ["./edge", "-bind", HOST, "-port", str(self.port),
                     "-p2p-port", str(self.p2p_port), *args]
        self.log_path = cwd / f"edge-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(self.argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text("utf-8", "replace")

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.argv} exited with {self.proc.returncode}:\n"
                                 f"{self.log()[-4000:]}")
        status, body, _ = http("GET", self.url + "/healthz", timeout=2)
        return status == 200 and json.loads(body)["status"] == "ok"

    def wait_healthy(self) -> None:
        # A one-file binary unpacks itself first: seconds on a loaded machine.
        try:
            wait_for(self.healthy, 120, msg=f"/healthz of {self.argv}")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log()[-4000:]}") from None

    def get(self, path: str) -> tuple[int, object]:
        status, body, _ = http("GET", self.url + path, timeout=10)
        return status, json.loads(body)

    def exec(self, name: str, arg: object) -> tuple[int, object]:
        status, body, _ = http("POST", self.url + "/exec",
                               json.dumps({"name": name, "arg": arg}).encode(), timeout=30)
        return status, json.loads(body)

    def stop(self) -> int:
        """SIGTERM by PID; SIGKILL if it is still there after 20 s."""
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
            return int(self.proc.returncode)
        finally:
            self._log.close()


@pytest.fixture
def started(outside: Path) -> Iterator[list[BinAgent]]:
    """Agents a test starts; any still running afterwards are stopped by PID."""
    agents: list[BinAgent] = []
    yield agents
    for a in agents:
        a.stop()


def nebctl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``./nebctl ARGS`` with PATH and a HOME of its own (no publisher key of the user's)."""
    return subprocess.run(["./nebctl", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": CLEAN_PATH, "HOME": str(cwd)}, timeout=60,
                          stdin=subprocess.DEVNULL)


# ------------------------------------------------------------------------------ tests
def test_lone_agent_binary_runs_double_from_outside_the_checkout(
        outside: Path, started: list[BinAgent]) -> None:
    env = {"PATH": CLEAN_PATH}  # env -i PATH=/usr/bin:/bin
    version = subprocess.run(["./edge", "--version"], cwd=outside, env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("edge "), version

    agent = BinAgent(outside, env, "-mesh=false")
    started.append(agent)
    agent.wait_healthy()
    # The default -data ./data is relative to where the agent runs, not to any checkout.
    assert (outside / "data" / str(agent.port)).is_dir()

    r = nebctl(outside, "-addr", agent.url, "-wasm", "double.wasm", "-name", "double")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stdout.startswith("deployed double v1 (74 bytes"), r.stdout
    assert agent.exec("double", 21) == (200, {"result": 42})
    r = nebctl(outside, "-addr", agent.url, "-exec", "double", "-arg", "21")
    assert (r.returncode, r.stdout) == (0, "42\n"), r.stderr

    assert agent.stop() == 0, agent.log()[-3000:]
    assert "Traceback" not in agent.log()


def test_two_binary_agents_find_each_other_over_mdns(
        outside: Path, started: list[BinAgent]) -> None:
    env = {"PATH": CLEAN_PATH, "NEBULA_EDGE_MDNS_INTERFACES": HOST}
    a, b = BinAgent(outside, env, "-fast"), BinAgent(outside, env, "-fast")
    started.extend((a, b))
    a.wait_healthy()
    b.wait_healthy()

    def sees(x: BinAgent, y: BinAgent) -> bool:
        status, body = x.get("/peers")
        assert status == 200, body
        assert isinstance(body, dict)
        return any(str(p.get("http_url") or "").endswith(f":{y.port}") for p in body["peers"])

    try:
        wait_for(lambda: sees(a, b) and sees(b, a), 60, msg="A and B to find each other")
        name = f"double-{uuid.uuid4().hex[:8]}"
        r = nebctl(outside, "-addr", a.url, "-wasm", "double.wasm", "-name", name)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert wait_for(lambda: b.exec(name, 21) == (200, {"result": 42}), 60,
                        msg=f"{name}, deployed to A, to run on B")
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- A:\n{a.log()[-3000:]}\n--- B:\n{b.log()[-3000:]}") from None

    assert [a.stop(), b.stop()] == [0, 0]
