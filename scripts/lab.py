"""`make lab N=5` / `make lab-down`: a LAN of N hosts on this machine, left running for you.

    python scripts/lab.py up N      N network namespaces on a private bridge, one agent each
                                    (tests/netns/lab.py), then how to reach them
    python scripts/lab.py status    the hosts, their agents and what each one sees
    python scripts/lab.py down      remove everything `up` made, by name and PID, and
                                    whatever any lab or test run left (its names start
                                    nel<3 digits><letter>; labs of test runs still
                                    running are left alone)

Needs root. The lab's names and PIDs are kept in a state file (default /tmp/nebula-lab.json,
or --state PATH), which is all `down` needs: it works from any shell, after any crash.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from netns.lab import (  # noqa: E402  (tests/ must be on sys.path first)
    NEBCTL,
    Lab,
    LabError,
    NetnsHTTP,
    existing_names,
    pid_alive,
    sweep_all,
    teardown,
    unavailable,
)

DEFAULT_STATE = Path("/tmp/nebula-lab.json")


def load(state_path: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(state_path.read_text())
        return state
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise SystemExit(f"lab: {state_path} is not a lab state file: {e}") from None


def is_up(state: dict[str, Any]) -> bool:
    ns = existing_names("netns")
    return any(h["ns"] in ns for h in state.get("hosts", [])) or state.get("client_ns") in ns


def peers_seen(http: NetnsHTTP, url: str) -> int | str:
    try:
        status, raw, _ = http.request("GET", f"{url}/peers", timeout=3)
        return len(json.loads(raw)["peers"]) if status == 200 else f"HTTP {status}"
    except Exception as e:
        return f"unreachable ({type(e).__name__})"


def describe(state: dict[str, Any], http: NetnsHTTP | None) -> str:
    cl = state["client_ns"]
    lines = [f"Lab {state['prefix']}: {len(state['hosts'])} hosts on bridge {state['bridge']} "
             f"(10.77.0.0/24, nothing on the host side); client namespace {cl} "
             f"({state['client_ip']})", ""]
    for h in state["hosts"]:
        pid = h.get("pid")
        alive = "running" if pid and pid_alive(pid) else "NOT RUNNING"
        seen = f", sees {peers_seen(http, h['url'])} peers" if http and pid else ""
        lines.append(f"  h{h['index']:<3} {h['url']:<24} netns {h['ns']:<12} agent pid {pid} "
                     f"({alive}{seen})")
        lines.append(f"       data {h['data']}  log {h['log']}")
    h1, last = state["hosts"][0], state["hosts"][-1]
    lines += [
        "",
        "Reach the agents from the client namespace (the host itself is not on the bridge):",
        f"  ip netns exec {cl} curl -s {h1['url']}/healthz",
        f"  ip netns exec {cl} {NEBCTL} -addr {h1['url']} -wasm {ROOT}/sample/double/"
        "double.wasm -name double",
        f"  ip netns exec {cl} curl -s -X POST -d '{{\"name\":\"double\",\"arg\":21}}' "
        f"{last['url']}/exec",
        f"  ip netns exec {cl} {NEBCTL} -addr {last['url']} -peers",
        f"  ip netns exec {cl} {NEBCTL} -addr {last['url']} -list",
        "Break things:",
        f"  ip link set {last['veth']} down        # cut h{last['index']} off (up: heal)",
        f"  kill -9 {last.get('pid')}                       # SIGKILL h{last['index']}'s agent",
        f"  ip netns exec {last['ns']} nft add table inet nel_loss",
        f"  ip netns exec {last['ns']} nft 'add chain inet nel_loss in "
        "{ type filter hook input priority -10; }'",
        f"  ip netns exec {last['ns']} nft add rule inet nel_loss in numgen random mod 100 "
        "\\< 10 drop   # 10 % loss in",
        f"  ip netns exec {last['ns']} bash            # a shell on h{last['index']}",
        "Remove everything: python scripts/lab.py down   (make lab-down)",
    ]
    return "\n".join(lines)


def up(n: int, state_path: Path, wait_s: float) -> int:
    old = load(state_path)
    if old is not None:
        if is_up(old):
            print(f"lab: a lab is already up ({old['prefix']}, state {state_path}); "
                  "run `python scripts/lab.py down` first", file=sys.stderr)
            return 1
        state_path.unlink()
    lab = Lab(n, detached=True, state_path=state_path)
    try:
        lab.up()
    except BaseException as e:
        lab.close()
        print(f"lab: could not start the lab (everything it made is removed): {e}",
              file=sys.stderr)
        return 1
    print(f"{n} agents answer /healthz after {lab.up_s:.1f} s; waiting for them to find each "
          "other by mDNS...")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        seen = [peers_seen(lab.http, h.url) for h in lab.hosts.values()]
        if all(s == n - 1 for s in seen):
            print(f"full mesh after {time.monotonic() - deadline + wait_s:.1f} s")
            break
        time.sleep(0.2)
    else:
        print(f"not a full mesh after {wait_s:.0f} s (see `status` and the logs)")
    print()
    print(describe(lab.state(), lab.http))
    lab.http.close()
    return 0


def status(state_path: Path) -> int:
    state = load(state_path)
    if state is None or not is_up(state):
        print(f"no lab is up (state file {state_path})")
        return 1
    http = NetnsHTTP(state["client_ns"])
    try:
        print(describe(state, http))
    finally:
        http.close()
    return 0


def down(state_path: Path) -> int:
    """Remove the lab of ``state_path``, then whatever any lab or test run left."""
    state = load(state_path)
    if state is not None:
        done = teardown(state)
        state_path.unlink(missing_ok=True)
        print(f"lab {state.get('prefix')}: removed " + (", ".join(done) if done else
                                                           "nothing (it was already gone)"))
    if os.geteuid() != 0:
        print("lab: not root: only the state file was handled (namespaces need root)")
        return 0 if state is None else 1
    swept, kept = sweep_all()
    if swept:
        print("left by earlier labs and test runs, removed: " + ", ".join(swept))
    for what in kept:
        print(f"left alone: {what}")
    if state is None and not swept:
        print("nothing to remove: no lab namespace, bridge, agent or temp dir is left")
    return 0


SYSTEM_NEEDS = (  # (command, Debian package, what needs it)
    ("ip", "iproute2", "the netns lab tests (tests/netns) and `make lab`"),
    ("nft", "nftables", "the lab's loss and partition tests (marked `nft`)"),
)


def check_system() -> int:
    """Say what `make test` will skip on this machine and exactly what to install."""
    missing = [(cmd, pkg, why) for cmd, pkg, why in SYSTEM_NEEDS if shutil.which(cmd) is None]
    for cmd, pkg, why in missing:
        print(f"make test: `{cmd}` not found: {why} will be skipped "
              f"(install: sudo apt-get install -y {pkg})", file=sys.stderr)
    if os.geteuid() != 0:
        print("make test: not root: the netns lab tests will be skipped (run as root to "
              "include them)", file=sys.stderr)
    if os.environ.get("NEBULA_LAB_REQUIRED") == "1" and (missing or os.geteuid() != 0):
        print("make test: NEBULA_LAB_REQUIRED=1: refusing to run with lab tests skipped",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.py", description=__doc__.splitlines()[0])
    ap.add_argument("--state", type=Path, default=Path(os.environ.get(
        "NEBULA_LAB_STATE", str(DEFAULT_STATE))), help=f"state file (default {DEFAULT_STATE})")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start N hosts with an agent each")
    p_up.add_argument("n", type=int, nargs="?", default=5)
    p_up.add_argument("--wait", type=float, default=20, help="seconds to wait for a full mesh")
    sub.add_parser("status", help="show the hosts and what each agent sees")
    sub.add_parser("down", help="remove everything `up` made, and what any lab or test left")
    sub.add_parser("check-system", help="say which system packages `make test` lacks")
    a = ap.parse_args(argv)
    if a.cmd == "check-system":
        return check_system()
    if a.cmd in ("up", "status"):
        why = unavailable()
        if why:
            print(f"lab: {why}", file=sys.stderr)
            return 2
    try:
        if a.cmd == "up":
            if not 1 <= a.n <= 100:
                ap.error("N must be 1..100")
            return up(a.n, a.state, a.wait)
        if a.cmd == "status":
            return status(a.state)
        return down(a.state)
    except LabError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `lab.py up 5 | head`: the lab is up all the same
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
