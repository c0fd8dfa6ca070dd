"""LAN discovery over mDNS: the only module that imports zeroconf.

Owns advertising this agent as ``_nebula-edge._tcp.local.`` (TXT ``peer_id``, ``addrs``,
``version``, ``http_port``), browsing for the other agents, turning their records into
:class:`DiscoveredPeer` values, and the periodic re-announce and re-query. It does not decide
anything about peers: ``on_found`` may fire many times for the same peer and the consumer
dedupes.

Designed around facts measured with python-zeroconf 0.154.0 (the shared notes,
``dependencies.md``; this venv holds 0.150.5, whose code paths used here are the same):

* Discovery between hosts takes 1.2-1.3 s, mostly registration probing. We browse before we
  register so finding others overlaps our own probing.
* The browser sends its start-up queries at about 0, 1, 5 and 14 s, then only refreshes records
  it already holds: a peer cut off at start-up was still missing 100 s after the link healed.
  Re-announcing every 15 s found it 12 s after the heal. So every ``reannounce_s`` (15 s by
  default) we re-announce (``async_update_service``) *and* send a PTR query with our known
  answers, so both sides of a healed link learn about each other within one period. (Either
  alone recovers the link in tests: a service's own multicast question is answered by its own
  responder, and everyone hears that answer; ``test_mdns`` isolates each path.)
* Removal is not a liveness signal: zeroconf raises any PTR TTL below 1125 s to 1125 s, and after
  a SIGKILL the removal arrived after 1115 s. ``Removed`` events are ignored here; liveness comes
  from the mesh's heartbeats.
* A clean ``async_unregister_service`` is seen by others in ~5 ms, but only when its result is
  awaited twice, which :meth:`MdnsService.stop` does.
* ``interfaces=["127.0.0.1"]`` works in the default network namespace and sends nothing out of
  eth0; ``InterfaceChoice.Default`` fails with ENODEV on a loopback-only host, so "all
  interfaces" here means ``InterfaceChoice.All``, never ``Default``.
* A TXT entry is one length byte plus ``key=value``: at most 255 bytes. Long multiaddr lists are
  split over ``addrs0``, ``addrs1``, ... (zeroconf itself raises ValueError past 255).

Threading: nothing here is thread-safe. :class:`MdnsService` runs on the asyncio loop that calls
:meth:`MdnsService.start`; zeroconf attaches to that loop and ``on_found`` is called on it, so
``on_found`` must return quickly and must not block. :func:`encode_txt`, :func:`peer_from_service`
and :func:`interface_ips` are pure or read-only and safe anywhere.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import ipaddress
import logging
import re
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from nebula_edge.errors import NebulaError

__all__ = [
    "DiscoveredPeer",
    "MdnsError",
    "MdnsService",
    "encode_txt",
    "interface_ips",
    "peer_from_service",
]

log = logging.getLogger(__name__)

TXT_ENTRY_MAX = 255
"""Bytes in one TXT string (``key=value``): its length is a single byte on the wire."""
LOOKUP_TIMEOUT_MS = 3000
"""How long to ask for a browsed service's SRV/TXT/A before giving up until its next event."""
MAX_LOOKUPS = 16
"""Service lookups running at once. Each is a task asking for records for up to 3 s; a
LAN of tens of agents starting together needs a few. Anyone can announce any number of
service names, so more wait in a queue of :data:`MAX_PENDING_LOOKUPS`."""
MAX_KNOWN_SERVICES = 512
"""Other agents' service names whose records we keep in zeroconf's cache. zeroconf keeps
every answer it hears until its TTL (the sender chooses it: 75 min for a PTR) and a flood
of forged answers cost ~2.7 KiB each; past 512 names, the one heard of least recently
has its records removed (counted). A real agent evicted so is found again at its next
re-announce (15 s), which also refreshes its dial candidate."""
MAX_PENDING_LOOKUPS = 256
"""Service names waiting for a lookup; past it the name heard of least recently is dropped
(counted). A dropped real agent is looked up again at its next re-announce (15 s)."""

_PEER_ID_RE = re.compile(r"[A-Za-z0-9]{1,128}")
_TOKEN_RE = re.compile(r"[!-~]{1,256}")  # printable ASCII, no spaces
_UNSPECIFIED = ("/ip4/0.0.0.0/", "/ip6/::/")


