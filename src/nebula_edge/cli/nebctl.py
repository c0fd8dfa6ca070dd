"""``nebctl``: deploy, call and inspect modules through an agent's HTTP API.

The product description's interface, exactly::

    nebctl -addr <peer> -wasm <file or URL> -name <alias>     deploy
    nebctl -addr <peer> -list                                 modules
    nebctl -addr <peer> -peers                                peers
    nebctl keygen                                             make a publisher key

plus ``-exec NAME [-arg JSON | -args JSON-list]``, ``-info NAME``, ``-delete NAME``,
``-rollback NAME``, ``-health``; ``-json`` prints the agent's JSON instead of tables.
``-logs NAME [-follow]`` merges a module's call log from every agent of the mesh, each
line labelled with its agent; ``-watch FILE -name NAME [-arg JSON]`` redeploys on every
change of FILE and shows the new version spreading (the ``spin watch`` loop).
Exit codes: 0 ok, 1 the agent refused (its error is printed), 2 usage or unreachable.
Standard library only (urllib), so it starts fast and ships small; progress bars (a
large upload, propagation) use tqdm, imported only when a terminal shows them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nebula_edge import __version__
from nebula_edge.cli.flags import GoFlags

DOWNLOAD_CAP = 64 * 1024 * 1024
BAR_MIN_BYTES = 1024 * 1024
"""Uploads from this size get a progress bar (on a terminal): smaller ones take < 0.1 s."""
UPLOAD_CHUNK = 256 * 1024
WAIT_S = 30.0
"""How long a deploy shown on a terminal (and -watch) waits for every agent to hold the
new version: a fetch takes well under a second on a LAN, a 48 MiB one about ten."""
POLL_S = 0.2
"""Propagation and -watch poll this often (a GET /modules/NAME, a stat of the file)."""
DEBOUNCE_S = 0.3
"""-watch deploys once the file has not changed for this long (editors and compilers
write in several steps)."""
REDISCOVER_S = 5.0
"""-logs -follow looks for agents that joined this often."""


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def build_parser() -> GoFlags:
    p = GoFlags(prog="nebctl", description="Deploy and run WebAssembly modules on a Nebula-Edge "
                "mesh.", epilog="Examples:\n  nebctl -wasm sample/double/double.wasm -name double"
                "\n  nebctl -exec double -arg 21\n  nebctl -addr http://localhost:8081 -list",
                formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.flag("addr", default=os.environ.get("NEBULA_EDGE_ADDR", "http://localhost:8080"),
           help="agent URL (default http://localhost:8080; env NEBULA_EDGE_ADDR)")
    p.flag("wasm", help="deploy: path or http(s) URL of a .wasm module")
    p.flag("name", help="deploy: module alias")
    p.flag("abi", choices=["export", "wasi"], help="deploy: calling convention (default: detect)")
    p.flag("export", help="deploy: exported function to call (default: detect)")
    p.flag("timeout", type=int, help="deploy: per-call time limit, ms")
    p.flag("memory", type=int, help="deploy: per-call memory limit, MiB")
    p.flag("fuel", type=int, help="deploy: per-call fuel (instruction budget)")
    p.flag("max-output", type=int, help="deploy: cap on a WASI call's output, bytes")
    p.add_argument("-list", "--list", action="store_true", help="list modules")
    p.add_argument("-peers", "--peers", action="store_true",
                   help="list the mesh's live members (DIRECT: connected to this one)")
    p.add_argument("-health", "--health", action="store_true", help="show the agent's health")
    p.flag("exec", metavar="NAME", help="call a module")
    p.flag("arg", help="exec: the argument, as JSON (a bare word is taken as a string)")
    p.flag("args", help="exec: several arguments, as a JSON list")
    p.flag("info", metavar="NAME", help="show a module's versions")
    p.flag("delete", metavar="NAME", help="delete a module mesh-wide")
    p.flag("rollback", metavar="NAME", help="make a module's previous version current")
    p.flag("logs", metavar="NAME", help="show a module's call log from every agent (merged)")
    p.add_argument("-follow", "--follow", action="store_true",
                   help="logs: keep streaming new entries")
    p.flag("watch", metavar="FILE", help="redeploy FILE as -name whenever it changes; "
           "with -arg, call it after each deploy")
    p.flag("wait", type=float, help="deploy: seconds to wait until every agent holds the new "
           f"version (default {WAIT_S:g} on a terminal and with -watch, else 0)")
    p.flag("token", default=os.environ.get("NEBULA_EDGE_TOKEN"),
           help="bearer token (env NEBULA_EDGE_TOKEN)")
    p.flag("key", default=os.environ.get("NEBULA_EDGE_KEY"),
           help="publisher key to sign changes with (env NEBULA_EDGE_KEY; default "
                "~/.config/nebula-edge/publisher.key if it exists)")
    p.add_argument("-unsigned", "--unsigned", action="store_true",
                   help="do not sign, even if a key exists")
    p.add_argument("-json", "--json", action="store_true", help="print JSON for scripts")
    p.add_argument("-version", "--version", action="version", version=f"nebctl {__version__}")
    return p


class Client:
    def __init__(self, addr: str, token: str | None) -> None:
        self.addr = addr.rstrip("/")
        if "://" not in self.addr:
            self.addr = "http://" + self.addr
        self.token = token

    def call(self, method: str, path: str, body: bytes | None = None,
             ctype: str = "application/json", headers: dict[str, str] | None = None,
             progress: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
        data: Any = body
        if body is not None and progress and len(body) >= BAR_MIN_BYTES:
            data = _with_bar(body, f"upload {len(body) / 1048576:.1f} MiB")
        req = urllib.request.Request(self.addr + path, data=data, method=method,
                                     headers=headers or {})
        if body is not None:
            req.add_header("Content-Type", ctype)
            req.add_header("Content-Length", str(len(body)))
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return json.loads(resp.read() or b"{}"), dict(resp.headers)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)["error"]
                msg = f"{err['code']}: {err['message']}"
                extra = {k: v for k, v in err.items() if k not in ("code", "message")}
                if extra:
                    msg += "".join(f"\n  {k}: {v}" for k, v in extra.items())
            except (ValueError, KeyError, TypeError):
                msg = f"HTTP {e.code}: {raw[:200].decode('utf-8', 'replace')}"
            raise CliError(msg) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CliError(f"cannot reach the agent at {self.addr}: is `edge` running? "
                           f"({reason})", 2) from None


    def stream(self, path: str) -> Iterator[dict[str, Any]]:
        """The JSON lines of a streaming answer (``?follow=1``), until it ends."""
        req = urllib.request.Request(self.addr + path)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=3600) as resp:
                for line in resp:
                    if line.strip():
                        yield json.loads(line)
        except urllib.error.HTTPError as e:
            raise CliError(f"HTTP {e.code} from {self.addr}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
            return


def _bar(total: float, desc: str, unit: str) -> Any:
    """A tqdm bar on stderr, or None when stderr is not a terminal (scripts, tests)."""
    if not sys.stderr.isatty():
        return None
    import shutil

    from tqdm import tqdm

    # A terminal that reports no size (0x0, e.g. a bare pty) makes tqdm draw nothing;
    # shutil falls back to 80x24 there.
    size = shutil.get_terminal_size()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=True,
                unit_scale=unit == "B", unit_divisor=1024, ncols=min(size.columns, 100),
                nrows=size.lines)


def _with_bar(body: bytes, desc: str) -> Iterator[bytes] | bytes:
    bar = _bar(len(body), desc, "B")
    if bar is None:
        return body

    def chunks() -> Iterator[bytes]:
        view = memoryview(body)
        try:
            for i in range(0, len(body), UPLOAD_CHUNK):
                chunk = view[i:i + UPLOAD_CHUNK]
                yield bytes(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
    return chunks()


def read_wasm(src: str) -> bytes:
    if src.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(src, timeout=60) as resp:
                data: bytes = resp.read(DOWNLOAD_CAP + 1)
        except (urllib.error.URLError, OSError) as e:
            raise CliError(f"cannot download {src}: {getattr(e, 'reason', e)}", 2) from None
        if len(data) > DOWNLOAD_CAP:
            raise CliError(f"{src} is larger than {DOWNLOAD_CAP} bytes", 2)
        return data
    try:
        return Path(src).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {src}: {e.strerror}", 2) from None


def parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def ago(ts: float) -> str:
    s = max(0, int(time.time() - ts))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


class Signer:
    """Signs orders with the publisher key, if there is one (see nebula_edge.keys)."""

    def __init__(self, key: str | None, unsigned: bool) -> None:
        self.priv: Any = None
        self.pub = ""
        if unsigned:
            return
        from nebula_edge import keys

        path = Path(key) if key else keys.default_key_path()
        if path is None:
            return
        if not path.exists():
            if key:
                raise CliError(f"no key at {path}; make one with `nebctl keygen -key {path}`", 2)
            return
        try:
            self.priv = keys.load_private(path)
        except (OSError, ValueError) as e:
            raise CliError(f"cannot load the key {path}: {e}", 2) from None
        self.pub = keys.public_key_str(self.priv)

    def floor(self, c: Client, name: str) -> float | None:
        """When signing: the time of ``name``'s current version on the agent (None if it
        has none), which the order's time must pass (see ``headers``)."""
        if self.priv is None:
            return None
        try:
            info, _ = c.call("GET", f"/modules/{urllib.parse.quote(name, safe='')}")
        except CliError:
            return None
        at = info.get("current", {}).get("deployed_at")
        return float(at) if isinstance(at, int | float) else None

    def headers(self, order: dict[str, Any], floor: float | None = None) -> dict[str, str]:
        """The signed order's headers. Its time is a hybrid logical clock: now, or just
        after ``floor`` if the name's current version is dated ahead of this clock (a
        publisher whose clock is a little behind can still deploy)."""
        if self.priv is None:
            return {}
        import base64

        from nebula_edge import keys
        from nebula_edge.manifest import canonical
        from nebula_edge.mesh.versions import next_time

        order = {**order, "at": next_time(time.time(), floor), "key": self.pub}
        return {"X-Nebula-Order": base64.b64encode(canonical(order)).decode(),
                "X-Nebula-Signature": keys.sign(self.priv, order)}


