"""Low-level pieces of the lab: ``ip``/``nft`` commands, names and PIDs, HTTP from inside a
network namespace, and tearing a lab down from its state alone.

Nothing here knows about agents or scenarios (that is ``lab.py``). :class:`NetnsHTTP` is
thread-safe; the rest are plain functions that run commands and read ``/proc``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agents import HTTP_TIMEOUT, Headers, wait_for

BIN = Path(sys.executable).parent
EDGE = BIN / "edge"
NEBCTL = BIN / "nebctl"
_CLONE_NEWNET = 0x40000000
_ENV_DROP = ("NEBULA_EDGE_MDNS_INTERFACES", "NEBULA_EDGE_TOKEN", "NEBULA_EDGE_ADDR",
             "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy")


class LabError(RuntimeError):
    """A lab command failed (the message has the command and its stderr)."""


# ------------------------------------------------------------------------------ commands
def run(*argv: str, check: bool = True, input: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text; ``check`` raises :class:`LabError` with its stderr."""
    p = subprocess.run(list(argv), capture_output=True, text=True, input=input,
                       timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(argv)} -> {p.returncode}: {p.stderr.strip()}")
    return p


def unavailable() -> str | None:
    """Why the lab cannot run here (None if it can): root, ``ip netns``, the venv scripts."""
    if os.geteuid() != 0:
        return "the netns lab needs root (network namespaces, veth, a bridge)"
    if shutil.which("ip") is None:
        return "the netns lab needs `ip` (iproute2)"
    try:
        if run("ip", "netns", "list", check=False).returncode != 0:
            return "`ip netns list` fails here: no network namespaces"
    except (OSError, subprocess.SubprocessError) as e:
        return f"`ip netns` is unavailable: {e}"
    if not EDGE.exists() or not NEBCTL.exists():
        return f"no edge/nebctl next to {sys.executable}: install the project in this venv"
    return None


def nft_unavailable() -> str | None:
    return None if shutil.which("nft") else "nftables (`nft`) is not installed"


def lab_env() -> dict[str, str]:
    """The environment of agents and nebctl in the lab: no mDNS interface pin, no tokens,
    no proxies (a proxy would be unreachable from inside the namespaces)."""
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_PROXY"] = env["no_proxy"] = "*"
    return env


def existing_names(kind: str) -> set[str]:
    if kind == "netns":
        out = run("ip", "netns", "list", check=False).stdout
    else:
        out = run("ip", "-o", "link", "show", check=False).stdout
        out = "\n".join(line.split(":")[1].split("@")[0] for line in out.splitlines()
                        if line.count(":") >= 2)
    return {line.split()[0].strip() for line in out.splitlines() if line.strip()}


def ns_pids(ns: str) -> list[int]:
    p = run("ip", "netns", "pids", ns, check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()] if p.returncode == 0 else []


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


# ------------------------------------------------------------------------------ HTTP in a netns
def _enter_netns(ns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(method: str, url: str, data: bytes | None, headers: dict[str, str] | None,
          timeout: float) -> tuple[int, bytes, Headers]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read(), Headers(resp.headers.items())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read(), Headers(e.headers.items())


class NetnsHTTP:
    """HTTP requests made from inside network namespace ``ns``, on worker threads that
    joined it with ``setns(CLONE_NEWNET)``. Thread-safe."""

    def __init__(self, ns: str, workers: int = 8) -> None:
        self.ns = ns
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"http-{ns}",
                                        initializer=_enter_netns, initargs=(ns,))

    def request(self, method: str, url: str, data: bytes | None = None,
                headers: dict[str, str] | None = None,
                timeout: float = HTTP_TIMEOUT) -> tuple[int, bytes, Headers]:
        return self._pool.submit(_http, method, url, data, headers, timeout).result()

    def close(self, wait: bool = True) -> None:
        """Wait for the workers to end: a thread still in the namespace keeps it alive
        (``wait=False`` from a signal handler: its name is removed all the same)."""
        self._pool.shutdown(wait=wait, cancel_futures=True)


def no_ipv6(ifname: str) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")


def _all_gone(pids: list[int]) -> bool:
    return not any(pid_alive(p) for p in pids)


def teardown(state: dict[str, Any]) -> list[str]:
    """Remove what a lab's state names: processes in its namespaces (by PID, from ``ip netns
    pids``), the namespaces, veths and bridge (by name), its temp dir. Returns what it did."""
    done: list[str] = []
    namespaces = [h["ns"] for h in state.get("hosts", [])]
    if state.get("client_ns"):
        namespaces.append(state["client_ns"])
    existing = existing_names("netns")
    namespaces = [ns for ns in namespaces if ns in existing]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for ns in namespaces for pid in ns_pids(ns)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                done.append(f"{signal.Signals(sig).name} pid {pid}")
        with contextlib.suppress(AssertionError):
            wait_for(functools.partial(_all_gone, pids), 5 if pids else 0,
                     msg="lab processes to exit")
    for ns in namespaces:
        if run("ip", "netns", "del", ns, check=False).returncode == 0:
            done.append(f"netns {ns}")
    links = existing_names("link")
    veths = [h["veth"] for h in state.get("hosts", [])] + [state.get("client_veth") or ""]
    for link in [*veths, state.get("bridge") or ""]:
        if link and link in links and run("ip", "link", "del", link,
                                          check=False).returncode == 0:
            done.append(f"link {link}")
    root = state.get("root")
    if root and Path(root).name.startswith("nebula-lab-") and Path(root).exists():
        shutil.rmtree(root, ignore_errors=True)
        done.append(f"dir {root}")
    return done