class MdnsError(NebulaError):
    """mDNS could not start on the chosen interfaces."""

    code = "mdns_error"
    status = 500


@dataclass(frozen=True)
class DiscoveredPeer:
    """Another agent, as its mDNS records describe it."""

    peer_id: str
    """libp2p peer id, from TXT ``peer_id``."""
    p2p_addrs: tuple[str, ...]
    """libp2p multiaddrs with concrete IPs, from TXT ``addrs`` (or ``addrs0``, ``addrs1``, ...)."""
    http_url: str
    """``http://<ip>:<port>`` from the service's first IPv4 address and its SRV port."""
    version: str
    """Software version, from TXT ``version``."""


def encode_txt(
    *, peer_id: str, p2p_addrs: Sequence[str], version: str, http_port: int
) -> dict[str, str]:
    """Return the TXT properties advertising these values; ValueError if they cannot fit.

    The multiaddrs are joined by ``,`` under ``addrs`` when that fits in one TXT string, else
    split, whole multiaddrs only, over ``addrs0``, ``addrs1``, ...
    """
    if not _PEER_ID_RE.fullmatch(peer_id):
        raise ValueError(f"peer id must be 1-128 letters or digits: {peer_id!r}")
    if not _TOKEN_RE.fullmatch(version):
        raise ValueError(f"version must be printable ASCII without spaces: {version!r}")
    for addr in p2p_addrs:
        if not _TOKEN_RE.fullmatch(addr) or "," in addr or not addr.startswith("/"):
            raise ValueError(f"not a multiaddr we can advertise: {addr!r}")
    txt = {"peer_id": peer_id, "version": version, "http_port": str(http_port)}
    joined = ",".join(p2p_addrs)
    if _entry_size("addrs", joined) <= TXT_ENTRY_MAX:
        txt["addrs"] = joined
    else:
        chunks: list[list[str]] = [[]]
        for addr in p2p_addrs:
            key = f"addrs{len(chunks) - 1}"
            if chunks[-1] and _entry_size(key, ",".join([*chunks[-1], addr])) > TXT_ENTRY_MAX:
                chunks.append([])
            chunks[-1].append(addr)
        for index, chunk in enumerate(chunks):
            txt[f"addrs{index}"] = ",".join(chunk)
    for key, value in txt.items():
        if _entry_size(key, value) > TXT_ENTRY_MAX:
            raise ValueError(f"TXT entry {key!r} is over {TXT_ENTRY_MAX} bytes: {value[:40]!r}...")
    return txt


def peer_from_service(
    txt: Mapping[bytes, bytes | None], ipv4_addresses: Sequence[str], port: int | None
) -> DiscoveredPeer:
    """Build a peer from a resolved service's TXT, IPv4 addresses and SRV port.

    Raises ValueError, naming what is wrong, for anything another host could get wrong: missing
    or non-UTF-8 keys, a bad peer id, port or multiaddr, no IPv4 address. Multiaddrs on an
    unspecified address (``/ip4/0.0.0.0/...``, as libp2p's own mDNS advertises) are dropped.
    """
    peer_id = _txt_value(txt, "peer_id")
    if not _PEER_ID_RE.fullmatch(peer_id):
        raise ValueError(f"bad peer_id {peer_id[:40]!r}")
    version = _txt_value(txt, "version")
    if not _TOKEN_RE.fullmatch(version):
        raise ValueError(f"bad version {version[:40]!r}")
    if b"http_port" in txt:
        _port(_txt_value(txt, "http_port"))
    if b"addrs" in txt:
        joined = _txt_value(txt, "addrs")
    else:
        parts: list[str] = []
        while f"addrs{len(parts)}".encode() in txt:
            parts.append(_txt_value(txt, f"addrs{len(parts)}"))
        joined = ",".join(parts)
    addrs = tuple(a for a in joined.split(",") if a)
    for addr in addrs:
        if not addr.startswith("/") or not _TOKEN_RE.fullmatch(addr):
            raise ValueError(f"bad multiaddr {addr[:60]!r}")
    addrs = tuple(a for a in addrs if not a.startswith(_UNSPECIFIED))
    if not ipv4_addresses:
        raise ValueError("no IPv4 address")
    ip = ipaddress.IPv4Address(ipv4_addresses[0])
    http_port = _port(str(port))
    return DiscoveredPeer(peer_id, addrs, f"http://{ip}:{http_port}", version)


