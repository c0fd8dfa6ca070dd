"""A hostile libp2p peer, run as its own process against a real agent's p2p port.

Uses py-libp2p directly (its own fresh ed25519 key, noise + yamux like the agents), never
``nebula_edge.net``: it is what someone else's code could send, not what ours sends.

    python tests/rogue_peer.py garbage <multiaddr>   raw gossipsub streams carrying
                                                     malformed frames and garbage-key RPCs
    python tests/rogue_peer.py publish <multiaddr>   well-formed, signed gossip on the
                                                     agents' topic with invalid content
    python tests/rogue_peer.py origins <multiaddr> N N messages, each from a freshly
                                                     minted origin id (signed by its key)

It connects to ``<multiaddr>`` (``/ip4/127.0.0.1/tcp/<p2p port>/p2p/<peer id>``), does its
mischief, prints one JSON line saying what it sent, then stays connected until its stdin
is closed (the test decides when it has seen enough) and exits 0. Any failure on its own
side exits non-zero with the error on stderr.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import sys
import time
from typing import Any

import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from agents import leb128  # run as `python tests/rogue_peer.py`: tests/ is on sys.path

TOPIC = "nebula-edge/modules/1"
PING = "/nebula-edge/ping/1.0.0"
"""The agents drop a peer that misses 3 pings: the rogue answers them, to stay connected."""
CONNECT_TIMEOUT_S = 15.0
OVERSIZE = 200 * 1024
"""Above the agents' 64 KiB gossip cap, below libp2p's 1 MiB RPC limit: the topic
validator is what must drop it."""


# --- protobuf by hand (so that broken shapes can be written on purpose) -----------------
varint = leb128

def field(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(value)) + value


def garbage_key_rpc() -> bytes:
    """RPC{publish: [Message]} from a sha256 peer id with a garbage ``key`` and signature:
    the signature check must parse the key (this used to kill py-libp2p's Pubsub)."""
    message = b"".join([
        field(1, b"\x12\x20" + secrets.token_bytes(32)),  # from: sha2-256 multihash
        field(2, b"rogue"),  # data
        field(3, secrets.token_bytes(8)),  # seqno
        field(4, TOPIC.encode()),  # topicIDs
        field(5, secrets.token_bytes(64)),  # signature
        field(6, b"\xff\xff\xff\xff"),  # key: not a PublicKey protobuf
    ])
    return field(2, message)


def garbage_streams() -> dict[str, bytes]:
    """What is written on each fresh gossipsub stream, by a name for the report."""
    return {
        "truncated_field": varint(5) + b"\x12\x05ab\x00\x00"[:5],
        "ff_bytes": varint(16) + b"\xff" * 16,
        "short_field_1": varint(53) + b"\x0a\xc8\x01" + b"\x07" * 50,  # 200 announced, 50 sent
        "garbage_key_1": (lambda r: varint(len(r)) + r)(garbage_key_rpc()),
        "garbage_key_2": (lambda r: varint(len(r)) + r)(garbage_key_rpc()),
        "garbage_key_3": (lambda r: varint(len(r)) + r)(garbage_key_rpc()),
        "truncated_varint": b"\xff\xff",
        "varint_11_bytes": b"\xff" * 10 + b"\x01",
        "length_2gib": varint(2**31) + b"x" * 64,
        "frame_1mib_plus_1": varint(1024 * 1024 + 1) + b"\x00" * (1024 * 1024 + 1),
        "unknown_fields": varint(6) + field(15, b"zzzz"),
    }


# --- gossip payloads: signed and well-formed for libp2p, wrong for the agents -----------
def manifest(name: str, wasm: bytes, **over: Any) -> dict[str, Any]:
    m = {"v": 1, "name": name, "version": 1, "sha256": hashlib.sha256(wasm).hexdigest(),
         "size": len(wasm), "abi": "export", "export": "double", "limits": {},
         "deployed_at": time.time(), "publisher": "rogue", "rollback_of": None,
         "signature": None}
    m.update(over)
    return m


def announce(m: dict[str, Any], wasm: bytes | None) -> bytes:
    d: dict[str, Any] = {"v": 1, "type": "announce", "manifest": m}
    if wasm is not None:
        d["wasm"] = base64.b64encode(wasm).decode()
    return json.dumps(d).encode()


def bad_publishes(valid_wasm: bytes) -> list[tuple[str, str | None, bytes]]:
    """(what, the rejection reason the agent should count or None, payload)."""
    other = valid_wasm + b"\x00\x04\x03pad"  # a custom section: valid, different hash
    not_wasm = b"this is not a wasm module"
    return [
        ("not_json", "malformed", b"\xff\xfe{not json"),
        ("json_list", "malformed", b"[1, 2, 3]"),
        ("wrong_version", "malformed", b'{"v": 2, "type": "announce"}'),
        ("unknown_type", "malformed", b'{"v": 1, "type": "explode"}'),
        ("bad_manifest", "malformed",
         json.dumps({"v": 1, "type": "announce",
                     "manifest": {"v": 1, "name": "../../etc", "version": -3}}).encode()),
        ("inline_size_mismatch", "malformed",
         announce(manifest("rogue-size", valid_wasm, size=len(valid_wasm) + 1), valid_wasm)),
        ("hash_mismatch", "hash_mismatch",
         announce(manifest("rogue-hash", valid_wasm, sha256=hashlib.sha256(other).hexdigest()),
                  valid_wasm)),
        ("not_wasm", "invalid_module", announce(manifest("rogue-notwasm", not_wasm), not_wasm)),
        ("wrong_export", "invalid_module",
         announce(manifest("rogue-export", valid_wasm, export="nope"), valid_wasm)),
        ("oversize_200k", None,
         json.dumps({"v": 1, "type": "announce", "pad": "x" * OVERSIZE,
                     "manifest": manifest("rogue-big", valid_wasm)}).encode()),
    ]


# --- fresh origin ids: each message signed by a key minted for it ------------------------
ORIGINS_PER_S = 80.0
"""Below the agents' spam limit (500 msg/s per neighbour and topic) and below what one
agent verifies and handles per second on a loaded 2-core machine (at 150-400/s its reads
fell behind, our ping answers queued behind the flood and it dropped us as frozen)."""


async def publish_from_fresh_origins(host: Any, pubsub: Pubsub, count: int) -> int:
    """``count`` messages, each from an origin id minted for it (validly signed by that
    origin's own key), relayed by this peer: well-formed announcements of one small
    module (malformed ones would get this peer graylisted by gossipsub's scoring and the
    rest ignored before the agent sees them)."""
    from libp2p.peer.id import ID
    from libp2p.pubsub import pubsub as pubsub_module
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.rpc_queue import RpcQueue

    class DeepQueue(RpcQueue):  # the default 32 RPCs silently drop most of a flood
        def __init__(self, max_size: int = 100_000, max_message_size: int = 1 << 20) -> None:
            super().__init__(max_size=max_size, max_message_size=max_message_size)

    for queue in pubsub.peer_queues.values():  # made at connect time
        queue._queue.max_size = 100_000
    pubsub_module.RpcQueue = DeepQueue  # type: ignore[misc]

    good = announce(manifest("rogue-origins", b"\x00asm\x01\x00\x00\x00"), None)

    def mint(i: int) -> Any:
        keys = create_new_key_pair()
        msg = rpc_pb2.Message(data=good, topicIDs=[TOPIC],
                              from_id=ID.from_pubkey(keys.public_key).to_bytes(),
                              seqno=secrets.token_bytes(8))
        msg.signature = keys.private_key.sign(b"libp2p-pubsub:" + msg.SerializeToString())
        msg.key = keys.public_key.serialize()
        return msg

    # Minted in a thread: a trio loop busy signing stops answering the agent's pings
    # (it would drop us as frozen after 4 s).
    messages = await trio.to_thread.run_sync(lambda: [mint(i) for i in range(count)])
    began = trio.current_time()
    for i, msg in enumerate(messages):
        await pubsub.push_msg(host.get_id(), msg)  # our router relays it to the agent
        await trio.sleep_until(began + (i + 1) / ORIGINS_PER_S)
    return count


# --- the peer ---------------------------------------------------------------------------
async def echo_pings(stream: Any) -> None:
    try:
        while True:
            data = await stream.read(8)
            if not data:
                break
            await stream.write(data)
    except Exception:
        pass
    finally:
        with contextlib.suppress(Exception):
            await stream.reset()


async def wait_stdin_closed() -> None:
    await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)


