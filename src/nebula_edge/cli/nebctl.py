"""``nebctl``: deploy, call and inspect modules through an agent's HTTP API.

The product description's interface, exactly::

    nebctl -addr <peer> -wasm <file or URL> -name <alias>     deploy
    nebctl -addr <peer> -list                                 modules
    nebctl -addr <peer> -peers                                peers
    nebctl keygen                                             make a publisher key

plus ``-exec NAME [-arg JSON | -args JSON-list]``, ``-info NAME``, ``-delete NAME``,
``-rollback NAME``, ``-health``; ``-json`` prints the agent's JSON instead of tables.
Exit codes: 0 ok, 1 the agent refused (its error is printed), 2 usage or unreachable.
Standard library only (urllib), so it starts fast and ships small.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from nebula_edge import __version__
from nebula_edge.cli.flags import GoFlags

DOWNLOAD_CAP = 64 * 1024 * 1024


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
    p.add_argument("-peers", "--peers", action="store_true", help="list connected peers")
    p.add_argument("-health", "--health", action="store_true", help="show the agent's health")
    p.flag("exec", metavar="NAME", help="call a module")
    p.flag("arg", help="exec: the argument, as JSON (a bare word is taken as a string)")
    p.flag("args", help="exec: several arguments, as a JSON list")
    p.flag("info", metavar="NAME", help="show a module's versions")
    p.flag("delete", metavar="NAME", help="delete a module mesh-wide")
    p.flag("rollback", metavar="NAME", help="make a module's previous version current")
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
             ctype: str = "application/json", headers: dict[str, str] | None = None
             ) -> tuple[dict[str, Any], dict[str, str]]:
        req = urllib.request.Request(self.addr + path, data=body, method=method,
                                     headers=headers or {})
        if body is not None:
            req.add_header("Content-Type", ctype)
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
    if a.wasm or a.name:
        if not (a.wasm and a.name):
            raise CliError("deploy needs both -wasm <file or URL> and -name <alias>", 2)
        q = {k: v for k, v in (("abi", a.abi), ("export", a.export), ("timeout_ms", a.timeout),
                               ("memory_mb", a.memory), ("fuel", a.fuel),
                               ("max_output_bytes", a.max_output)) if v is not None}
        path = f"/modules/{urllib.parse.quote(a.name, safe='')}"
        if q:
            path += "?" + urllib.parse.urlencode(q)
        wasm = read_wasm(a.wasm)
        signer = Signer(a.key, a.unsigned)
        limits = {k: v for k, v in q.items() if k not in ("abi", "export")}
        order = {"op": "deploy", "name": a.name, "sha256": hashlib.sha256(wasm).hexdigest(),
                 "size": len(wasm), "abi": a.abi, "export": a.export, "limits": limits}
        out, _ = c.call("PUT", path, wasm, "application/wasm",
                        signer.headers(order, signer.floor(c, a.name)))
        m = out["module"]
        text = (f"deployed {m['name']} v{m['version']} ({m['size']} bytes, sha256 "
                f"{m['sha256'][:12]}, abi {m['abi']}"
                + (f", export {m['export']}" if m.get("export") else "") + f") to {c.addr}")
    elif a.exec:
        body: dict[str, Any] = {"name": a.exec}
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
                 str(p.get("modules", "-"))] for p in out["peers"]]
        text = table(rows, ["PEER", "HTTP", "ADDRESS", "CONNECTED", "MODULES"]) if rows \
            else "no peers"
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
        sign_headers: dict[str, str] = {}
        if signer.priv is not None:
            info, _ = c.call("GET", f"/modules/{quoted}")
            if len(info["versions"]) < 2:
                raise CliError(f"{a.rollback} has no previous version to roll back to")
            prev = info["versions"][1]
            sign_headers = signer.headers({"op": "rollback", "name": a.rollback,
                                           "restores": prev["id"],
                                           "sha256": prev["sha256"], "abi": prev["abi"],
                                           "export": prev["export"], "limits": prev["limits"]},
                                          info["current"]["deployed_at"])
        out, _ = c.call("POST", f"/modules/{quoted}/rollback", headers=sign_headers)
        m = out["module"]
        text = f"rolled {m['name']} back: v{m['version']} now runs the bytes of v{m['rollback_of']}"
    elif a.health:
        out, _ = c.call("GET", "/healthz")
        text = "\n".join(f"{k}: {v}" for k, v in out.items())
    else:
        parser.print_usage(sys.stderr)
        raise CliError("nothing to do: give -wasm/-name, -exec, -list, -peers, -info, -delete, "
                       "-rollback or -health", 2)
    print(json.dumps(out, indent=2) if a.json else text)
    return 0


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