def keygen(argv: list[str]) -> int:
    from nebula_edge import keys

    p = GoFlags(prog="nebctl keygen", description="Make an ed25519 publisher key pair.")
    p.flag("key", default=os.environ.get("NEBULA_EDGE_KEY"),
           help="where to write the private key (default ~/.config/nebula-edge/publisher.key)")
    p.add_argument("-force", "--force", action="store_true", help="replace an existing key")
    a = p.parse_args(argv)
    path = Path(a.key) if a.key else keys.default_key_path()
    if path is None:
        raise CliError("no home directory to keep the key in: give -key PATH", 2)
    try:
        pub = keys.generate(path, force=a.force)
    except FileExistsError as e:
        raise CliError(str(e), 2) from None
    print(f"private key: {path} (mode 0600; keep it secret)")
    print(f"public key:  {pub}")
    print(f"\nstart agents with:  edge -trust {pub}")
    return 0


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keygen"]:
        return keygen(argv[1:])
    parser = build_parser()
    a = parser.parse_args(argv)
    c = Client(a.addr, a.token)
    out: Any
    if a.watch:
        if not a.name:
            raise CliError("-watch FILE needs -name <alias>", 2)
        return watch(c, a)
    if a.logs:
        return logs(c, a.logs, a.follow, a.json)
    if a.wasm or a.name:
        if not (a.wasm and a.name):
            raise CliError("deploy needs both -wasm <file or URL> and -name <alias>", 2)
        out, text = deploy(c, a, read_wasm(a.wasm))
        wait = a.wait if a.wait is not None else (WAIT_S if sys.stderr.isatty() else 0.0)
        if wait > 0:
            print(text)
            text = propagation(c, out["module"], wait)
    elif a.exec:
        out, text = call(c, a, a.exec)
    elif a.list:
        out, _ = c.call("GET", "/modules")
        rows = [[m["name"], f"v{m['version']}", m["abi"], m.get("export") or "-",
                 str(m["size"]), m["sha256"][:12], str(m.get("peers", "-")),
                 ago(m["deployed_at"])] for m in out["modules"]]
        text = table(rows, ["NAME", "VERSION", "ABI", "EXPORT", "SIZE", "SHA256", "PEERS",
                            "DEPLOYED"]) if rows else "no modules"
    elif a.peers:
        out, _ = c.call("GET", "/peers")
        rows = [[p["peer_id"], p.get("http_url") or "-", ",".join(p.get("addrs", [])[:1]) or "-",
                 ago(p["connected_since"]) if p.get("connected_since") else "-",
                 "-" if p.get("modules") is None else str(p["modules"]),
                 "yes" if p.get("connected", True) else "no"] for p in out["peers"]]
        text = table(rows, ["PEER", "HTTP", "ADDRESS", "CONNECTED", "MODULES", "DIRECT"]) \
            if rows else "no peers"
    elif a.info:
        out, _ = c.call("GET", f"/modules/{urllib.parse.quote(a.info, safe='')}")
        rows = [[f"v{m['version']}", m["sha256"][:12], m.get("id", "-"), str(m["size"]),
                 ago(m["deployed_at"]), m["publisher"],
                 f"v{m['rollback_of']}" if m.get("rollback_of") else ""]
                for m in out["versions"]]
        cur = out["current"]
        text = (f"{out['name']}: current v{cur['version']}, abi {cur['abi']}"
                + (f", export {cur['export']} {out.get('signature') or ''}"
                   if cur.get("export") else "")
                + f"\nlimits: {json.dumps(cur['limits'])}\n"
                + table(rows, ["VERSION", "SHA256", "ID", "SIZE", "DEPLOYED", "PUBLISHER",
                               "ROLLBACK OF"]))
    elif a.delete:
        signer = Signer(a.key, a.unsigned)
        out, _ = c.call("DELETE", f"/modules/{urllib.parse.quote(a.delete, safe='')}",
                        headers=signer.headers({"op": "delete", "name": a.delete},
                                               signer.floor(c, a.delete)))
        text = f"deleted {out['deleted']}"
    elif a.rollback:
        quoted = urllib.parse.quote(a.rollback, safe="")
        signer = Signer(a.key, a.unsigned)
        # The version below the current one, named by id (numbers may differ per agent).
        info, _ = c.call("GET", f"/modules/{quoted}")
        if len(info["versions"]) < 2:
            raise CliError(f"{a.rollback} has no previous version to roll back to")
        prev = info["versions"][1]
        sign_headers = signer.headers({"op": "rollback", "name": a.rollback,
                                       "restores": prev["id"],
                                       "sha256": prev["sha256"], "abi": prev["abi"],
                                       "export": prev["export"], "limits": prev["limits"]},
                                      info["current"]["deployed_at"])
        out, _ = c.call("POST", f"/modules/{quoted}/rollback",
                        None if sign_headers else json.dumps({"restores": prev["id"]}).encode(),
                        headers=sign_headers)
        m = out["module"]
        text = f"rolled {m['name']} back: v{m['version']} now runs the bytes of v{m['rollback_of']}"
    elif a.health:
        out, _ = c.call("GET", "/healthz")
        text = "\n".join(f"{k}: {v}" for k, v in out.items())
    else:
        parser.print_usage(sys.stderr)
        raise CliError("nothing to do: give -wasm/-name, -exec, -list, -peers, -info, -delete, "
                       "-rollback, -logs, -watch or -health", 2)
    print(json.dumps(out, indent=2) if a.json else text)
    return 0


