"""``nebctl -watch FILE -name NAME -arg JSON`` (issue #13): deploys at start and after each
change of the file (debounced), waits until every agent holds the new version, prints one
call's result; the new version then runs on both agents. And a deploy on a terminal shows
an upload bar and the version spreading (issue #12)."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import time
from pathlib import Path

import wasmtime

from agents import (
    NEBCTL,
    ROOT,
    SAMPLES,
    AgentPool,
    OutputLines,
    connected,
    edge_env,
    p2p_addr,
    peer_id,
    wait_for,
    with_custom_section,
)


def times(k: int) -> bytes:
    return bytes(wasmtime.wat2wasm(f'(module (func (export "f") (param i32) (result i32)'
                                   f" local.get 0 i32.const {k} i32.mul))"))


def test_watch_redeploys_on_change_to_every_agent(agent_factory: AgentPool,
                                                  tmp_path: Path) -> None:
    a = agent_factory("-fast", "-mdns=false", mesh=True)
    b = agent_factory("-fast", "-mdns=false", "-peer", p2p_addr(a), mesh=True)
    wait_for(lambda: connected(a, b), 15, msg="A and B to list each other")
    src = tmp_path / "f.wasm"
    src.write_bytes(times(2))
    proc = subprocess.Popen([str(NEBCTL), "-addr", a.url, "-watch", str(src), "-name", "w",
                             "-arg", "21"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT, env=edge_env(), stdin=subprocess.DEVNULL)
    out = OutputLines(proc.stdout)
    printed, seen = out.shows, out.seen

    def result(agent: object, arg: int) -> object:
        status, body, _ = agent.exec("w", arg)  # type: ignore[attr-defined]
        return body.get("result") if status == 200 else None

    try:
        wait_for(lambda: printed("w(21) = 42"), 30, msg=f"the first deploy's call: {seen}")
        assert printed("w v1 is on all 2 agents"), seen
        src.write_bytes(times(3))  # the edit
        wait_for(lambda: printed("w(21) = 63"), 30, msg=f"the redeploy's call: {seen}")
        assert printed("deployed w v2"), seen
        assert printed("w v2 is on all 2 agents"), seen
        assert result(a, 5) == 15 and result(b, 5) == 15  # v2 runs on both
        # GET /modules/{name}: per version, how many agents hold it and which (#12).
        status, info, _ = a.get("/modules/w")
        assert status == 200, info
        v2 = next(v for v in info["versions"] if v["version"] == 2)
        assert v2["peers"] == 2 and set(v2["holders"]) == {peer_id(a), peer_id(b)}, v2
        assert proc.poll() is None, seen
        src.write_bytes(times(3))  # rewritten, same bytes: nothing to deploy
        src.write_bytes(b"not wasm")  # a broken build: an error, the watch goes on
        wait_for(lambda: printed("invalid_module"), 30, msg=f"the refusal: {seen}")
        assert proc.poll() is None, seen
        assert not printed("deployed w v3"), seen
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)


def test_deploy_on_a_terminal_shows_upload_and_propagation(agent_factory: AgentPool,
                                                           tmp_path: Path) -> None:
    a = agent_factory("-fast", "-mdns=false", mesh=True)
    b = agent_factory("-fast", "-mdns=false", "-peer", p2p_addr(a), mesh=True)
    wait_for(lambda: connected(a, b), 15, msg="A and B to list each other")
    big = tmp_path / "big.wasm"  # 3 MiB: over the 1 MiB a bar needs
    big.write_bytes(with_custom_section((SAMPLES / "double" / "double.wasm").read_bytes(),
                                        "pad", os.urandom(3 * 1024 * 1024)))
    pid, fd = pty.fork()  # nebctl's stdout and stderr are a terminal
    if pid == 0:
        os.execve(str(NEBCTL), [str(NEBCTL), "-addr", a.url, "-wasm", str(big), "-name",
                                "big"], edge_env())
    out = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal: it has exited
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    text = out.decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert re.search(r"upload 3\.0 MiB: +100%", text), text  # tqdm's bar, finished
    assert "big v1 on agents" in text, text  # the propagation bar
    assert "big v1 is on all 2 agents" in text, text
