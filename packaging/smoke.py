"""Smoke-test an ``edge`` and a ``nebctl``: start the agent on 127.0.0.1, deploy
``sample/double/double.wasm`` with nebctl, call it, expect ``{"result": 42}``, stop the agent.

Used by CI (.github/workflows/binaries.yml), by tests/e2e/test_binaries.py and by
packaging/bench_startup.py; standard library only, so it runs under any Python 3.9+
next to binaries that carry their own.

    python packaging/smoke.py --bin-dir bin                # bin/edge + bin/nebctl
    python packaging/smoke.py --bin-dir bin --mesh          # + two agents over mDNS
    python packaging/smoke.py --version-only --bin-dir bin  # edge --version, nebctl --help

By default the programs run from a fresh temporary directory with an environment holding
only PATH (like ``env -i PATH=/usr/bin:/bin``), so they cannot lean on the checkout,
a venv or the caller's variables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = ROOT / "sample" / "double" / "double.wasm"
HOST = "127.0.0.1"
EXE = ".exe" if os.name == "nt" else ""


def clean_env(**extra: str) -> dict[str, str]:
    """PATH and nothing else (plus ``extra``); Windows also needs SYSTEMROOT to start."""
    env = {"PATH": "/usr/bin:/bin" if os.name != "nt" else os.environ.get("PATH", "")}
    if os.name == "nt":
        env["SYSTEMROOT"] = os.environ.get("SYSTEMROOT", r"C:\Windows")
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None,
         timeout: float = 10) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers.items())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read(), dict(e.headers.items())


class Agent:
    """One ``edge`` process (a command, e.g. ``[bin/edge]`` or ``[python, -m, nebula_edge]``)."""

    def __init__(self, cmd: Sequence[str], workdir: Path, env: dict[str, str],
                 *args: str, port: int | None = None, p2p_port: int | None = None,
                 mesh: bool = False) -> None:
        self.port = port or free_port()
        self.p2p_port = p2p_port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.argv = [*cmd, "-bind", HOST, "-port", str(self.port),
                     "-p2p-port", str(self.p2p_port), f"-mesh={'true' if mesh else 'false'}",
                     "-data", str(workdir / "data"), *args]
        self.log_path = workdir / f"edge-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 60, poll: float = 0.005) -> float:
        """Seconds from process start until ``/healthz`` answered 200 ``ok``."""
        deadline = self.started + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"edge exited with {self.proc.returncode} before /healthz "
                                     f"answered; argv {self.argv}\n{self.log()[-4000:]}")
            try:
                status, body, _ = http("GET", self.url + "/healthz", timeout=2)
                if status == 200 and json.loads(body).get("status") == "ok":
                    return time.perf_counter() - self.started
            except (OSError, ValueError):
                pass
            if time.perf_counter() > deadline:
                self.stop()
                raise AssertionError(f"/healthz of {self.argv} did not answer in {timeout} s\n"
                                     f"{self.log()[-4000:]}")
            time.sleep(poll)

    def exec(self, name: str, arg: object) -> tuple[int, object, str]:
        status, body, headers = http("POST", self.url + "/exec",
                                     json.dumps({"name": name, "arg": arg}).encode(), timeout=30)
        try:
            parsed: object = json.loads(body)
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        peer = next((v for k, v in headers.items() if k.lower() == "x-nebula-peer"), "")
        return status, parsed, peer

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM by PID (SIGKILL after ``timeout`` s); returns the exit code."""
        try:
            if self.proc.poll() is None:
                if os.name == "nt":
                    self.proc.terminate()
                else:
                    os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL) if os.name != "nt" else self.proc.kill()
                    self.proc.wait(10)
            return int(self.proc.returncode)
        finally:
            self._log.close()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text("utf-8", "replace")