def deploy(c: Client, a: Any, wasm: bytes) -> tuple[dict[str, Any], str]:
    q = {k: v for k, v in (("abi", a.abi), ("export", a.export), ("timeout_ms", a.timeout),
                           ("memory_mb", a.memory), ("fuel", a.fuel),
                           ("max_output_bytes", a.max_output)) if v is not None}
    path = f"/modules/{urllib.parse.quote(a.name, safe='')}"
    if q:
        path += "?" + urllib.parse.urlencode(q)
    signer = Signer(a.key, a.unsigned)
    limits = {k: v for k, v in q.items() if k not in ("abi", "export")}
    order = {"op": "deploy", "name": a.name, "sha256": hashlib.sha256(wasm).hexdigest(),
             "size": len(wasm), "abi": a.abi, "export": a.export, "limits": limits}
    out, _ = c.call("PUT", path, wasm, "application/wasm",
                    signer.headers(order, signer.floor(c, a.name)), progress=True)
    m = out["module"]
    text = (f"deployed {m['name']} v{m['version']} ({m['size']} bytes, sha256 "
            f"{m['sha256'][:12]}, abi {m['abi']}"
            + (f", export {m['export']}" if m.get("export") else "") + f") to {c.addr}")
    return out, text


def call(c: Client, a: Any, name: str) -> tuple[dict[str, Any], str]:
    body: dict[str, Any] = {"name": name}
    if a.args is not None:
        args = parse_arg(a.args)
        if not isinstance(args, list):
            raise CliError("-args must be a JSON list, e.g. -args '[1, 2]'", 2)
        body["args"] = args
    elif a.arg is not None:
        body["arg"] = parse_arg(a.arg)
    out, headers = c.call("POST", "/exec", json.dumps(body).encode())
    text = json.dumps(out.get("result")) if "result" in out else str(out.get("output", ""))
    if a.json:
        out = {**out, "peer": headers.get("X-Nebula-Peer")}
    return out, text