async def main(mode: str, target: str, wasm_path: str | None) -> None:
    info = info_from_p2p_addr(Multiaddr(target))
    listen = Multiaddr("/ip4/127.0.0.1/tcp/0")
    host = new_host(key_pair=create_new_key_pair(), listen_addrs=[listen])
    router = GossipSub(protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11], degree=6, degree_low=4,
                       degree_high=12, heartbeat_interval=1,
                       max_messages_per_topic_per_second=1000.0)
    pubsub = Pubsub(host, router, strict_signing=True)
    host.set_stream_handler(TProtocol(PING), echo_pings)
    report: dict[str, Any] = {"mode": mode, "peer_id": host.get_id().to_base58()}
    try:
        async with host.run([listen]), background_trio_service(pubsub), \
                background_trio_service(router):
            await pubsub.wait_until_ready()
            with trio.fail_after(CONNECT_TIMEOUT_S):
                await host.connect(info)
            if mode == "garbage":
                sent = {}
                for what, data in garbage_streams().items():
                    stream = await host.new_stream(info.peer_id, [TProtocol(PROTOCOL_ID_V12)])
                    try:
                        await stream.write(data)
                        sent[what] = len(data)
                    except Exception as e:  # the agent may reset a stream mid-write
                        sent[what] = f"write failed: {type(e).__name__}"
                    finally:
                        with trio.move_on_after(2), trio.CancelScope(shield=True):
                            try:
                                await stream.close()
                            except Exception:
                                await stream.reset()
                report["streams"] = sent
            elif mode == "publish":
                assert wasm_path is not None, "publish needs the path of a valid module"
                with open(wasm_path, "rb") as f:
                    valid = f.read()
                await pubsub.wait_for_subscription(info.peer_id, TOPIC, timeout=CONNECT_TIMEOUT_S)
                published = []
                for what, reason, payload in bad_publishes(valid):
                    await pubsub.publish(TOPIC, payload)
                    published.append({"what": what, "reason": reason, "bytes": len(payload)})
                report["published"] = published
            elif mode == "origins":
                count = int(wasm_path or "1000")
                await pubsub.wait_for_subscription(info.peer_id, TOPIC, timeout=CONNECT_TIMEOUT_S)
                report["origins"] = await publish_from_fresh_origins(host, pubsub, count)
            else:
                raise SystemExit(f"unknown mode {mode!r}")
            print(json.dumps(report), flush=True)
            await wait_stdin_closed()
    finally:
        pubsub.seen_messages.stop()  # its LastSeenCache thread would outlive trio.run


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else None)
