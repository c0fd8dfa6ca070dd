"""A rogue libp2p peer: dials agents and sends them malformed and oversize input.

Run as a process (inside a lab namespace: ``Lab.spawn(i, [python, rogue.py, ...])``)::

    python tests/netns/rogue.py [-rounds N] [-linger S] MULTIADDR...   # /ip4/A/tcp/P/p2p/ID
    python tests/netns/rogue.py -lies K [-slow-blobs] [-linger S] MULTIADDR...
    python tests/netns/rogue.py -mislabel WASM [-linger S] MULTIADDR...

It speaks real libp2p (TCP + Noise + yamux, an ed25519 identity, gossipsub ``/meshsub``
framing) and answers the agents' pings, so it stays connected while it misbehaves. Per
target and round, each on a fresh stream where the previous one may have been reset:

* pubsub frames that are not protobuf, a 2 GiB length prefix, an 11-byte varint, an RPC
  of 1 MiB + 1 byte (over the 1 MiB receive limit);
* signed publishes on the mesh topic whose data is not JSON, 50,000 nested ``[``, a wrong
  version, garbage manifests, a manifest of 1 TiB, inline bytes whose sha256 does not
  match, inline "Wasm" that does not compile, a garbage tombstone, 900 KiB of data (over
  the 60 KiB gossip limit, under the RPC limit), and 300 back-to-back garbage publishes;
* publishes with no signature, a wrong signature, a garbage key;
* the agent's request protocols with a 4 GiB length, garbage JSON, a path as a sha256.

With ``-lies K`` it sends none of that, only K signed, well-formed announcements of
modules of ``-lie-size`` bytes (default 1 TiB) that nobody has (a liar rather than a
fuzzer); with ``-slow-blobs``, when an agent asks it for their bytes it answers that
that many bytes follow and then trickles one byte a second (a slow-loris holder), for as
long as it lingers. With ``-mislabel WASM``
it only announces WASM's bytes (inline) as ``rogue-mislabel-export``, whose manifest names
an export the module lacks, and as ``rogue-mislabel-abi``, a WASI module that has no
``_start``: both must be refused, also by agents that already hold those bytes.

When the attacks are done it prints one JSON line (what was sent, which sends failed:
resets are expected), then stays connected ``-linger`` seconds (or until its stdin is
closed) answering pings and trickling blobs, so a test can check the mesh while the rogue
is still there. Exit 0
unless it could not connect to any target. Never sends a well-formed deploy or delete
of a real module: it must not change what the honest mesh holds.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import secrets
import struct
import sys
import time
from typing import Any

import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2
from libp2p.utils.varint import encode_uvarint
from multiaddr import Multiaddr

TOPIC = "nebula-edge/modules/1"
MESHSUB = TProtocol("/meshsub/1.1.0")
PING = TProtocol("/nebula-edge/ping/1.0.0")
REQUEST_PROTOCOLS = ("/nebula-edge/sync/1.0.0", "/nebula-edge/blob/1.0.0",
                     "/nebula-edge/info/1.0.0")
SIGNING_PREFIX = b"libp2p-pubsub:"


def frame(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


def rpc_bytes(rpc: Any) -> bytes:
    return frame(rpc.SerializeToString())


class Rogue:
    def __init__(self) -> None:
        self.kp = create_new_key_pair()
        self.host: Any = new_host(key_pair=self.kp,
                                  listen_addrs=[Multiaddr("/ip4/0.0.0.0/tcp/0")])
        self.seq = time.time_ns()
        self.sent: dict[str, int] = {}
        self.failed: dict[str, str] = {}
        self.lie_size = 2**40

    # ---------------------------------------------------------------- messages
    def message(self, data: bytes, *, sign: bool = True, bad_sig: bool = False,
                bad_key: bool = False) -> Any:
        self.seq += 1
        msg = rpc_pb2.Message(from_id=self.host.get_id().to_bytes(), data=data,
                              seqno=self.seq.to_bytes(8, "big"), topicIDs=[TOPIC])
        if sign:
            sig = self.kp.private_key.sign(SIGNING_PREFIX + msg.SerializeToString())
            msg.key = self.kp.public_key.serialize()
            msg.signature = secrets.token_bytes(64) if bad_sig else sig
        if bad_key:
            msg.key = secrets.token_bytes(37)
            msg.signature = secrets.token_bytes(64)
        return msg

    def publish_rpc(self, *msgs: Any) -> bytes:
        rpc = rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=TOPIC)])
        rpc.publish.extend(msgs)
        return rpc_bytes(rpc)

    # ---------------------------------------------------------------- payloads
    @staticmethod
    def gossip_payloads() -> dict[str, bytes]:
        junk = secrets.token_bytes(2000)
        fake_sha = hashlib.sha256(b"nothing").hexdigest()
        manifest = {"v": 1, "name": "rogue-module", "version": 1, "sha256": fake_sha,
                    "size": 2**40, "abi": "export", "export": None, "limits": {},
                    "deployed_at": time.time(), "publisher": "rogue"}
        not_wasm = b"\x00asm\x01\x00\x00\x00" + secrets.token_bytes(64)
        bad_inline = dict(manifest, name="rogue-bad-wasm", size=len(not_wasm),
                          sha256=hashlib.sha256(not_wasm).hexdigest())
        wrong_sha = dict(manifest, name="rogue-wrong-sha", size=len(not_wasm))

        def msg(d: object) -> bytes:
            return json.dumps(d).encode()

        return {
            "not_json": b"\x00\xff" + junk,
            "deep_nesting": b"[" * 50_000,
            "wrong_version": msg({"v": 99, "type": "announce"}),
            "not_object": msg([1, 2, 3]),
            "unknown_type": msg({"v": 1, "type": "explode"}),
            "garbage_manifest": msg({"v": 1, "type": "announce",
                                     "manifest": {"name": 7, "sha256": ["x"]}}),
            "inline_not_wasm": msg({"v": 1, "type": "announce", "manifest": bad_inline,
                                    "wasm": base64.b64encode(not_wasm).decode()}),
            "inline_wrong_sha": msg({"v": 1, "type": "announce", "manifest": wrong_sha,
                                     "wasm": base64.b64encode(not_wasm).decode()}),
            "inline_not_base64": msg({"v": 1, "type": "announce", "manifest": bad_inline,
                                      "wasm": "***"}),
            "garbage_tombstone": msg({"v": 1, "type": "delete", "tombstone": {"name": None}}),
            "oversize_900k": msg({"v": 1, "type": "announce", "pad": "x" * 900_000}),
        }

    @staticmethod
    def lies(k: int, size: int) -> list[bytes]:
        """Announcements of ``k`` modules of ``size`` bytes that nobody holds."""
        return [json.dumps({"v": 1, "type": "announce", "manifest": {
            "v": 1, "name": f"rogue-lie-{n}", "version": 1, "size": size,
            "sha256": hashlib.sha256(secrets.token_bytes(16)).hexdigest(), "abi": "export",
            "export": None, "limits": {}, "deployed_at": time.time(), "publisher": "rogue",
        }}).encode() for n in range(k)]

    # ---------------------------------------------------------------- sending
    async def _send(self, label: str, peer: Any, protocol: TProtocol, data: bytes,
                    read: bool = False) -> None:
        self.sent[label] = self.sent.get(label, 0) + 1
        try:
            with trio.fail_after(10):
                stream = await self.host.new_stream(peer, [protocol])
                try:
                    await stream.write(data)
                    if read:
                        with trio.move_on_after(2):
                            await stream.read(4096)
                    await trio.sleep(0.05)
                finally:
                    with contextlib.suppress(Exception):
                        await stream.reset()
        except Exception as e:  # resets are expected: the agents reject this
            self.failed[label] = f"{type(e).__name__}: {e}"[:200]

    async def attack(self, peer: Any) -> None:
        for label, data in {
            "frame_not_protobuf": frame(secrets.token_bytes(100)),
            "frame_2gib_prefix": encode_uvarint(2**31) + secrets.token_bytes(1000),
            "frame_11_byte_varint": b"\xff" * 10 + b"\x01" + secrets.token_bytes(10),
            "frame_1mib_plus_1": frame(secrets.token_bytes(1024 * 1024 + 1)),
        }.items():
            await self._send(label, peer, MESHSUB, data)
        for label, payload in self.gossip_payloads().items():
            await self._send(f"gossip_{label}", peer, MESHSUB,
                             self.publish_rpc(self.message(payload)))
        junk = b"not json" + secrets.token_bytes(100)
        await self._send("unsigned", peer, MESHSUB,
                         self.publish_rpc(self.message(junk, sign=False)))
        await self._send("bad_signature", peer, MESHSUB,
                         self.publish_rpc(self.message(junk, bad_sig=True)))
        await self._send("garbage_key", peer, MESHSUB,
                         self.publish_rpc(self.message(junk, bad_key=True)))
        flood = b"".join(self.publish_rpc(self.message(secrets.token_bytes(64)))
                         for _ in range(300))
        await self._send("flood_300", peer, MESHSUB, flood)
        for proto in REQUEST_PROTOCOLS:
            p = TProtocol(proto)
            short = proto.split("/")[2]
            await self._send(f"{short}_4gib_length", peer, p, struct.pack(">I", 2**32 - 1))
            await self._send(f"{short}_garbage", peer, p,
                             struct.pack(">I", 100) + secrets.token_bytes(100), read=True)
        path = b"../../../../etc/passwd"
        await self._send("blob_path", peer, TProtocol(REQUEST_PROTOCOLS[1]),
                         struct.pack(">I", len(path)) + path, read=True)

    async def serve_ping(self, stream: Any) -> None:
        try:
            while True:
                buf = b""
                while len(buf) < 8:
                    chunk = await stream.read(8 - len(buf))
                    if not chunk:
                        return
                    buf += chunk
                await stream.write(buf)
        except Exception:
            return

    async def serve_blob_slowly(self, stream: Any) -> None:
        """Promise the announced size, then send one byte a second: holds the asker's fetch."""
        self.sent["slow_blob_served"] = self.sent.get("slow_blob_served", 0) + 1
        try:
            await stream.read(4 + 64)
            promised = min(self.lie_size, 2**32 - 2) + 1
            await stream.write(struct.pack(">I", promised) + b"\x00")
            while True:
                await trio.sleep(1)
                await stream.write(b"\x00")
        except Exception:
            return

    def mislabels(self, wasm: bytes) -> list[bytes]:
        base = {"v": 1, "version": 1, "sha256": hashlib.sha256(wasm).hexdigest(),
                "size": len(wasm), "limits": {}, "deployed_at": time.time(),
                "publisher": "rogue"}
        inline = base64.b64encode(wasm).decode()
        return [json.dumps({"v": 1, "type": "announce", "wasm": inline, "manifest": dict(
            base, name=name, abi=abi, export=export)}).encode()
            for name, abi, export in [("rogue-mislabel-export", "export", "nope"),
                                      ("rogue-mislabel-abi", "wasi", None)]]

    async def lie(self, peer: Any, k: int, size: int) -> None:
        await self._send("lies", peer, MESHSUB,
                         self.publish_rpc(*(self.message(d) for d in self.lies(k, size))))

    async def main(self, targets: list[str], rounds: int, linger: float, lies: int,
                   slow_blobs: bool, mislabel: bytes | None,
                   lie_size: int = 2**40) -> dict[str, Any]:
        self.lie_size = lie_size
        self.host.set_stream_handler(PING, self.serve_ping)
        if slow_blobs:
            self.host.set_stream_handler(TProtocol(REQUEST_PROTOCOLS[1]),
                                         self.serve_blob_slowly)
        connected: list[str] = []
        async with self.host.run([Multiaddr("/ip4/0.0.0.0/tcp/0")]):
            peers = []
            for t in targets:
                info = info_from_p2p_addr(Multiaddr(t))
                try:
                    with trio.fail_after(10):
                        await self.host.connect(info)
                    peers.append(info.peer_id)
                    connected.append(t)
                except Exception as e:
                    self.failed[f"connect {t}"] = f"{type(e).__name__}: {e}"[:200]
            for _ in range(rounds):
                for peer in peers:
                    if mislabel is not None:
                        await self._send("mislabel", peer, MESHSUB, self.publish_rpc(
                            *(self.message(d) for d in self.mislabels(mislabel))))
                    elif lies:
                        await self.lie(peer, lies, lie_size)
                    else:
                        await self.attack(peer)
            report = {"peer_id": self.host.get_id().to_base58(), "connected": connected,
                      "sent": dict(self.sent), "failed": self.failed}
            print(json.dumps(report), flush=True)
            with trio.move_on_after(linger):  # or until our stdin is closed
                await trio.to_thread.run_sync(  # type: ignore[call-arg]
                    sys.stdin.read, abandon_on_cancel=True)
        return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-rounds", type=int, default=1)
    ap.add_argument("-linger", type=float, default=0.0)
    ap.add_argument("-lies", type=int, default=0)
    ap.add_argument("-slow-blobs", dest="slow_blobs", action="store_true")
    ap.add_argument("-lie-size", dest="lie_size", type=int, default=2**40)
    ap.add_argument("-mislabel", type=argparse.FileType("rb"))
    ap.add_argument("targets", nargs="+")
    a = ap.parse_args()
    mislabel = a.mislabel.read() if a.mislabel else None
    report = trio.run(Rogue().main, a.targets, a.rounds, a.linger, a.lies, a.slow_blobs,
                      mislabel, a.lie_size)
    return 0 if report["connected"] else 1


if __name__ == "__main__":
    sys.exit(main())