def _agents(c: Client) -> int:
    """Live agents of the mesh as the agent at ``c`` sees it (itself included)."""
    peers, _ = c.call("GET", "/peers")
    return 1 + len(peers.get("peers", []))


def propagation(c: Client, m: dict[str, Any], wait: float) -> str:
    """Wait until every agent holds version ``m`` (as the agent at ``c`` counts holders),
    or ``wait`` seconds; a bar on a terminal, one summary line either way."""
    t0 = time.monotonic()
    name, version = m["name"], m["version"]
    path = f"/modules/{urllib.parse.quote(name, safe='')}"
    bar = None
    held, total = 1, 1
    try:
        while True:
            total = _agents(c)
            info, _ = c.call("GET", path)
            vs = [v for v in info.get("versions", []) if v.get("version") == version]
            held = int(vs[0].get("peers", 1)) if vs else 0
            if bar is None:
                bar = _bar(total, f"{name} v{version} on agents", "agent")
            if bar is not None:
                bar.total = total
                bar.n = held
                bar.refresh()
            if held >= total or time.monotonic() - t0 >= wait:
                break
            time.sleep(POLL_S)
    finally:
        if bar is not None:
            bar.close()
    took = time.monotonic() - t0
    if held >= total:
        return f"{name} v{version} is on all {total} agents ({took:.1f} s)"
    return f"{name} v{version} is on {held} of {total} agents after {took:.1f} s (still spreading)"


