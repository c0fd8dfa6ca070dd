"""Build single-file ``bin/edge`` and ``bin/nebctl`` for this machine with PyInstaller.

    python packaging/build_binaries.py            # build if missing or older than the sources
    python packaging/build_binaries.py --force    # build anyway
    python packaging/build_binaries.py --check    # exit 1 if a build is needed, build nothing

What goes into the binaries is decided in packaging/nebula_edge.spec; which modules it has
to name by hand was found with packaging/check_imports.py. The Python that runs
this script is the one frozen into them, with the packages installed in it: run it with the
project's venv (``.venv/bin/python``, as ``make`` does) after ``pip install -e '.[build]'``
(PyInstaller; uvloop is bundled when it is installed). Binaries go to bin/, PyInstaller's
work files to build/pyinstaller/ (both ignored by git).

After building, ``bin/edge --version`` is run: a binary that builds but cannot load a native
piece (wasmtime's library, say) fails here rather than on a user's machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
SPEC = PACKAGING / "nebula_edge.spec"
EXE = ".exe" if os.name == "nt" else ""
PROGRAMS = ("edge", "nebctl")


def binaries(dist: Path) -> list[Path]:
    return [dist / f"{name}{EXE}" for name in PROGRAMS]


def inputs() -> list[Path]:
    """Files whose change makes the binaries stale."""
    files = [p for p in (ROOT / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files += [SPEC, *PACKAGING.glob("*_entry.py"), ROOT / "pyproject.toml"]
    return [p for p in files if p.exists()]


def stale_reason(dist: Path) -> str | None:
    """Why the binaries in ``dist`` need building, or None if they are up to date."""
    outs = binaries(dist)
    missing = [p for p in outs if not p.exists()]
    if missing:
        return f"{missing[0]} is missing"
    oldest = min(p.stat().st_mtime for p in outs)
    newer = [p for p in inputs() if p.stat().st_mtime > oldest]
    if newer:
        return f"{newer[0].relative_to(ROOT)} is newer than the binaries"
    return None


@contextlib.contextmanager
def build_lock(work: Path) -> Iterator[None]:
    """One build at a time per work directory (two PyInstallers on one work dir clash)."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".lock", "w") as f:
        if os.name != "nt":
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


def build(dist: Path, work: Path, clean: bool = False) -> float:
    """Run PyInstaller on the spec; returns the seconds it took.

    PyInstaller writes into ``work/dist``; the finished binaries are then moved into
    ``dist`` with an atomic rename, so nobody copying ``bin/edge`` meanwhile (a test run
    in another shell) ever gets half a file.
    """
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        sys.exit(f"build_binaries: PyInstaller is not installed in {sys.executable}; "
                 "install the build extra: pip install -e '.[build]'")
    staging = work / "dist"
    cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
           "--distpath", str(staging), "--workpath", str(work)]
    if clean:
        cmd.append("--clean")
    cmd.append(str(SPEC))
    print("build_binaries:", " ".join(cmd), flush=True)
    started = time.time()
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    took = time.perf_counter() - t0
    dist.mkdir(parents=True, exist_ok=True)
    for staged, final in zip(binaries(staging), binaries(dist), strict=True):
        # Stamped with the build's start: a source edited while PyInstaller ran stays newer.
        os.utime(staged, (started, started))
        try:
            os.replace(staged, final)
        except OSError:  # another file system: not atomic, but rare (a --dist elsewhere)
            shutil.move(staged, final)
    return took


def verify(dist: Path) -> str:
    """``edge --version`` from the new binary, with no venv or project on its path."""
    edge = binaries(dist)[0]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if os.name == "nt":
        env["SYSTEMROOT"] = os.environ.get("SYSTEMROOT", r"C:\Windows")
    r = subprocess.run([str(edge), "--version"], capture_output=True, text=True, env=env,
                       cwd=dist, timeout=120)
    if r.returncode != 0:
        sys.exit(f"build_binaries: {edge} --version failed ({r.returncode}):\n"
                 f"{r.stdout}{r.stderr}")
    return r.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build bin/edge and bin/nebctl (PyInstaller).")
    p.add_argument("--dist", type=Path, default=ROOT / "bin", help="output directory (bin/)")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller",
                   help="PyInstaller work directory (build/pyinstaller/)")
    p.add_argument("--force", action="store_true", help="build even if up to date")
    p.add_argument("--clean", action="store_true", help="empty PyInstaller's cache first")
    p.add_argument("--check", action="store_true",
                   help="only say whether a build is needed (exit 1 if so)")
    a = p.parse_args(argv)
    reason = "--force" if a.force else stale_reason(a.dist)
    if a.check:
        print(f"build_binaries: {'needs a build: ' + reason if reason else 'up to date'}")
        return 1 if reason else 0
    if reason is None:
        print(f"build_binaries: {', '.join(map(str, binaries(a.dist)))} up to date")
        return 0
    with build_lock(a.work):
        # Another build (a test run, `make` in another shell) may have finished meanwhile.
        reason = "--force" if a.force else stale_reason(a.dist)
        if reason is None:
            print(f"build_binaries: {', '.join(map(str, binaries(a.dist)))} up to date")
            return 0
        print(f"build_binaries: building ({reason})", flush=True)
        took = build(a.dist, a.work, a.clean)
    version = verify(a.dist)
    sizes = ", ".join(f"{b.name} {b.stat().st_size / 1e6:.1f} MB" for b in binaries(a.dist))
    print(f"build_binaries: built in {took:.0f} s: {sizes} ({version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
