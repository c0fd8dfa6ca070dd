"""Real ``edge`` agents as separate processes, driven over HTTP and ``nebctl``, as a person would.

Shared by the end-to-end tests here and by the mesh / network-namespace suites built later:

* :func:`start_agent` starts ``edge`` (the ``edge`` script next to ``sys.executable``) on
  127.0.0.1 with free ports, logs to a file, and returns once ``/healthz`` answers;
* :class:`Agent` wraps the process: ``get``/``post``/``put``/``delete``/``exec`` over urllib,
  ``nebctl`` as a subprocess, ``stop``/``kill`` by PID;
* :func:`wait_for` polls a condition with a deadline (tests never sleep a fixed time);
* :class:`AgentPool` remembers what it started so a fixture finalizer can stop it all.

Every agent gets ``NEBULA_EDGE_MDNS_INTERFACES=127.0.0.1`` so that mDNS, when the mesh is
on, never leaves loopback. Processes are only ever stopped by their own PID.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample"
BIN = Path(sys.executable).parent
EDGE = BIN / "edge"
NEBCTL = BIN / "nebctl"

HOST = "127.0.0.1"
HTTP_TIMEOUT = 30.0
"""Per request. The slowest call a test makes is a module hitting a 1 s limit."""

_LIVE: dict[int, subprocess.Popen[bytes]] = {}
"""Every agent process started and not yet reaped: the atexit safety net."""


# ------------------------------------------------------------------------------ utilities
def free_port() -> int:
    """A TCP port nothing listens on right now (bind to port 0, let the kernel pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05,
             msg: str = "") -> Any:
    """Call ``predicate`` until it returns something truthy; return that value.

    An exception raised by ``predicate`` counts as "not yet" (an agent still starting
    refuses connections). On timeout raise ``AssertionError`` with ``msg`` and the last
    value or exception seen.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{msg or getattr(predicate, '__name__', 'condition')}; "
                                 f"last value: {last!r}")
        time.sleep(interval)


class Headers(dict[str, str]):
    """Response headers with lower-cased keys; lookups ignore case."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__((k.lower(), v) for k, v in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


def http(method: str, url: str, data: bytes | None = None,
         headers: dict[str, str] | None = None,
         timeout: float = HTTP_TIMEOUT) -> tuple[int, bytes, Headers]:
    """One HTTP request; returns status, raw body, headers (4xx/5xx are not exceptions)."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), Headers(resp.headers.items())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read(), Headers(e.headers.items())


def parse_body(raw: bytes, headers: Headers) -> Any:
    """JSON if the response says so (and parses), else text."""
    text = raw.decode("utf-8", "replace")
    if "json" in headers.get("content-type", ""):
        try:
            return json.loads(raw)
        except ValueError:
            return text
    return text


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one sample in Prometheus text format, or None if it is absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?", line)
        if m is None or m.group(1) != name:
            continue
        got = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == (labels or {}):
            return float(m.group(3))
    return None


def edge_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["NEBULA_EDGE_MDNS_INTERFACES"] = HOST
    env.pop("NEBULA_EDGE_TOKEN", None)
    env.pop("NEBULA_EDGE_ADDR", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _reap(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """Signal ``proc`` (by its PID), wait, SIGKILL after ``timeout``; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    _LIVE.pop(proc.pid, None)
    assert proc.returncode is not None
    return proc.returncode


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE.values()):
        _reap(proc, signal.SIGKILL, 5)


