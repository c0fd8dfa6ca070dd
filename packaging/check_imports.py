"""Find imports PyInstaller's analysis missed, by testing: run the agents from the venv
through a mesh scenario, record every module they imported (``sys.modules`` at exit), and
list those that the frozen ``bin/edge`` / ``bin/nebctl`` do not carry.

    .venv/bin/python packaging/check_imports.py          # after packaging/build_binaries.py

The scenario: two agents with the mesh on (mDNS on 127.0.0.1 only, ``-fast``), a publisher
key made with ``nebctl keygen``, a signed deploy of ``double`` (export ABI, gossiped inline)
and ``jsonstats`` (WASI, 43 KB: fetched over the libp2p blob stream) to A, both called on
B, then list / peers / info / health / delete with nebctl and /metrics, /openapi.json over
HTTP. Exit status 1 if anything is missing; add it to packaging/nebula_edge.spec.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import smoke

ROOT = smoke.ROOT
# Runs a module as __main__ (like `python -m`) and, at exit, writes the names of every
# module it imported (sys.modules) to the file named by the first argument.
RECORDER = """
import atexit, json, runpy, sys
out = sys.argv.pop(1)
def names():  # real modules only: not aliases (os.path) nor runtime-made ones (cffi's lib)
    return sorted(k for k, m in list(sys.modules.items())
                  if getattr(m, "__name__", None) == k and getattr(m, "__spec__", None))
atexit.register(lambda: open(out, "w").write(json.dumps(names())))
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""
# Imported by the recorder, `-c` or the venv's site machinery, not by the programs (a
# frozen binary has its own bootstrap), and stdlib modules every Python has built in.
IGNORE = re.compile(r"^(__main__|runpy|site|sitecustomize|usercustomize|_distutils_hack.*|"
                    r"__editable__.*|_virtualenv|encodings\..*|_sitebuiltins|pkgutil|"
                    r"importlib\.util|importlib\.machinery|_frozen_importlib.*|zipimport|"
                    r"rlcompleter|readline|"
                    # only imported by rich, which the spec excludes (httpx's CLI pulls it)
                    r"colorsys)$")


def spec_excludes() -> set[str]:
    """The top-level names nebula_edge.spec leaves out on purpose (its EXCLUDES list)."""
    text = (Path(__file__).resolve().parent / "nebula_edge.spec").read_text()
    block = re.search(r"^EXCLUDES = \[(.*?)^\]", text, re.S | re.M)
    assert block, "no EXCLUDES list in nebula_edge.spec"
    return set(re.findall(r'"([^"]+)"', block.group(1)))


def recorded(path: Path) -> set[str]:
    return set(json.loads(path.read_text())) if path.exists() else set()


def frozen_modules(binary: Path) -> set[str]:
    """Every module a PyInstaller one-file binary can import without the outside world."""
    from PyInstaller.archive.readers import CArchiveReader

    arc = CArchiveReader(str(binary))
    mods: set[str] = set(sys.builtin_module_names)
    for name, entry in arc.toc.items():
        typecode = entry[-1]
        if typecode == "m":  # modules PyInstaller's bootstrap needs (struct, pyimod0x)
            mods.add(name)
        elif typecode == "z":  # the PYZ archive of pure-Python modules
            mods.update(arc.open_embedded_archive(name).toc)
        elif name == "base_library.zip":  # the stdlib modules needed to bootstrap
            with zipfile.ZipFile(io.BytesIO(arc.extract(name))) as z:
                mods.update(n.removesuffix(".pyc").replace("/", ".").removesuffix(".__init__")
                            for n in z.namelist() if n.endswith(".pyc"))
        elif typecode in ("b", "e") and re.search(r"\.(so|pyd)$", name):
            # An extension module: pkg/sub/_mod.cpython-311-x86_64-linux-gnu.so is
            # pkg.sub._mod; python3.11/lib-dynload/_ssl.cpython-...so is _ssl.
            head, _, file = name.replace("\\", "/").rpartition("/")
            stem = file.split(".", 1)[0]
            pkg = "" if (not head or "lib-dynload" in head) else head.replace("/", ".")
            mods.add((f"{pkg}.{stem}" if pkg else stem).removesuffix(".__init__"))
    return mods


