"""The lab: N hosts, each a Linux network namespace on a private bridge, one agent each.

Owns building and tearing down a small LAN inside this machine, and the ways a test breaks
it. Layout for a lab with prefix ``P`` (``nel<pid % 1000><letter>``, unique per lab; every
interface name stays within Linux's 15 characters)::

    bridge P + "br"  (no address on the host side, IPv6 off: the host is not on this LAN)
      |-- veth P-h1 ---- eth0 10.77.0.1/24 in netns P-h1   `edge -port 8080 -data <root>/h1`
      |-- ...
      |-- veth P-hN ---- eth0 10.77.0.N/24 in netns P-hN
      `-- veth P-cl ---- eth0 10.77.0.254/24 in netns P-cl  the test's HTTP client, nebctl

Each host has ``lo`` up and a ``224.0.0.0/4`` route on its ``eth0``, so the agents find
each other by real mDNS, on the namespace's own interface (``NEBULA_EDGE_MDNS_INTERFACES``
is removed from their environment, as are tokens and proxies). The test process is not on
the bridge: its HTTP calls run on worker threads that ``setns()`` into the client namespace
(:class:`NetnsHTTP`; a network namespace is per thread, so the rest of the process is
untouched), and ``nebctl`` runs under ``ip netns exec <client>``.

Breaking things: :meth:`Lab.kill` (SIGKILL), :meth:`Lab.stop`, :meth:`Lab.restart`;
:meth:`Lab.cut`/:meth:`Lab.heal` (the host's veth down/up); :meth:`Lab.loss` (nftables
table ``inet nel_loss`` inside the host, ``numgen random mod 100 < N drop``);
:meth:`Lab.partition` (table ``inet nel_part`` in each host dropping traffic to and from
the other groups, so each side stays a connected mesh).

Clean-up is by name and PID: processes are the ones ``ip netns pids`` lists in our
namespaces (and our own ``Popen`` objects), then the namespaces, veths and bridge by name,
then the temp dir (``NEBULA_LAB_LOGS=<dir>`` keeps a copy of the agents' logs first). It
runs from :meth:`Lab.close` (context manager, fixture finalizer) and atexit. Every lab
keeps its names in a state file, so a run that was itself SIGKILLed is cleaned by the next
one (:func:`sweep_stale`) and ``scripts/lab.py down`` can remove a lab
that ``scripts/lab.py up`` left running (:func:`teardown`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents import HTTP_TIMEOUT, ROOT, Agent, Headers

from .nsutil import (
    EDGE,
    NEBCTL,
    LabError,
    NetnsHTTP,
    existing_names,
    lab_env,
    nft_unavailable,
    no_ipv6,
    pid_alive,
    run,
    teardown,
    unavailable,
)

__all__ = ["CLIENT_IP", "NEBCTL", "PORT", "Host", "Lab", "LabAgent", "LabError", "NetnsHTTP",
           "existing_names", "nft_unavailable", "pid_alive", "sweep_all", "sweep_stale", "teardown",
           "unavailable"]

SUBNET = "10.77.0"
PORT = 8080
CLIENT_IP = f"{SUBNET}.254"
MAX_HOSTS = 200
STATE_DIR = Path(tempfile.gettempdir()) / "nebula-lab.d"
"""Where labs started by tests keep their state file (``<prefix>.json``)."""
LOSS_TABLE = "nel_loss"
PART_TABLE = "nel_part"


# ------------------------------------------------------------------------------ hosts
@dataclass
class Host:
    index: int
    ns: str
    veth: str
    ip: str
    data: Path
    log_path: Path
    agent: LabAgent | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{PORT}"

    @property
    def state_dir(self) -> Path:
        """The agent's store: ``<data>/<port>/`` (blobs/, manifests/, ...)."""
        return self.data / str(PORT)