def interface_ips(choice: Sequence[str] | None) -> list[str]:
    """The IPv4 addresses to advertise for an interface choice (None or empty: all interfaces).

    A given choice is validated (IPv4 only, ValueError otherwise) and returned without
    duplicates. For all interfaces: the primary IPv4 address of every interface that is up and
    not loopback (Linux ioctls, so secondary addresses of an interface are not listed), or
    ``["127.0.0.1"]`` when there is none.
    """
    if choice:
        ips: list[str] = []
        for item in choice:
            ip = ipaddress.ip_address(item)
            if ip.version != 4:
                raise ValueError(f"mDNS interfaces must be IPv4 addresses, got {item!r}")
            if str(ip) not in ips:
                ips.append(str(ip))
        return ips
    return _host_ipv4_addresses() or ["127.0.0.1"]


class MdnsService:
    """Advertise this agent and report the others (see the module docstring)."""

    SERVICE_TYPE = "_nebula-edge._tcp.local."

    def __init__(
        self,
        *,
        instance_name: str,
        http_port: int,
        peer_id: str,
        p2p_addrs: Sequence[str],
        version: str,
        interfaces: Sequence[str] | None,
        advertise_ips: Sequence[str],
        on_found: Callable[[DiscoveredPeer], None],
        reannounce_s: float = 15.0,
    ) -> None:
        """Validate everything; no socket is opened before :meth:`start`.

        ``interfaces``: IPv4 addresses whose interfaces zeroconf uses; None or empty for all.
        ``advertise_ips``: the A records; empty means :func:`interface_ips` of ``interfaces``.
        ``instance_name`` must be unique on the LAN, e.g. ``f"edge-{peer_id[-12:]}-{port}"``;
        if it is taken anyway, zeroconf appends ``-2``, ``-3``, ... (see :attr:`name`).
        """
        _port(str(http_port))
        if not reannounce_s > 0:
            raise ValueError(f"reannounce_s must be positive, got {reannounce_s!r}")
        self._interfaces = tuple(interface_ips(interfaces)) if interfaces else ()
        self._advertise = tuple(interface_ips(advertise_ips or self._interfaces or None))
        self._txt = encode_txt(
            peer_id=peer_id, p2p_addrs=p2p_addrs, version=version, http_port=http_port
        )
        self._instance_name = instance_name
        self._http_port = http_port
        self._peer_id = peer_id
        self._on_found = on_found
        self._reannounce_s = reannounce_s
        self._azc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._reannouncer: asyncio.Task[None] | None = None
        self._lookups: dict[str, asyncio.Task[None]] = {}
        self._lookup_again: set[str] = set()
        self._pending: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._known: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.services_evicted = 0
        """Service names whose records were removed (:data:`MAX_KNOWN_SERVICES`)."""
        self.lookups_dropped = 0
        """Names dropped from the pending queue (:data:`MAX_PENDING_LOOKUPS`)."""
        self._started = False
        self._stopped = False

    @property
    def name(self) -> str | None:
        """Our full service name once registered (None before)."""
        return None if self._info is None else self._info.name

    @property
    def advertised_ips(self) -> tuple[str, ...]:
        """The IPv4 addresses in our A records."""
        return self._advertise

    async def start(self) -> None:
        """Open the sockets, browse, register (probing takes ~1 s) and start re-announcing.

        Raises :class:`MdnsError` naming the interface choice if zeroconf cannot start there.
        """
        if self._started:
            raise RuntimeError("MdnsService.start() may be called once")
        self._started = True
        where = f"interfaces {list(self._interfaces)}" if self._interfaces else "all interfaces"
        choice: list[str | int] | InterfaceChoice = (
            list(self._interfaces) if self._interfaces else InterfaceChoice.All
        )
        try:
            _check_local(self._interfaces)
            self._azc = AsyncZeroconf(interfaces=choice, ip_version=IPVersion.V4Only)
        except Exception as exc:  # OSError (ENODEV, EADDRINUSE...) or RuntimeError from zeroconf
            self._stopped = True
            raise MdnsError(f"mDNS could not open sockets on {where}: {exc!r}") from exc
        try:
            await self._start(self._azc, where)
        except MdnsError:
            await self.stop()
            raise
        except Exception as exc:
            await self.stop()
            raise MdnsError(f"mDNS could not start on {where}: {exc!r}") from exc
        except BaseException:  # cancelled while probing: leave no socket open
            await self.stop()
            raise

    async def _start(self, azc: AsyncZeroconf, where: str) -> None:
        zc = azc.zeroconf
        await zc.async_wait_for_start()
        # zeroconf only logs an interface it cannot bind or join (e.g. an address that is not
        # on this host) and carries on deaf and mute there; we refuse to.
        senders = len(zc.engine.senders)
        if senders == 0 or senders < len(self._interfaces):
            raise MdnsError(
                f"mDNS could use only {senders} of {where}: is each address on this host, "
                "up, and multicast-capable?"
            )
        self._browser = AsyncServiceBrowser(
            zc, [self.SERVICE_TYPE], handlers=[self._on_state_change]
        )
        info = AsyncServiceInfo(
            self.SERVICE_TYPE,
            f"{self._instance_name}.{self.SERVICE_TYPE}",
            port=self._http_port,
            properties=self._txt,
            server=f"{self._instance_name}.local.",
            parsed_addresses=list(self._advertise),
        )
        await (await azc.async_register_service(info, allow_name_change=True))
        self._info = info
        if info.name != f"{self._instance_name}.{self.SERVICE_TYPE}":
            log.warning("mDNS instance name %r was taken, using %s", self._instance_name, info.name)
        self._reannouncer = asyncio.create_task(
            self._reannounce_loop(azc, info), name=f"mdns-reannounce-{self._instance_name}"
        )
        log.info("mDNS: %s on %s advertising %s", info.name, where, list(self._advertise))

    async def stop(self) -> None:
        """Say goodbye (others see it within ~5 ms), stop browsing and close. Idempotent."""
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        azc = self._azc
        tasks = [t for t in (self._reannouncer, *self._lookups.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if azc is None:
            return
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._info is not None:
            try:
                await (await azc.async_unregister_service(self._info))
            except Exception:  # goodbye is best effort: peers also expire us by heartbeat
                log.debug("mDNS goodbye for %s failed", self._info.name, exc_info=True)
        await azc.async_close()

    async def _reannounce_loop(self, azc: AsyncZeroconf, info: AsyncServiceInfo) -> None:
        while True:
            await asyncio.sleep(self._reannounce_s)
            try:  # a send error now must not end discovery for good
                self._requery()
                await (await azc.async_update_service(info))
            except Exception:
                log.warning("mDNS re-announce/re-query of %s failed", info.name, exc_info=True)

    def _requery(self) -> None:
        # The browser's own scheduler builds the PTR question with our known answers, so peers
        # we already know stay quiet and only the ones we missed answer.
        if self._browser is not None:
            self._browser.query_scheduler.async_send_ready_queries(
                False, current_time_millis(), {self.SERVICE_TYPE}
            )

    def _on_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change is ServiceStateChange.Removed or self._stopped:
            return  # removal arrives after >= 1125 s: useless for liveness (module docstring)
        if self._info is not None and name == self._info.name:
            return
        self._known[name] = None
        self._known.move_to_end(name)
        while len(self._known) > MAX_KNOWN_SERVICES:
            self._forget(zeroconf, self._known.popitem(last=False)[0])
        task = self._lookups.get(name)
        if task is not None:
            self._lookup_again.add(name)  # the running lookup may have read older records
            return
        if len(self._lookups) < MAX_LOOKUPS:
            self._lookups[name] = asyncio.create_task(self._lookup(zeroconf, name))
            return
        self._pending[name] = None
        self._pending.move_to_end(name)
        while len(self._pending) > MAX_PENDING_LOOKUPS:
            self._pending.popitem(last=False)
            self.lookups_dropped += 1

    def _forget(self, zc: Zeroconf, name: str) -> None:
        """Remove a service's records (PTR, SRV, TXT, its host's addresses) from
        zeroconf's cache and its PTR from the browser's refresh schedule."""
        cache = zc.cache
        own = cache.async_entries_with_name(name)
        hosts = {str(h) for r in own if (h := getattr(r, "server", None))}  # SRV targets
        ptrs = [r for r in cache.async_entries_with_name(self.SERVICE_TYPE)
                if getattr(r, "alias", None) == name]
        if self._browser is not None:
            for ptr in ptrs:
                self._browser.query_scheduler.cancel_ptr_refresh(ptr)  # type: ignore[arg-type]
        cache.async_remove_records([*ptrs, *own, *(r for h in hosts
                                                   for r in cache.async_entries_with_name(h))])
        self._pending.pop(name, None)
        self.services_evicted += 1

    def bounds(self) -> list[tuple[str, int, int, int]]:
        """(name, size, limit, dropped) of the lookup bounds, for ``/metrics``."""
        return [("mdns_services", len(self._known), MAX_KNOWN_SERVICES, self.services_evicted),
                ("mdns_lookups", len(self._lookups), MAX_LOOKUPS, 0),
                ("mdns_pending_lookups", len(self._pending), MAX_PENDING_LOOKUPS,
                 self.lookups_dropped)]

    async def _lookup(self, zc: Zeroconf, name: str) -> None:
        try:
            while True:
                self._lookup_again.discard(name)
                await self._lookup_once(zc, name)
                if name not in self._lookup_again:
                    return
        finally:
            del self._lookups[name]
            if self._pending and not self._stopped:
                following, _ = self._pending.popitem(last=False)
                self._lookups[following] = asyncio.create_task(self._lookup(zc, following))

    async def _lookup_once(self, zc: Zeroconf, name: str) -> None:
        info = AsyncServiceInfo(self.SERVICE_TYPE, name)
        try:
            if not await info.async_request(zc, LOOKUP_TIMEOUT_MS):
                log.debug("mDNS: no full answer for %s within %d ms", name, LOOKUP_TIMEOUT_MS)
                return
            peer = peer_from_service(
                info.properties, info.parsed_addresses(IPVersion.V4Only), info.port
            )
        except Exception as exc:  # anything on the LAN may send anything
            log.debug("mDNS: ignoring malformed service %s: %s", name, exc)
            return
        if peer.peer_id == self._peer_id:
            return  # ourselves, e.g. our previous incarnation's records
        try:
            self._on_found(peer)
        except Exception:
            log.exception("mDNS on_found failed for %s", name)


def _check_local(ips: Sequence[str]) -> None:
    """Raise OSError unless each address is on this host (bind only: nothing is sent).

    zeroconf answers an address that is not local with ENODEV from its constructor and leaks
    its listen socket doing so; failing here first gives a clean error and no leak.
    """
    for ip in ips:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((ip, 0))
            except OSError as exc:
                raise OSError(exc.errno, f"{ip} is not an address of this host") from exc


def _entry_size(key: str, value: str) -> int:
    return len(key.encode()) + 1 + len(value.encode())


def _txt_value(txt: Mapping[bytes, bytes | None], key: str) -> str:
    raw = txt.get(key.encode())
    if raw is None:
        raise ValueError(f"no {key} in TXT")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{key} is not UTF-8") from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text[:20]!r}")
    return int(text)


_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8


def _host_ipv4_addresses() -> list[str]:
    """Primary IPv4 address of each up, non-loopback interface (Linux ``struct ifreq`` ioctls)."""
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, ifname in socket.if_nameindex():
            ifreq = struct.pack("40s", ifname.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(sock, _SIOCGIFFLAGS, ifreq), 16)[0]
                if not flags & _IFF_UP or flags & _IFF_LOOPBACK:
                    continue
                # sockaddr_in at offset 16: family (2), port (2), address (4)
                raw = fcntl.ioctl(sock, _SIOCGIFADDR, ifreq)
            except OSError:  # no IPv4 address (EADDRNOTAVAIL), or the interface went away
                continue
            ip = socket.inet_ntoa(raw[20:24])
            if ip not in found:
                found.append(ip)
    return found