def run_scenario(work: Path) -> tuple[set[str], set[str]]:
    py = sys.executable
    rec = work / "modules"
    rec.mkdir()
    counter = iter(range(10**6))

    def recording(module: str) -> list[str]:
        return [py, "-c", RECORDER, str(rec / f"{module}-{next(counter)}.json"), module]

    env = smoke.clean_env(NEBULA_EDGE_MDNS_INTERFACES=smoke.HOST)
    nenv = smoke.clean_env(HOME=str(work))

    def ctl(*args: str) -> str:
        r = smoke.run([*recording("nebula_edge.cli.nebctl"), *args], nenv, work)
        assert r.returncode == 0, f"nebctl {args}: {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    key = work / "publisher.key"
    ctl("keygen", "-key", str(key))
    (work / "a").mkdir()
    (work / "b").mkdir()
    a = smoke.Agent(recording("nebula_edge"), work / "a", env, "-fast", mesh=True)
    b = smoke.Agent(recording("nebula_edge"), work / "b", env, "-fast", mesh=True)
    try:
        for x in (a, b):
            x.wait_healthy(timeout=120)
        tag = uuid.uuid4().hex[:6]
        samples = {f"double-{tag}": (ROOT / "sample/double/double.wasm", 21, {"result": 42}),
                   f"stats-{tag}": (ROOT / "sample/jsonstats/jsonstats.wasm", [1, 2, 3],
                                    None)}
        for name, (wasm, _, _) in samples.items():
            ctl("-addr", a.url, "-key", str(key), "-wasm", str(wasm), "-name", name)
        for name, (_, arg, want) in samples.items():

            def ran(name: str = name, arg: object = arg, want: object = want) -> bool:
                status, body, _ = b.exec(name, arg)
                return status == 200 and (want is None or body == want)

            smoke.wait_until(ran, 60, f"{name} to run on B")
        ctl("-addr", b.url, "-list")
        ctl("-addr", b.url, "-peers")
        ctl("-addr", b.url, "-info", f"double-{tag}")
        ctl("-addr", b.url, "-health")
        ctl("-addr", b.url, "-exec", f"double-{tag}", "-arg", "21", "-json")
        for path in ("/metrics", "/openapi.json", "/modules"):
            status, _, _ = smoke.http("GET", b.url + path)
            assert status == 200, (path, status)
        ctl("-addr", a.url, "-key", str(key), "-delete", f"double-{tag}")
    finally:
        codes = [x.stop() for x in (a, b)]
    assert codes == [0, 0], f"exit codes {codes}\n{a.log()[-2000:]}"
    edge_seen: set[str] = set()
    nebctl_seen: set[str] = set()
    for f in rec.glob("*.json"):
        (edge_seen if f.name.startswith("nebula_edge-") else nebctl_seen).update(recorded(f))
    assert edge_seen and nebctl_seen, "no module list was recorded"
    return edge_seen, nebctl_seen


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="nebula-edge-imports-"))
    try:
        seen = dict(zip(("edge", "nebctl"), run_scenario(work), strict=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bad = 0
    excluded = spec_excludes()
    for prog, mods in seen.items():
        binary = ROOT / "bin" / f"{prog}{smoke.EXE}"
        have = frozen_modules(binary)
        missing = sorted(m for m in mods if m not in have and not IGNORE.match(m)
                         and m.split(".")[0] not in excluded)
        print(f"{prog}: {len(mods)} modules imported at run time, {len(missing)} not in {binary}")
        for m in missing:
            print("   ", m)
        bad += len(missing)
    print(json.dumps({"missing": bad}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