# ------------------------------------------------------------------------------ the agent
class Agent:
    """A running ``edge`` process and the ways a person talks to it."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, p2p_port: int, data: Path,
                 log_path: Path, log_file: Any, argv: list[str], cwd: Path) -> None:
        self.proc = proc
        self.port = port
        self.p2p_port = p2p_port
        self.data = data
        """The data root (``-data``); the agent's own state is :attr:`state_dir`."""
        self.log_path = log_path
        self.argv = argv
        self.cwd = cwd
        self.url = f"http://{HOST}:{port}"
        self._log_file = log_file

    def __repr__(self) -> str:
        return f"<Agent pid={self.proc.pid} {self.url} data={self.data}>"

    @property
    def state_dir(self) -> Path:
        return self.data / str(self.port)

    # -------------------------------------------------------------------- HTTP
    def request(self, method: str, path: str, data: bytes | None = None,
                headers: dict[str, str] | None = None,
                timeout: float = HTTP_TIMEOUT) -> tuple[int, bytes, Headers]:
        """Raw request: status, body bytes, headers."""
        return http(method, self.url + path, data, headers, timeout)

    def _call(self, method: str, path: str, data: bytes | None = None,
              content_type: str | None = None,
              timeout: float = HTTP_TIMEOUT) -> tuple[int, Any, Headers]:
        hdrs = {"Content-Type": content_type} if content_type else {}
        status, raw, headers = self.request(method, path, data, hdrs, timeout)
        return status, parse_body(raw, headers), headers

    @staticmethod
    def _encode(body: dict[str, Any] | list[Any] | bytes | None) -> bytes | None:
        if body is None or isinstance(body, bytes):
            return body
        return json.dumps(body).encode()

    def get(self, path: str, timeout: float = HTTP_TIMEOUT) -> tuple[int, Any, Headers]:
        return self._call("GET", path, timeout=timeout)

    def post(self, path: str, body: dict[str, Any] | list[Any] | bytes | None = None,
             content_type: str = "application/json",
             timeout: float = HTTP_TIMEOUT) -> tuple[int, Any, Headers]:
        return self._call("POST", path, self._encode(body), content_type, timeout)

    def put(self, path: str, body: dict[str, Any] | bytes,
            content_type: str = "application/wasm",
            timeout: float = HTTP_TIMEOUT) -> tuple[int, Any, Headers]:
        return self._call("PUT", path, self._encode(body), content_type, timeout)

    def delete(self, path: str, timeout: float = HTTP_TIMEOUT) -> tuple[int, Any, Headers]:
        return self._call("DELETE", path, timeout=timeout)

    def exec(self, name: str, arg: Any = None, args: list[Any] | None = None,
             timeout: float = HTTP_TIMEOUT) -> tuple[int, Any, Headers]:
        """POST /exec; ``arg``/``args`` are sent only when not None."""
        body: dict[str, Any] = {"name": name}
        if arg is not None:
            body["arg"] = arg
        if args is not None:
            body["args"] = args
        return self.post("/exec", body, timeout=timeout)

    def deploy(self, name: str, wasm: bytes | Path, **fields: Any) -> tuple[int, Any, Headers]:
        """POST /deploy with base64 bytes; ``fields`` adds abi/export/limits."""
        raw = wasm.read_bytes() if isinstance(wasm, Path) else wasm
        body = {"name": name, "wasm": base64.b64encode(raw).decode(), **fields}
        return self.post("/deploy", body)

    def upload(self, name: str, wasm: bytes | Path, content_type: str = "application/wasm",
               **query: Any) -> tuple[int, Any, Headers]:
        """PUT /modules/{name} with raw bytes; ``query`` adds abi/export/limits."""
        raw = wasm.read_bytes() if isinstance(wasm, Path) else wasm
        path = "/modules/" + urllib.parse.quote(name, safe="")
        if query:
            path += "?" + urllib.parse.urlencode(query)
        return self.put(path, raw, content_type)

    def metrics(self) -> str:
        status, text, _ = self.get("/metrics")
        assert status == 200, text
        assert isinstance(text, str)
        return text

    def metric(self, name: str, **labels: str) -> float | None:
        return metric_value(self.metrics(), name, labels)

    def module_names(self) -> list[str]:
        status, body, _ = self.get("/modules")
        assert status == 200, body
        return [m["name"] for m in body["modules"]]

    # -------------------------------------------------------------------- CLI
    def nebctl(self, *args: str, check: bool = False, timeout: float = 60,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``nebctl -addr <this agent> ARGS...``; ``check`` raises on a non-zero exit."""
        return run_nebctl("-addr", self.url, *args, check=check, timeout=timeout, cwd=cwd)

    # -------------------------------------------------------------------- lifecycle
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send ``sig`` (SIGKILL after ``timeout`` s); returns the exit code."""
        try:
            return _reap(self.proc, sig, timeout)
        finally:
            self._log_file.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL, 10)

    def log(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log_path.read_text("utf-8", "replace")


def run_nebctl(*args: str, check: bool = False, timeout: float = 60,
               cwd: Path | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``nebctl ARGS...`` to completion, capturing text output."""
    return subprocess.run([str(NEBCTL), *args], capture_output=True, text=True, check=check,
                          timeout=timeout, cwd=cwd or ROOT, env=edge_env(env),
                          stdin=subprocess.DEVNULL)


def edge_argv(data_root: Path | None, extra_args: tuple[str, ...], port: int, p2p_port: int,
              mesh: bool) -> list[str]:
    argv = [str(EDGE), "-bind", HOST, "-port", str(port), "-p2p-port", str(p2p_port),
            f"-mesh={'true' if mesh else 'false'}"]
    if data_root is not None:
        argv += ["-data", str(data_root)]
    return argv + list(extra_args)


def start_agent(data_root: Path, *extra_args: str, port: int | None = None,
                p2p_port: int | None = None, mesh: bool = False,
                env: dict[str, str] | None = None, wait_s: float = 30,
                cwd: Path | None = None, data_flag: bool = True) -> Agent:
    """Start ``edge`` and wait until its ``/healthz`` answers 200.

    ``data_root`` is passed as ``-data``; with ``data_flag=False`` no ``-data`` is given
    and the agent runs in ``cwd`` (default ``data_root``) with its default ``./data``.
    """
    data_root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    p2p_port = p2p_port or free_port()
    run_dir = cwd or (ROOT if data_flag else data_root)
    data = data_root if data_flag else run_dir / "data"
    argv = edge_argv(data_root if data_flag else None, extra_args, port, p2p_port, mesh)
    log_path = data_root / f"edge-{port}-{time.monotonic_ns()}.log"
    return _spawn(argv, port=port, p2p_port=p2p_port, data=data, cwd=run_dir,
                  log_path=log_path, env=env, wait_s=wait_s)


def run_edge(data_root: Path, *extra_args: str, port: int | None = None,
             timeout: float = 30, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Run ``edge`` expecting it to exit by itself (a refused start); kill it past ``timeout``.

    Raises ``AssertionError`` if it is still running at the deadline (it started when it
    should not have).
    """
    argv = edge_argv(data_root, extra_args, port or free_port(), free_port(), False)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, cwd=ROOT, env=edge_env(env))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"edge {argv} was still running after {timeout} s; "
                             f"stderr:\n{err[-4000:]}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class AgentPool:
    """Starts agents and stops every one of them (by PID) in :meth:`stop_all`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.agents: list[Agent] = []

    def __call__(self, *extra_args: str, data_root: Path | None = None, **kw: Any) -> Agent:
        """Start an agent; its data root defaults to a fresh directory under ``root``."""
        if data_root is None:
            data_root = self.root / f"agent{len(self.agents)}"
        agent = start_agent(data_root, *extra_args, **kw)
        self.agents.append(agent)
        return agent

    def stop_all(self) -> None:
        for agent in self.agents:
            if agent.alive() or not agent._log_file.closed:
                agent.stop(signal.SIGTERM, 10)
        self.agents.clear()


# ------------------------------------------------------------------------------ the mesh
def peer_id(agent: Agent) -> str:
    """The agent's libp2p peer id: its ``/healthz`` ``node_id`` when the mesh is on."""
    status, body, _ = agent.get("/healthz")
    assert status == 200 and body["mesh"], body
    return str(body["node_id"])


def p2p_addr(agent: Agent) -> str:
    """The multiaddr other agents dial (``-peer``): ``/ip4/<ip>/tcp/<p2p port>/p2p/<id>``."""
    return f"/ip4/{HOST}/tcp/{agent.p2p_port}/p2p/{peer_id(agent)}"


def peer_ids(agent: Agent) -> set[str]:
    """The peer ids an agent's ``GET /peers`` lists."""
    status, body, _ = agent.get("/peers")
    assert status == 200, body
    return {p["peer_id"] for p in body["peers"]}


def launch_agent(args: list[str], *, port: int, p2p_port: int, data: Path, cwd: Path,
                 log_path: Path, env: dict[str, str] | None = None,
                 wait_s: float = 30) -> Agent:
    """Start ``edge ARGS...`` exactly as given (no ``-bind``, ``-data`` or ports added: the
    caller says what ``port``/``p2p_port``/``data`` those args amount to) and wait until
    ``/healthz`` answers 200 on 127.0.0.1. For commands typed as a README shows them."""
    return _spawn([str(EDGE), *args], port=port, p2p_port=p2p_port, data=data, cwd=cwd,
                  log_path=log_path, env=env, wait_s=wait_s)


def _spawn(argv: list[str], *, port: int, p2p_port: int, data: Path, cwd: Path,
           log_path: Path, env: dict[str, str] | None, wait_s: float) -> Agent:
    """Start ``argv`` logging to ``log_path`` and wait until ``/healthz`` answers 200;
    an agent that exits or never answers fails the test with the tail of its log."""
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by Agent.stop
    proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=cwd, env=edge_env(env))
    _LIVE[proc.pid] = proc
    agent = Agent(proc, port, p2p_port, data, log_path, log_file, argv, cwd)
    deadline = time.monotonic() + wait_s
    while True:
        if not agent.alive():
            code = agent.stop()
            raise AssertionError(f"edge exited with code {code} before answering /healthz; "
                                 f"argv {argv}; log:\n{agent.log()[-4000:]}")
        try:
            status, body, _ = agent.get("/healthz", timeout=2)
            if status == 200 and body.get("status") == "ok":
                return agent
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            agent.stop()
            raise AssertionError(f"edge did not answer /healthz within {wait_s} s; argv {argv};"
                                 f" log:\n{agent.log()[-4000:]}")
        time.sleep(0.05)


