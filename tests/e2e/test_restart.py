"""What survives a restart, who owns a state directory, and what a corrupted blob does."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents import SAMPLES, Agent, AgentPool, edge_env, free_port, run_edge, wait_for
from agents import deployed as deploy

DOUBLE = SAMPLES / "double" / "double.wasm"
CALC = SAMPLES / "misbehave" / "calc.wasm"
JSONSTATS = SAMPLES / "jsonstats" / "jsonstats.wasm"



def sha_of(agent: Agent, name: str) -> str:
    status, body, _ = agent.get(f"/modules/{name}")
    assert status == 200, body
    return str(body["current"]["sha256"])


def corrupt(path: Path) -> None:
    """Flip one byte in place (blobs are read-only files)."""
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_restart_keeps_modules_and_loads_compiled_code_from_disk(
        agent_factory: AgentPool) -> None:
    a = agent_factory()
    deploy(a, "double", DOUBLE)
    deploy(a, "double", DOUBLE, limits={"timeout_ms": 500})  # v2
    deploy(a, "stats", JSONSTATS)
    deploy(a, "add", CALC, export="add")
    assert a.exec("double", 21)[:2] == (200, {"result": 42})
    assert a.exec("stats", [1, 2])[:2] == (200, {"result": {"count": 2, "sum": 3, "min": 1,
                                                            "max": 2}})
    assert a.exec("add", args=[1, 2])[:2] == (200, {"result": 3})
    # Deploy compiles once and caches: the first calls load compiled code, never compile.
    assert a.metric("nebula_edge_compile_cache_total", outcome="hit") == 3
    assert not a.metric("nebula_edge_compile_cache_total", outcome="miss")
    listed = a.get("/modules")[1]
    versions = a.get("/modules/double")[1]["versions"]

    assert a.stop(signal.SIGTERM) == 0
    log = a.log()
    assert "shutting down" in log
    assert "Traceback" not in log

    b = agent_factory(data_root=a.data, port=a.port)
    assert b.get("/modules")[1] == listed
    assert b.get("/modules/double")[1]["versions"] == versions
    assert b.exec("double", 21)[:2] == (200, {"result": 42})
    assert b.exec("stats", [1, 2])[1]["result"]["count"] == 2
    assert b.exec("add", args=[40, 2])[:2] == (200, {"result": 42})
    hits = b.metric("nebula_edge_compile_cache_total", outcome="hit")
    assert hits is not None and hits >= 3
    assert b.metric("nebula_edge_compile_cache_total", outcome="miss") in (None, 0)
    assert b.get("/healthz")[1]["modules"] == 3

    assert b.stop(signal.SIGINT) == 0


def test_restart_after_sigkill(agent_factory: AgentPool) -> None:
    a = agent_factory()
    deploy(a, "double", DOUBLE)
    a.kill()
    assert a.proc.returncode == -signal.SIGKILL
    b = agent_factory(data_root=a.data, port=a.port)
    assert b.exec("double", 21)[:2] == (200, {"result": 42})


def test_two_agents_in_one_directory_have_their_own_state(agent_factory: AgentPool,
                                                          tmp_path: Path) -> None:
    cwd = tmp_path / "shared"
    a = agent_factory(data_root=cwd, data_flag=False)
    b = agent_factory(data_root=cwd, data_flag=False)
    assert "-data" not in a.argv and "-data" not in b.argv
    assert a.port != b.port
    assert a.state_dir == cwd / "data" / str(a.port)
    assert b.state_dir == cwd / "data" / str(b.port)
    assert (a.state_dir / "LOCK").is_file()
    assert (b.state_dir / "LOCK").is_file()

    deploy(a, "double", DOUBLE)
    deploy(b, "add", CALC, export="add")
    assert a.module_names() == ["double"]
    assert b.module_names() == ["add"]
    assert b.exec("double", 1)[0] == 404
    assert a.exec("add", args=[1, 1])[0] == 404
    assert [p.name for p in (a.state_dir / "blobs").iterdir()] == [sha_of(a, "double")]
    assert [p.name for p in (b.state_dir / "blobs").iterdir()] == [sha_of(b, "add")]
    assert sorted(p.name for p in (cwd / "data").iterdir()) == sorted(
        [str(a.port), str(b.port)])


def test_second_agent_on_the_same_state_dir_is_refused(agent_factory: AgentPool) -> None:
    a = agent_factory()
    deploy(a, "double", DOUBLE)
    r = run_edge(a.data, port=a.port, timeout=15)
    assert r.returncode == 1, r.stderr
    assert f"another agent is using {a.state_dir}" in r.stderr
    assert "LOCK" in r.stderr
    assert "Traceback" not in r.stderr
    # The first agent is untouched.
    assert a.exec("double", 21)[:2] == (200, {"result": 42})
    assert a.module_names() == ["double"]


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """Another process holding ``<data>/<port>/LOCK`` through ``DirLock``."""
    data, port = tmp_path / "locked", free_port()
    state = data / str(port)
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from nebula_edge.store.fsutil import DirLock
        d = Path(sys.argv[1])
        d.mkdir(parents=True, exist_ok=True)
        lock = DirLock(d)
        assert lock.acquire()
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(state)], stdin=subprocess.PIPE,
                            env=edge_env())
    try:
        wait_for(lambda: (state / "LOCK").is_file()
                 and (state / "LOCK").read_text().strip() == str(proc.pid), 10,
                 msg="the holder to take the lock")
        yield data, port
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_agent_refuses_a_locked_state_dir(lock_holder: tuple[Path, int]) -> None:
    data, port = lock_holder
    r = run_edge(data, port=port, timeout=15)
    assert r.returncode == 1, r.stderr
    assert f"edge: another agent is using {data / str(port)} (its LOCK is held)" in r.stderr
    assert "Traceback" not in r.stderr


def test_corrupted_blob_on_a_running_agent_is_quarantined(agent_factory: AgentPool) -> None:
    a = agent_factory()
    # Deployed, never called. Deploy caches compiled code (made from verified bytes);
    # drop it so the next call has to read the blob.
    sha = str(deploy(a, "victim", DOUBLE)["sha256"])
    deploy(a, "bystander", CALC, export="add")
    for p in (a.state_dir / "cache").glob(f"{sha}.*"):
        p.unlink()
    corrupt(a.state_dir / "blobs" / sha)

    status, body, _ = a.exec("victim", 1)
    assert status == 500, body
    assert body["error"]["code"] == "corrupt_blob"
    assert body["error"]["sha256"] == sha
    assert not (a.state_dir / "blobs" / sha).exists()
    assert [p.name.split(".")[0] for p in (a.state_dir / "quarantine").iterdir()] == [sha]
    assert a.metric("nebula_edge_quarantined_total") == 1
    assert a.exec("bystander", args=[2, 3])[:2] == (200, {"result": 5})
    assert a.get("/healthz")[0] == 200
    # Asked again, the agent still says why the module cannot run.
    status, body, _ = a.exec("victim", 1)
    assert status == 500, body
    assert body["error"]["code"] == "corrupt_blob", body


def test_corrupted_blob_found_after_a_restart(agent_factory: AgentPool) -> None:
    a = agent_factory()
    deploy(a, "victim", DOUBLE)
    deploy(a, "bystander", CALC, export="add")
    assert a.exec("victim", 1)[:2] == (200, {"result": 2})
    sha = sha_of(a, "victim")
    assert a.stop() == 0
    corrupt(a.state_dir / "blobs" / sha)
    cached = list((a.state_dir / "cache").glob(f"{sha}.*"))
    assert len(cached) == 1  # compiled at deploy, from the verified bytes
    for p in cached:
        p.unlink()

    b = agent_factory(data_root=a.data, port=a.port)
    assert b.exec("bystander", args=[2, 3])[:2] == (200, {"result": 5})
    status, body, _ = b.exec("victim", 1)
    assert status == 500, body
    assert [p.name.split(".")[0] for p in (b.state_dir / "quarantine").iterdir()] == [sha]
    assert not (b.state_dir / "blobs" / sha).exists()
    assert b.get("/healthz")[0] == 200
    assert b.exec("bystander", args=[4, 5])[:2] == (200, {"result": 9})
    assert body["error"]["code"] == "corrupt_blob", body
    assert b.metric("nebula_edge_quarantined_total") == 1