def run(cmd: Sequence[str], env: dict[str, str], cwd: Path,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def wait_until(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = pred()  # type: ignore[operator]
            if last:
                return
        except Exception as e:  # an agent still starting refuses connections
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def deploy(nebctl: Sequence[str], agent: Agent, name: str, wasm: Path, env: dict[str, str],
           cwd: Path) -> str:
    r = run([*nebctl, "-addr", agent.url, "-wasm", str(wasm), "-name", name], env, cwd)
    assert r.returncode == 0, f"nebctl deploy failed ({r.returncode}): {r.stdout}{r.stderr}"
    return r.stdout


def check_single(edge: Sequence[str], nebctl: Sequence[str], workdir: Path,
                 env: dict[str, str], nebctl_env: dict[str, str], wasm: Path = DOUBLE) -> None:
    """One lone agent (mesh off): deploy double with nebctl, exec over HTTP and with nebctl."""
    agent = Agent(edge, workdir, env)
    try:
        agent.wait_healthy()
        deploy(nebctl, agent, "double", wasm, nebctl_env, workdir)
        status, body, _ = agent.exec("double", 21)
        assert (status, body) == (200, {"result": 42}), (status, body, agent.log()[-3000:])
        r = run([*nebctl, "-addr", agent.url, "-exec", "double", "-arg", "21"], nebctl_env,
                workdir)
        assert r.returncode == 0 and r.stdout.strip() == "42", (r.returncode, r.stdout, r.stderr)
    finally:
        code = agent.stop()
    assert code == 0, f"edge exited with {code} on SIGTERM\n{agent.log()[-3000:]}"


def check_mesh(edge: Sequence[str], nebctl: Sequence[str], workdir: Path,
               env: dict[str, str], nebctl_env: dict[str, str], wasm: Path = DOUBLE,
               timeout: float = 60) -> None:
    """Two agents with the mesh on find each other over mDNS (on 127.0.0.1 only) and a
    module deployed to A runs on B. The name is unique: other agents on this machine's
    loopback may join the same mesh, and that must not matter."""
    env = {**env, "NEBULA_EDGE_MDNS_INTERFACES": HOST}
    (workdir / "a").mkdir()
    (workdir / "b").mkdir()
    a = Agent(edge, workdir / "a", env, "-fast", mesh=True)
    b = Agent(edge, workdir / "b", env, "-fast", mesh=True)
    agents = (a, b)
    try:
        for x in agents:
            x.wait_healthy()

        def sees(x: Agent, y: Agent) -> bool:
            status, body, _ = http("GET", x.url + "/peers", timeout=5)
            return status == 200 and any(
                str(p.get("http_url") or "").rstrip("/").endswith(f":{y.port}")
                for p in json.loads(body).get("peers", []))

        wait_until(lambda: sees(a, b) and sees(b, a), timeout, "A and B to see each other")
        name = f"double-{uuid.uuid4().hex[:8]}"
        deploy(nebctl, a, name, wasm, nebctl_env, workdir)

        def ran_on_b() -> object:
            status, body, peer = b.exec(name, 21)
            return (status, body) == (200, {"result": 42}) and (status, body, peer)

        wait_until(ran_on_b, timeout, f"{name} deployed to A to run on B")
        r = run([*nebctl, "-addr", b.url, "-list", "-json"], nebctl_env, workdir)
        assert r.returncode == 0 and name in r.stdout, (r.returncode, r.stdout, r.stderr)
    except BaseException:
        for x in agents:
            print(f"--- log of {x.argv}\n{x.log()[-3000:]}", file=sys.stderr)
        raise
    finally:
        codes = [x.stop() for x in agents]
    assert codes == [0, 0], f"exit codes on SIGTERM: {codes}"


def check_version(edge: Sequence[str], nebctl: Sequence[str], env: dict[str, str],
                  cwd: Path) -> str:
    """``edge --version`` and ``nebctl --help`` (nebctl has no --version) exit 0."""
    r = run([*edge, "--version"], env, cwd)
    text = (r.stdout + r.stderr).strip()
    assert r.returncode == 0 and text.startswith("edge"), f"edge --version: {r.returncode} {text}"
    h = run([*nebctl, "--help"], env, cwd)
    assert h.returncode == 0 and "nebctl" in h.stdout, f"nebctl --help: {h.returncode} {h.stderr}"
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin-dir", type=Path, default=ROOT / "bin",
                   help="directory with edge and nebctl (default: bin/)")
    p.add_argument("--mesh", action="store_true", help="also run the two-agent mesh check")
    p.add_argument("--version-only", action="store_true",
                   help="only run edge --version and nebctl --help")
    p.add_argument("--wasm", type=Path, default=DOUBLE)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = p.parse_args(argv)
    edge = [str((a.bin_dir / f"edge{EXE}").resolve())]
    nebctl = [str((a.bin_dir / f"nebctl{EXE}").resolve())]
    work = Path(tempfile.mkdtemp(prefix="nebula-edge-smoke-"))
    # The binaries are copied out of the checkout, as a user would, and run from there.
    for src in (*edge, *nebctl):
        shutil.copy2(src, work / Path(src).name)
    edge, nebctl = [str(work / Path(edge[0]).name)], [str(work / Path(nebctl[0]).name)]
    wasm = work / "double.wasm"
    shutil.copy2(a.wasm, wasm)
    env = clean_env()
    nebctl_env = clean_env(HOME=str(work))  # no publisher key of the caller's is picked up
    try:
        t0 = time.perf_counter()
        print("version:", check_version(edge, nebctl, env, work))
        if not a.version_only:
            check_single(edge, nebctl, work, env, nebctl_env, wasm)
            print("single agent: deploy + exec -> 42 ok")
            if a.mesh:
                check_mesh(edge, nebctl, work, env, nebctl_env, wasm)
                print("mesh: deployed to A, ran on B -> 42 ok")
        print(f"smoke test passed in {time.perf_counter() - t0:.1f} s")
        return 0
    finally:
        if a.keep:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