def connected(a: Agent, b: Agent) -> bool:
    """Each of two agents lists the other in ``GET /peers``."""
    return peer_id(b) in peer_ids(a) and peer_id(a) in peer_ids(b)


def metric_values(agent: Agent, name: str, label: str) -> dict[str, float]:
    """A counter with one label, by that label's value (values at zero left out)."""
    out = {}
    for line in agent.metrics().splitlines():
        if line.startswith(name + "{"):
            key = line.split(f'{label}="', 1)[1].split('"', 1)[0]
            value = float(line.rsplit(" ", 1)[1])
            if value:
                out[key] = value
    return out


def rejections(agent: Agent) -> dict[str, float]:
    """``nebula_edge_gossip_rejected_total`` by reason (reasons at zero left out)."""
    return metric_values(agent, "nebula_edge_gossip_rejected_total", "reason")


def leb128(n: int) -> bytes:
    """Unsigned LEB128, as Wasm section sizes and protobuf varints are written."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_custom_section(wasm: bytes, name: str, payload: bytes) -> bytes:
    """``wasm`` plus a custom section (id 0, LEB128 size, name, payload): a valid module
    with the same code and other bytes (another sha256, any size)."""
    body = leb128(len(name.encode())) + name.encode() + payload
    return wasm + b"\x00" + leb128(len(body)) + body


def deployed(agent: Agent, name: str, wasm: bytes | Path, **fields: Any) -> dict[str, Any]:
    """Deploy through ``POST /deploy`` and insist on 201; returns the module's JSON."""
    status, body, _ = agent.deploy(name, wasm, **fields)
    assert status == 201, body
    return dict(body["module"])


class OutputLines:
    """The lines a running process (``nebctl -logs -follow``, ``-watch``) prints, read on a
    thread so a test can poll them with :func:`wait_for` while the process keeps going."""

    def __init__(self, stream: Any) -> None:
        self._q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self._q.put(ln) for ln in stream or ()],
                         daemon=True).start()

    def shows(self, text: str) -> bool:
        """Whether any line printed so far contains ``text``."""
        while not self._q.empty():
            self.seen.append(self._q.get().rstrip())
        return any(text in ln for ln in self.seen)