class LabAgent(Agent):
    """An :class:`agents.Agent` whose HTTP calls and ``nebctl`` go through the client netns."""

    def __init__(self, lab: Lab, host: Host, proc: subprocess.Popen[bytes], log_file: Any,
                 argv: list[str]) -> None:
        super().__init__(proc, PORT, PORT + 1000, host.data, host.log_path, log_file, argv,
                         host.data)
        self.url = host.url
        self.lab = lab
        self.host = host

    def __repr__(self) -> str:
        return f"<LabAgent h{self.host.index} pid={self.proc.pid} {self.url}>"

    def request(self, method: str, path: str, data: bytes | None = None,
                headers: dict[str, str] | None = None,
                timeout: float = HTTP_TIMEOUT) -> tuple[int, bytes, Headers]:
        return self.lab.http.request(method, self.url + path, data, headers, timeout)

    def nebctl(self, *args: str, check: bool = False, timeout: float = 60,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.lab.nebctl("-addr", self.url, *args, check=check, timeout=timeout)


# ------------------------------------------------------------------------------ the lab
_OPEN: set[Lab] = set()
_OPEN_LOCK = threading.RLock()  # re-entered by the signal handler on the main thread


class Lab:
    """A private LAN of hosts with one agent each. Use as a context manager (see the module
    docstring); hosts are numbered from 1 and host ``i`` is ``10.77.0.i``."""

    def __init__(self, n: int = 5, *, agent_args: Sequence[str] = ("-fast",),
                 detached: bool = False, state_path: Path | None = None,
                 start_timeout: float = 60) -> None:
        """``detached``: agents in their own session, no atexit clean-up (``scripts/lab.py
        up``); remove it with :func:`teardown` of its state file."""
        if not 0 <= n < MAX_HOSTS:
            raise ValueError(f"1..{MAX_HOSTS - 1} hosts")
        self.n = n
        self.agent_args = tuple(agent_args)
        self.detached = detached
        self.start_timeout = start_timeout
        self.hosts: dict[int, Host] = {}
        self.root = Path(tempfile.mkdtemp(prefix="nebula-lab-"))
        self.prefix = ""
        self.bridge = ""
        self.client_ns = ""
        self.client_veth = ""
        self._state_path = state_path
        self._procs: list[subprocess.Popen[bytes]] = []
        self._http: NetnsHTTP | None = None
        self._closed = False
        self.up_s: float | None = None
        """Seconds from the first agent launched to the last one answering ``/healthz``."""
        self.healthy_at: float | None = None
        """``time.monotonic()`` when the last agent of :meth:`up` answered ``/healthz``."""

    # -------------------------------------------------------------------- setup
    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def state_path(self) -> Path:
        return self._state_path or STATE_DIR / f"{self.prefix}.json"

    @property
    def http(self) -> NetnsHTTP:
        if self._http is None:
            raise LabError("the lab is not up")
        return self._http

    def up(self) -> Lab:
        """Create the bridge, the client and ``n`` hosts, start every agent, wait for each
        to answer ``/healthz``."""
        if not self.detached:
            with _OPEN_LOCK:
                _OPEN.add(self)
            _clean_up_on_signals()
        self._claim_prefix()
        self._save()
        ns, veth = f"{self.prefix}-cl", f"{self.prefix}-cl"
        self.client_ns, self.client_veth = ns, veth
        self._save()
        self._add_netns(ns, veth, CLIENT_IP)
        self._http = NetnsHTTP(ns)
        for i in range(1, self.n + 1):
            self._add_host(i)
        t0 = time.monotonic()
        for i in self.hosts:
            self._launch(i)
        for i in self.hosts:
            self._wait_healthy(i)
        self.healthy_at = time.monotonic()
        self.up_s = self.healthy_at - t0
        return self

    def _claim_prefix(self) -> None:
        base = f"nel{os.getpid() % 1000:03d}"
        taken = existing_names("netns") | existing_names("link")
        for letter in "abcdefghijklmnopqrstuvwxyz":
            prefix = base + letter
            if any(t.startswith(prefix) for t in taken):
                continue
            if run("ip", "link", "add", "name", f"{prefix}br", "type", "bridge",
                   check=False).returncode != 0:
                continue  # someone else just took it: the bridge is the claim
            self.prefix, self.bridge = prefix, f"{prefix}br"
            self._save()
            no_ipv6(self.bridge)
            run("ip", "link", "set", self.bridge, "type", "bridge", "mcast_snooping", "0")
            run("ip", "link", "set", self.bridge, "up")
            return
        raise LabError(f"no free lab prefix {base}[a-z]: run `ip netns list`, `ip link`")

    def _add_netns(self, ns: str, veth: str, addr: str) -> None:
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        no_ipv6(veth)
        run("ip", "link", "set", veth, "master", self.bridge)
        run("ip", "link", "set", veth, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def _add_host(self, i: int) -> Host:
        name = f"{self.prefix}-h{i}"
        data = self.root / f"h{i}"
        data.mkdir(parents=True, exist_ok=True)
        h = Host(i, name, name, f"{SUBNET}.{i}", data, self.root / f"h{i}.log")
        self.hosts[i] = h
        self._save()
        self._add_netns(h.ns, h.veth, h.ip)
        return h

    def add_host(self, start: bool = True) -> Host:
        """One more host (the next number), its agent started and healthy if ``start``."""
        i = max(self.hosts, default=0) + 1
        if i >= MAX_HOSTS:
            raise LabError("the lab is full")
        h = self._add_host(i)
        if start:
            self.start(i)
        return h

    # -------------------------------------------------------------------- agents
    def _launch(self, i: int) -> LabAgent:
        h = self.hosts[i]
        if h.agent is not None and h.agent.alive():
            raise LabError(f"host {i}'s agent is running (pid {h.agent.proc.pid})")
        h.starts += 1
        argv = ["ip", "netns", "exec", h.ns, str(EDGE), "-port", str(PORT), "-data",
                str(h.data), *self.agent_args]
        log_file = open(h.log_path, "ab")  # noqa: SIM115 - closed by Agent.stop
        log_file.write(f"=== lab: start #{h.starts} of h{i} at {time.strftime('%H:%M:%S')}: "
                       f"{' '.join(argv)}\n".encode())
        log_file.flush()
        # `ip netns exec` execs the command: the PID is the agent's own.
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=h.data, env=lab_env(),
                                start_new_session=self.detached)
        self._procs.append(proc)
        h.agent = LabAgent(self, h, proc, log_file, argv)
        self._save()
        return h.agent

    def _wait_healthy(self, i: int, timeout: float | None = None) -> LabAgent:
        agent = self.agent(i)

        def healthy() -> bool:
            if not agent.alive():
                raise LabError("exited")
            status, body, _ = agent.get("/healthz", timeout=2)
            return status == 200 and body.get("status") == "ok"

        deadline = time.monotonic() + (timeout or self.start_timeout)
        while True:
            try:
                if healthy():
                    return agent
            except LabError:
                code = agent.stop()
                raise LabError(f"h{i}'s agent exited ({code}) before answering /healthz; "
                               f"log:\n{self.log(i)[-3000:]}") from None
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                raise LabError(f"h{i}'s agent did not answer /healthz in time; "
                               f"log:\n{self.log(i)[-3000:]}")
            time.sleep(0.05)

    def agent(self, i: int) -> LabAgent:
        a = self.hosts[i].agent
        if a is None:
            raise LabError(f"host {i} has never had an agent")
        return a

    def start(self, i: int, wait: bool = True) -> LabAgent:
        self._launch(i)
        return self._wait_healthy(i) if wait else self.agent(i)

    def kill(self, i: int) -> None:
        """SIGKILL host ``i``'s agent (no clean shutdown, no mDNS goodbye)."""
        self.agent(i).kill()

    def stop(self, i: int, timeout: float = 15) -> int:
        """SIGTERM, SIGKILL after ``timeout``; returns the exit code."""
        return self.agent(i).stop(signal.SIGTERM, timeout)

    def restart(self, i: int, wait: bool = True) -> LabAgent:
        a = self.hosts[i].agent
        if a is not None and (a.alive() or not a._log_file.closed):
            a.stop(signal.SIGTERM, 15)
        return self.start(i, wait)

    def restart_all(self) -> None:
        """Restart every agent at once (stop all, start all, wait for each)."""
        for h in self.hosts.values():
            a = h.agent
            if a is not None and a.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(a.proc.pid, signal.SIGTERM)
        for h in self.hosts.values():
            a = h.agent
            if a is not None and (a.alive() or not a._log_file.closed):
                a.stop(signal.SIGTERM, 15)
        for i in self.hosts:
            self._launch(i)
        for i in self.hosts:
            self._wait_healthy(i)

    def alive(self, i: int) -> bool:
        a = self.hosts[i].agent
        return a is not None and a.alive()

    def log(self, i: int) -> str:
        """Host ``i``'s agent log, every incarnation of it."""
        a = self.hosts[i].agent
        if a is not None and not a._log_file.closed:
            a._log_file.flush()
        p = self.hosts[i].log_path
        return p.read_text("utf-8", "replace") if p.exists() else ""

    # -------------------------------------------------------------------- talking to hosts
    def get(self, i: int, path: str, timeout: float = HTTP_TIMEOUT) -> tuple[int, Any, Headers]:
        return self.agent(i).get(path, timeout=timeout)

    def exec(self, i: int, name: str, arg: Any = None,
             timeout: float = HTTP_TIMEOUT) -> tuple[int, Any, Headers]:
        return self.agent(i).exec(name, arg, timeout=timeout)

    def nebctl(self, *args: str, check: bool = False,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``nebctl ARGS`` run inside the client namespace."""
        p = subprocess.run(["ip", "netns", "exec", self.client_ns, str(NEBCTL), *args],
                           capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                           env=lab_env(), stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise LabError(f"nebctl {' '.join(args)} -> {p.returncode}: {p.stderr or p.stdout}")
        return p

    def deploy(self, i: int, name: str, wasm: Path, *args: str,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        """``nebctl -addr <host i> -wasm FILE -name NAME ARGS -json`` from the client."""
        return self.nebctl("-addr", self.hosts[i].url, "-wasm", str(wasm), "-name", name,
                           *args, "-json", check=check)

    def spawn(self, i: int | None, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start any process inside host ``i``'s namespace (None: the client's); the lab
        kills it at clean-up if it is still running there."""
        ns = self.client_ns if i is None else self.hosts[i].ns
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("env", lab_env())
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", ns, *argv],
                                                       **kw)
        self._procs.append(proc)
        return proc

    def netns_exec(self, i: int | None, *argv: str, check: bool = True,
                   input: str | None = None) -> subprocess.CompletedProcess[str]:
        ns = self.client_ns if i is None else self.hosts[i].ns
        return run("ip", "netns", "exec", ns, *argv, check=check, input=input)

    # -------------------------------------------------------------------- breaking the network
    def cut(self, i: int) -> None:
        """Host ``i``'s veth down: it hears and reaches nobody (its own addresses stay)."""
        run("ip", "link", "set", self.hosts[i].veth, "down")

    def heal(self, i: int) -> None:
        run("ip", "link", "set", self.hosts[i].veth, "up")

    def _nft(self, i: int, table: str, body: str | None) -> None:
        why = nft_unavailable()
        if why:
            raise LabError(why)
        script = f"table inet {table}\ndelete table inet {table}\n"
        if body is not None:
            script += f"table inet {table} {{\n{body}\n}}\n"
        self.netns_exec(i, "nft", "-f", "-", input=script)

    def loss(self, i: int, percent: int, direction: str = "both") -> None:
        """Drop ``percent``% of host ``i``'s packets at random: ``in``, ``out`` or ``both``
        directions (loopback excluded). Replaces any earlier loss on the host."""
        if not 0 <= percent <= 100 or direction not in ("in", "out", "both"):
            raise ValueError("percent 0..100, direction in/out/both")
        chains = []
        if direction in ("in", "both"):
            chains.append("chain input { type filter hook input priority -10; policy accept;\n"
                          f'  iifname "lo" accept\n  numgen random mod 100 < {percent} drop\n}}')
        if direction in ("out", "both"):
            chains.append("chain output { type filter hook output priority -10; "
                          f'policy accept;\n  oifname "lo" accept\n'
                          f"  numgen random mod 100 < {percent} drop\n}}")
        self._nft(i, LOSS_TABLE, "\n".join(chains))

    def no_loss(self, i: int) -> None:
        self._nft(i, LOSS_TABLE, None)

    def partition(self, *groups: Sequence[int]) -> None:
        """Drop all traffic between hosts of different groups (each group stays a LAN; the
        client still reaches everyone). Hosts in no group are untouched."""
        for g in groups:
            others = sorted({self.hosts[j].ip for o in groups if o is not g for j in o})
            if not others:
                continue
            elems = ", ".join(others)
            body = (f"set other {{ type ipv4_addr; elements = {{ {elems} }} }}\n"
                    "chain input { type filter hook input priority -20; policy accept;\n"
                    "  ip saddr @other drop\n}\n"
                    "chain output { type filter hook output priority -20; policy accept;\n"
                    "  ip daddr @other drop\n}")
            for i in g:
                self._nft(i, PART_TABLE, body)

    def unpartition(self) -> None:
        for i in self.hosts:
            self._nft(i, PART_TABLE, None)

    def reset_network(self) -> None:
        """Every veth up, no loss, no partition."""
        for i, h in self.hosts.items():
            run("ip", "link", "set", h.veth, "up")
            if nft_unavailable() is None:
                self._nft(i, LOSS_TABLE, None)
                self._nft(i, PART_TABLE, None)

    # -------------------------------------------------------------------- state, teardown
    def state(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix, "bridge": self.bridge, "client_ns": self.client_ns,
            "client_veth": self.client_veth, "client_ip": CLIENT_IP, "root": str(self.root),
            "owner_pid": os.getpid(), "detached": self.detached, "port": PORT,
            "hosts": [{"index": h.index, "ns": h.ns, "veth": h.veth, "ip": h.ip,
                       "url": h.url, "data": str(h.data), "log": str(h.log_path),
                       "pid": h.agent.proc.pid if h.agent is not None else None}
                      for h in self.hosts.values()],
            "pids": [p.pid for p in self._procs],
        }

    def _save(self) -> None:
        if not self.prefix:
            return
        path = self.state_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2))
        os.replace(tmp, path)

    def close(self) -> None:
        """Stop every agent and process, remove every namespace, veth, the bridge and the
        temp dir. Idempotent; never raises for something already gone."""
        if self._closed:
            return
        self._closed = True
        self._release()

    def _release(self, wait_http: bool = True) -> None:
        """The work of :meth:`close`; safe to run again, even while an earlier run was
        interrupted by a signal (the handler calls it for every lab still open, without
        waiting for HTTP calls in flight)."""
        for h in self.hosts.values():
            if h.agent is not None and (h.agent.alive() or not h.agent._log_file.closed):
                with contextlib.suppress(Exception):
                    h.agent.stop(signal.SIGKILL, 10)
        for p in self._procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.wait(10)
        if self._http is not None:
            self._http.close(wait=wait_http)
        keep = os.environ.get("NEBULA_LAB_LOGS")
        if keep and self.prefix:  # for a person reading what happened, after the fact
            dest = Path(keep) / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.prefix}"
            dest.mkdir(parents=True, exist_ok=True)
            for h in self.hosts.values():
                if h.log_path.exists():
                    shutil.copy(h.log_path, dest / h.log_path.name)
        if self.prefix:
            teardown(self.state())
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
        shutil.rmtree(self.root, ignore_errors=True)
        with _OPEN_LOCK:
            _OPEN.discard(self)