def _label(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _mesh_urls(c: Client) -> list[str]:
    """HTTP URLs of every agent the agent at ``c`` lists (itself first)."""
    urls = [c.addr]
    try:
        peers, _ = c.call("GET", "/peers")
    except CliError as e:
        print(f"nebctl: {e.message}; showing {c.addr} only", file=sys.stderr)
        return urls
    for p in peers.get("peers", []):
        u = p.get("http_url")
        if isinstance(u, str) and u.rstrip("/") not in urls:
            urls.append(u.rstrip("/"))
    return urls


def _log_line(label: str, e: dict[str, Any]) -> str:
    ts = time.strftime("%H:%M:%S", time.localtime(e["at"])) + f".{int(e['at'] % 1 * 1000):03d}"
    if e.get("kind") == "stderr":
        return f"{ts} [{label}] stderr: {e.get('line', '')}"
    what = "ok" if e.get("outcome") == "ok" else f"error {e.get('error')}"
    return f"{ts} [{label}] call v{e.get('version')} {what} {e.get('duration_ms')} ms"


def logs(c: Client, name: str, follow: bool, as_json: bool) -> int:
    """Merge ``name``'s log from every agent, oldest first; with ``follow``, keep going."""
    quoted = urllib.parse.quote(name, safe="")
    lock = threading.Lock()
    last: dict[str, int] = {}
    rows: list[tuple[float, str, int, str, dict[str, Any]]] = []
    found = False
    for url in _mesh_urls(c):
        try:
            out, _ = Client(url, c.token).call("GET", f"/modules/{quoted}/logs")
        except CliError as err:
            if not err.message.startswith("not_found"):
                print(f"nebctl: {_label(url)}: {err.message}", file=sys.stderr)
            last[url] = 0
            continue
        found = True
        entries = out.get("entries", [])
        last[url] = max((x["seq"] for x in entries), default=0)
        rows += [(x["at"], url, x["seq"], _label(url), x) for x in entries]
    if not found and not follow:
        raise CliError(f"not_found: no agent has a log of {name!r}")

    def emit(label: str, e: dict[str, Any]) -> None:
        with lock:
            print(json.dumps({**e, "label": label}) if as_json else _log_line(label, e),
                  flush=True)

    for _, _, _, label, e in sorted(rows, key=lambda r: r[:3]):
        emit(label, e)
    if not follow:
        return 0

    def tail(url: str) -> None:
        for e in Client(url, c.token).stream(
                f"/modules/{quoted}/logs?follow=1&since={last.get(url, 0)}"):
            with lock:
                if e["seq"] <= last.get(url, 0):
                    continue
                last[url] = e["seq"]
            emit(_label(url), e)
        with lock:
            tailing.discard(url)

    tailing: set[str] = set()
    while True:
        for url in _mesh_urls(c):
            with lock:
                if url in tailing:
                    continue
                tailing.add(url)
            threading.Thread(target=tail, args=(url,), daemon=True).start()
        time.sleep(REDISCOVER_S)


def watch(c: Client, a: Any) -> int:
    """Deploy ``a.watch`` as ``a.name`` now and after every change (debounced), show the
    version spreading, and with ``-arg``/``-args`` print one call's result. Ctrl-C ends."""
    path = Path(a.watch)
    wait = a.wait if a.wait is not None else WAIT_S
    deployed = ""
    seen: tuple[int, int] | None = None
    print(f"watching {path} (deploys as {a.name!r} to {c.addr}; Ctrl-C to stop)", flush=True)
    while True:
        try:
            st = path.stat()
            now: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            now = None
        if now is not None and now != seen:
            seen = now
            time.sleep(DEBOUNCE_S)
            continue  # look again: deploy only once it stopped changing
        if now is not None:
            try:
                wasm = path.read_bytes()
            except OSError:
                wasm = b""
            digest = hashlib.sha256(wasm).hexdigest()
            if wasm and digest != deployed:
                deployed = digest
                try:
                    out, text = deploy(c, a, wasm)
                    print(text, flush=True)
                    if wait > 0:
                        print(propagation(c, out["module"], wait), flush=True)
                    if a.arg is not None or a.args is not None:
                        _, result = call(c, a, a.name)
                        print(f"{a.name}({a.args or a.arg}) = {result}", flush=True)
                except CliError as e:
                    print(f"nebctl: {e.message}", file=sys.stderr, flush=True)
                    if e.code == 2:  # the agent is unreachable: try again on the next change
                        deployed = ""
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except CliError as e:
        print(f"nebctl: {e.message}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
