"""Import layering, checked on the source with ``ast`` (nothing is imported to check it).

One module family per foreign runtime (wasmtime, libp2p, zeroconf), and dependencies that
flow one way: errors/config/manifest -> store, sandbox, mesh -> net, api -> node -> cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nebula_edge

PKG = Path(nebula_edge.__file__).resolve().parent
SOURCES = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved), including
    imports inside functions, ``TYPE_CHECKING`` blocks, ``__import__("x")`` and
    ``importlib.import_module("x")``."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.add(mod)
            # ``from nebula_edge import node`` imports the submodule nebula_edge.node.
            out.update(f"{mod}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            fname = f.id if isinstance(f, ast.Name) else f.attr if isinstance(
                f, ast.Attribute) else ""
            if fname in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                out.add(node.args[0].value)
    return out


IMPORTS = {module_name(p): imports_of(p) for p in SOURCES}


def importers_of(top: str) -> set[str]:
    return {m for m, imps in IMPORTS.items()
            if any(i == top or i.startswith(top + ".") for i in imps)}


def under(mod: str, *prefixes: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def test_the_scan_sees_the_package() -> None:
    names = set(IMPORTS)
    for expected in ("nebula_edge.errors", "nebula_edge.store.modules",
                     "nebula_edge.sandbox.engine", "nebula_edge.api.app", "nebula_edge.node",
                     "nebula_edge.cli.edge"):
        assert expected in names
    assert "nebula_edge.errors" in IMPORTS["nebula_edge.store.modules"]
    assert "nebula_edge.store.fsutil" in IMPORTS["nebula_edge.sandbox.engine"]


def test_only_the_sandbox_imports_wasmtime() -> None:
    found = importers_of("wasmtime")
    assert found, "the scan found no wasmtime importer at all"
    assert {m for m in found if not under(m, "nebula_edge.sandbox")} == set()


def test_only_net_p2p_modules_import_libp2p() -> None:
    bad = {m for m in importers_of("libp2p") | importers_of("multiaddr")
           if not m.startswith("nebula_edge.net.p2p")}
    assert bad == set()


def test_only_net_mdns_imports_zeroconf() -> None:
    assert importers_of("zeroconf") <= {"nebula_edge.net.mdns"}


LOW = ("nebula_edge.errors", "nebula_edge.config", "nebula_edge.manifest")
ABOVE_STORE = ("nebula_edge.api", "nebula_edge.node", "nebula_edge.net", "nebula_edge.cli")


@pytest.mark.parametrize("layer", ["nebula_edge.store", "nebula_edge.sandbox", *LOW])
def test_lower_layers_never_import_upper_ones(layer: str) -> None:
    bad = {(m, i) for m, imps in IMPORTS.items() if under(m, layer)
           for i in imps if under(i, *ABOVE_STORE)}
    assert bad == set()


@pytest.mark.parametrize("layer", LOW)
def test_errors_config_manifest_import_only_each_other(layer: str) -> None:
    own = {i for m, imps in IMPORTS.items() if under(m, layer) for i in imps
           if under(i, "nebula_edge") and i != "nebula_edge"}
    assert {i for i in own if not under(i, *LOW)} == set()


def test_store_and_sandbox_do_not_import_the_mesh() -> None:
    bad = {(m, i) for m, imps in IMPORTS.items()
           if under(m, "nebula_edge.store", "nebula_edge.sandbox")
           for i in imps if under(i, "nebula_edge.mesh")}
    assert bad == set()


def test_api_talks_to_a_node_not_to_runtimes() -> None:
    for m, imps in IMPORTS.items():
        if under(m, "nebula_edge.api"):
            assert {i for i in imps if under(i, "wasmtime", "libp2p", "zeroconf",
                                             "nebula_edge.net")} == set(), m


def test_the_scanner_resolves_every_import_form(tmp_path: Path) -> None:
    pkg = tmp_path / "nebula_edge" / "store"
    pkg.mkdir(parents=True)
    src = pkg / "x.py"
    src.write_text(
        "import wasmtime\n"
        "from . import fsutil\n"
        "from ..api import app\n"
        "from nebula_edge import node\n"
        "import importlib\n"
        "def f():\n"
        "    import zeroconf.asyncio\n"
        "    importlib.import_module('libp2p')\n"
        "    __import__('nebula_edge.cli.edge')\n")
    global PKG
    saved, PKG = PKG, tmp_path / "nebula_edge"
    try:
        got = imports_of(src)
    finally:
        PKG = saved
    assert {"wasmtime", "nebula_edge.store.fsutil", "nebula_edge.api.app", "nebula_edge.node",
            "zeroconf.asyncio", "libp2p", "nebula_edge.cli.edge"} <= got