def sweep_stale() -> list[str]:
    """Tear down test labs whose owner process is gone (a run that was SIGKILLed)."""
    done: list[str] = []
    if not STATE_DIR.is_dir():
        return done
    for path in STATE_DIR.glob("*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if state.get("detached") or pid_alive(int(state.get("owner_pid", 0))):
            continue
        done += teardown(state)
        path.unlink(missing_ok=True)
    return done


LAB_NAME = re.compile(r"nel\d{3}[a-z]")
"""The start of every name a lab gives (``nel<pid % 1000><letter>``): namespaces
``P-h1``.., ``P-cl``, veths of the same names, bridge ``Pbr``. Nothing else matches."""
_AGENT_DATA = re.compile(r"(" + re.escape(tempfile.gettempdir()) + r"/nebula-lab-[^/\x00]+)/h\d+")


def sweep_all() -> tuple[list[str], list[str]]:
    """Remove everything any lab or test run left (``make lab-down``); returns (what was
    removed, what was left because its owner still runs).

    Test labs whose owner process is alive are left alone (another run on this machine);
    everything else is removed: labs named in state files, then by the lab's own name
    prefix (:data:`LAB_NAME`) any namespace and link, then by PID any ``edge`` agent
    whose ``-data`` is under a lab's temp dir (``/tmp/nebula-lab-*``), then those dirs.
    """
    done: list[str] = []
    kept: list[str] = []
    live_prefixes: set[str] = set()
    live_roots: set[str] = set()
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        owner = int(state.get("owner_pid", 0))
        if not state.get("detached") and owner != os.getpid() and pid_alive(owner):
            live_prefixes.add(str(state.get("prefix")))
            live_roots.add(str(state.get("root")))
            kept.append(f"lab {state.get('prefix')} (its test run, pid {owner}, is running)")
            continue
        done += teardown(state)
        path.unlink(missing_ok=True)

    def ours(name: str) -> bool:
        m = LAB_NAME.match(name)
        return m is not None and m.group(0) not in live_prefixes

    for ns in sorted(n for n in existing_names("netns") if ours(n)):
        done += teardown({"hosts": [{"ns": ns, "veth": ""}]})
    for link in sorted(n for n in existing_names("link") if ours(n)):
        if run("ip", "link", "del", link, check=False).returncode == 0:
            done.append(f"link {link}")
    agents = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\x00")
        except OSError:
            continue
        text = b" ".join(argv).decode(errors="replace")
        m = _AGENT_DATA.search(text)
        if m and "-data" in text and "edge" in text and m.group(1) not in live_roots:
            agents.append(int(proc.name))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in agents:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                    done.append(f"{signal.Signals(sig).name} agent pid {pid}")
        deadline = time.monotonic() + 5
        while any(pid_alive(p) for p in agents) and time.monotonic() < deadline:
            time.sleep(0.05)
    for root in Path(tempfile.gettempdir()).glob("nebula-lab-*"):
        if root.is_dir() and str(root) not in live_roots:
            shutil.rmtree(root, ignore_errors=True)
            done.append(f"dir {root}")
    return done, kept


@atexit.register
def _close_open_labs() -> None:
    with _OPEN_LOCK:
        labs = list(_OPEN)
    for lab in labs:
        lab.close()


def _on_signal(signum: int, frame: Any) -> None:
    """SIGTERM or SIGINT to the process that owns labs (pytest): remove them first.

    SIGTERM would otherwise end Python without atexit or fixture finalizers (five
    namespaces, a bridge and five agents were left). Then the signal does what it did
    before: SIGINT raises KeyboardInterrupt (pytest stops and reports), SIGTERM ends the
    process with the default action.
    """
    with _OPEN_LOCK:
        labs = list(_OPEN)
    for lab in labs:
        lab._closed = True
        with contextlib.suppress(Exception):
            lab._release(wait_http=False)
    previous = _PREVIOUS_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL if previous is None else previous)
    os.kill(os.getpid(), signum)


_PREVIOUS_HANDLERS: dict[int, Any] = {}


def _clean_up_on_signals() -> None:
    """Install :func:`_on_signal` for SIGTERM and SIGINT, once (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) is not _on_signal:
            _PREVIOUS_HANDLERS[sig] = signal.getsignal(sig)
            signal.signal(sig, _on_signal)
