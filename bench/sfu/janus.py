"""Janus 1.1.x as the reference SFU of the forwarding benchmark.

Three pieces, all driven by :mod:`bench.sfu.run` with ``--mode janus``:

* :func:`write_config` writes a minimal Janus configuration into a temporary
  directory: only the VideoRoom plugin and the HTTP transport are loadable
  (the plugin and transport folders hold a symlink to those two libraries,
  nothing else), the HTTP API listens on 127.0.0.1 only, there is no STUN or
  TURN server, and ICE gathers one loopback candidate only,
  ``127.0.0.2`` (``ice_enforce_list = "hb0"``, see "Loopback" below; IPv6
  and mDNS off). ``event_loops`` is left out (Janus's default: one thread
  per handle) unless a number is given.
* :class:`JanusServer` runs Debian's ``janus`` binary from that configuration
  as a subprocess (pinned like Huddle's server by the caller's ``taskset``
  prefix), waits until ``GET /janus/info`` answers, and stops it with SIGINT
  (Janus's clean shutdown), SIGKILL only after a bounded wait.
* :class:`JanusPeer` is a VideoRoom participant for the load generator. It
  speaks Janus's HTTP long-poll API (create a session, attach
  ``janus.plugin.videoroom``, keepalives) and drives the same
  :class:`media.loadtest.sfuclient.SfuClient` that Huddle mode uses, by translating
  messages: the client's publish offer becomes a ``joinandconfigure`` as a
  publisher and Janus's answer is handed back; a subscriber is one
  subscriber handle using VideoRoom's multistream subscriptions (one
  ``join`` with every feed, ``subscribe`` for feeds that appear later), so
  all its remote tracks arrive on one bundled connection, as with Huddle.
  Janus's offers (with a ``tracks`` message built from its ``streams`` list)
  go to the client, whose answer goes back with ``start``.

Loopback. Janus 1.1.2 never gathers candidates on a loopback interface: its
candidate gathering skips every interface flagged ``IFF_LOOPBACK`` whatever
``ice_enforce_list`` says, and when it adds no address libnice falls back to
every non-loopback interface of the machine (measured: ``ice_enforce_list =
"lo"`` offered the host's eth0 and IPv6 addresses). So a Janus run happens in a
private network namespace (:func:`netns_command`, ``unshare --net``) that
has ``lo`` and one veth pair, ``hb0``/``hb1``, with ``127.0.0.2/32`` on
``hb0``: Janus enforces ``hb0`` and offers exactly ``127.0.0.2``, the load
generator's peers offer ``127.0.0.2`` too, and since that address is local
every packet is delivered through the namespace's loopback device, as
127.0.0.1 is (the veth pair only makes ``hb0`` "running"; nothing crosses
it). The namespace has no route anywhere else. (With the peers on 127.0.0.1
instead, Janus's replies from 127.0.0.2 stayed in its socket's send queue and
ICE failed, hence one address for both sides.)

Janus code and configuration are not copied from anywhere: the files below
are written from the option names documented in Janus's sample
configuration. Nothing here contacts anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.sfu.janus")

VIDEOROOM = "janus.plugin.videoroom"
BASE_PATH = "/janus"
# Long-poll and keepalive timing: Janus drops a session after
# ``session_timeout`` (60 s here) without any request.
KEEPALIVE_INTERVAL = 20.0
REQUEST_TIMEOUT = 30.0
MAX_PUBLISHERS = 200
SUBSCRIBE_ATTEMPTS = 10  # per participant, over all its join/subscribe requests

JsonDict = dict[str, Any]

# The private network namespace of a Janus run (see the module docstring).
NETNS_ENV = "HUDDLE_BENCH_NETNS"
NETNS_INTERFACE = "hb0"
NETNS_HOST = "127.0.0.2"
_NETNS_SETUP = (
    "set -e; ip link set lo up; "
    f"ip link add {NETNS_INTERFACE} type veth peer name hb1; "
    f"ip addr add {NETNS_HOST}/32 dev {NETNS_INTERFACE}; "
    f"ip link set hb1 up; ip link set {NETNS_INTERFACE} up; "
    'exec "$@"'
)


def in_netns() -> bool:
    return os.environ.get(NETNS_ENV) == "1"


def netns_command(argv: list[str]) -> list[str]:
    """``argv`` run in a new network namespace with lo + ``hb0`` (needs root)."""
    return ["unshare", "--net", "--", "sh", "-c", _NETNS_SETUP, "sh", *argv]


# --- the server -------------------------------------------------------------


def janus_binary() -> str:
    path = shutil.which("janus")
    if path is None:
        raise RuntimeError("janus is not installed (scripts/install-bench-deps.sh installs it)")
    return path


def janus_version(binary: str | None = None) -> str:
    """``1.1.2`` for Debian's bookworm package (from ``janus --version``)."""
    out = subprocess.run(
        [binary or janus_binary(), "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    match = re.search(r"Janus version: \d+ \(([^)]+)\)", out)
    if match is None:
        raise RuntimeError(f"cannot read the Janus version from {out!r}")
    return match.group(1)


def janus_lib_dir() -> Path:
    """Where the plugins and transports of the installed Janus live."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    for candidate in (
        Path(f"/usr/lib/{multiarch}/janus"),
        Path("/usr/lib/janus"),
        Path("/usr/local/lib/janus"),
        Path("/opt/janus/lib/janus"),
    ):
        if (candidate / "plugins" / "libjanus_videoroom.so").exists():
            return candidate
    raise RuntimeError("cannot find Janus's libjanus_videoroom.so")


def write_config(
    directory: Path,
    port: int,
    *,
    event_loops: int | None = None,
    debug_level: int = 4,
    lib: Path | None = None,
) -> Path:
    """Write janus.jcfg and the two plugin/transport files; returns janus.jcfg.

    ``lib``: Janus's library directory (``plugins/``, ``transports/``),
    found with :func:`janus_lib_dir` by default.
    """
    lib = lib or janus_lib_dir()
    for sub, name in (("plugins", "libjanus_videoroom.so"), ("transports", "libjanus_http.so")):
        folder = directory / sub
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / name
        if not link.exists():
            link.symlink_to(lib / sub / name)
    for sub in ("events", "loggers"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    loops = f"\tevent_loops = {event_loops}\n" if event_loops else ""
    (directory / "janus.jcfg").write_text(
        "# Written by bench/sfu/janus.py for one benchmark run.\n"
        "general: {\n"
        f'\tconfigs_folder = "{directory}"\n'
        f'\tplugins_folder = "{directory}/plugins"\n'
        f'\ttransports_folder = "{directory}/transports"\n'
        f'\tevents_folder = "{directory}/events"\n'
        f'\tloggers_folder = "{directory}/loggers"\n'
        f"\tdebug_level = {debug_level}\n"
        '\tserver_name = "huddle-bench"\n'
        "\tsession_timeout = 60\n"
        f"{loops}"
        "}\n"
        "certificates: {\n"
        "\t# none: Janus generates a self-signed DTLS certificate at startup\n"
        "}\n"
        "media: {\n"
        "\tipv6 = false\n"
        "}\n"
        "nat: {\n"
        "\t# no stun_server / turn_server: host candidates only, and only loopback\n"
        "\tnice_debug = false\n"
        "\tfull_trickle = false\n"
        "\tice_lite = false\n"
        "\tice_tcp = false\n"
        "\tignore_mdns = true\n"
        f'\tice_enforce_list = "{NETNS_INTERFACE}"\n'
        "}\n"
        "plugins: {\n}\n"
        "transports: {\n}\n"
        "loggers: {\n}\n"
        "events: {\n"
        "\tbroadcast = false\n"
        "}\n"
    )
    (directory / "janus.plugin.videoroom.jcfg").write_text(
        "# No predefined rooms: the benchmark creates its own through the API.\n"
        "general: {\n"
        "\tstring_ids = false\n"
        "}\n"
    )
    (directory / "janus.transport.http.jcfg").write_text(
        "general: {\n"
        '\tjson = "compact"\n'
        f'\tbase_path = "{BASE_PATH}"\n'
        "\thttp = true\n"
        f"\tport = {port}\n"
        '\tip = "127.0.0.1"\n'
        "\thttps = false\n"
        "}\n"
        "admin: {\n"
        "\tadmin_http = false\n"
        "\tadmin_https = false\n"
        "}\n"
        "cors: {\n}\n"
    )
    return directory / "janus.jcfg"


class JanusServer:
    """A Janus process run from :func:`write_config`'s files."""

    def __init__(
        self,
        directory: Path,
        port: int,
        *,
        event_loops: int | None = None,
        prefix: list[str] | None = None,
        debug_level: int = 4,
    ) -> None:
        self.directory = directory
        self.debug_level = debug_level
        self.port = port
        self.event_loops = event_loops
        self.prefix = prefix or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = ""
        self.log_path = directory / "janus.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE_PATH}"

    def start(self, limit_s: float = 60.0) -> int:
        """Start Janus and wait until its HTTP API answers; returns its pid."""
        binary = janus_binary()
        self.version = janus_version(binary)
        config = write_config(
            self.directory, self.port, event_loops=self.event_loops, debug_level=self.debug_level
        )
        log = self.log_path.open("wb")
        cmd = [*self.prefix, binary, "--disable-colors", "-C", str(config), "-F"]
        self.proc = subprocess.Popen(
            [*cmd, str(self.directory)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_stop_with_parent,
        )
        log.close()
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.base_url}/info", timeout=2) as response:
                    info = json.loads(response.read())
                if VIDEOROOM not in info.get("plugins", {}):
                    raise RuntimeError(f"Janus started without {VIDEOROOM}: {info}")
                return self.proc.pid
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"Janus did not start; log tail:\n{tail}")

    def stop(self, limit_s: float = 30.0) -> int | None:
        """SIGINT (Janus's clean shutdown), SIGKILL after ``limit_s``; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(limit_s)
            except subprocess.TimeoutExpired:
                logger.warning("janus did not stop in %.0f s; killing it", limit_s)
                proc.kill()
                proc.wait(10)
        return proc.returncode


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM (a clean Janus shutdown) if the benchmark dies.

    Otherwise a benchmark killed hard would leave Janus running in its
    namespace. ``PR_SET_PDEATHSIG`` survives the exec of ``taskset`` and
    ``janus`` (neither is set-uid).
    """
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def room_number(call_id: str) -> int:
    """The VideoRoom id of a benchmark call (same in every process)."""
    return zlib.crc32(call_id.encode()) % 1_000_000_000 + 1000


# --- the HTTP API -----------------------------------------------------------


class JanusError(RuntimeError):
    pass


EventHandler = Callable[[JsonDict], None]


class JanusSession:
    """One Janus session over the HTTP transport: requests, long poll, keepalive."""

    _ids = itertools.count(1)

    def __init__(self, http: Any, base_url: str) -> None:
        self.http = http  # aiohttp.ClientSession
        self.base_url = base_url
        self.id: int | None = None
        self._pending: dict[str, asyncio.Future[JsonDict]] = {}
        self._handlers: dict[int, EventHandler] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def _transaction(self) -> str:
        return f"t{os.getpid()}-{next(self._ids)}"

    async def _post(self, path: str, payload: JsonDict) -> JsonDict:
        async with self.http.post(f"{self.base_url}{path}", json=payload) as response:
            data: JsonDict = await response.json(content_type=None)
        if data.get("janus") == "error":
            error = data.get("error", {})
            raise JanusError(f"janus error {error.get('code')}: {error.get('reason')}")
        return data

    async def create(self) -> None:
        data = await self._post("", {"janus": "create", "transaction": self._transaction()})
        self.id = int(data["data"]["id"])
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._poll(), name=f"janus poll {self.id}"))
        self._tasks.append(loop.create_task(self._keepalive(), name=f"janus keepalive {self.id}"))

    async def attach(self, on_event: EventHandler | None = None) -> int:
        data = await self._post(
            f"/{self.id}",
            {"janus": "attach", "plugin": VIDEOROOM, "transaction": self._transaction()},
        )
        handle = int(data["data"]["id"])
        if on_event is not None:
            self._handlers[handle] = on_event
        return handle

    async def message(
        self,
        handle: int,
        body: JsonDict,
        jsep: JsonDict | None = None,
        limit_s: float = REQUEST_TIMEOUT,
    ) -> tuple[JsonDict, JsonDict | None]:
        """A plugin request; waits for its synchronous or asynchronous result."""
        transaction = self._transaction()
        future: asyncio.Future[JsonDict] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        payload: JsonDict = {"janus": "message", "transaction": transaction, "body": body}
        if jsep is not None:
            payload["jsep"] = jsep
        try:
            reply = await self._post(f"/{self.id}/{handle}", payload)
            if reply.get("janus") != "ack":
                event = reply
            else:
                event = await asyncio.wait_for(future, limit_s)
        finally:
            self._pending.pop(transaction, None)
        if event.get("janus") == "error":
            error = event.get("error", {})
            raise JanusError(f"janus error {error.get('code')}: {error.get('reason')}")
        data: JsonDict = event.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(
                f"{body.get('request')}: videoroom error {data.get('error_code')}: {data['error']}"
            )
        return data, event.get("jsep")

    async def _poll(self) -> None:
        url = f"{self.base_url}/{self.id}"
        while not self._closed:
            try:
                async with self.http.get(url, params={"maxev": "10"}) as response:
                    body = await response.json(content_type=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a transient error; the loop is bounded by close()
                if self._closed:
                    return
                logger.warning("janus session %s: long poll failed: %r", self.id, exc)
                await asyncio.sleep(0.5)
                continue
            for event in body if isinstance(body, list) else [body]:
                self._dispatch(event)

    def _dispatch(self, event: JsonDict) -> None:
        kind = event.get("janus")
        if kind == "keepalive":
            return
        future = self._pending.get(str(event.get("transaction")))
        if future is not None and kind in ("event", "success", "error") and not future.done():
            future.set_result(event)
            return
        handler = self._handlers.get(int(event.get("sender") or 0))
        if handler is not None:
            handler(event)
        elif kind not in ("webrtcup", "media", "slowlink", "detached", "hangup", "trickle"):
            logger.debug("janus session %s: unhandled %s", self.id, event)

    async def _keepalive(self) -> None:
        while not self._closed:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            with contextlib.suppress(Exception):
                await self._post(
                    f"/{self.id}", {"janus": "keepalive", "transaction": self._transaction()}
                )

    async def destroy(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.id is not None:
            with contextlib.suppress(Exception):
                await self._post(
                    f"/{self.id}", {"janus": "destroy", "transaction": self._transaction()}
                )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def create_room(http: Any, base_url: str, call_id: str) -> int:
    """Create the VideoRoom of ``call_id`` (VP8 + Opus); returns its number."""
    room = room_number(call_id)
    session = JanusSession(http, base_url)
    await session.create()
    try:
        handle = await session.attach()
        await session.message(
            handle,
            {
                "request": "create",
                "room": room,
                "description": f"huddle bench {call_id}",
                "publishers": MAX_PUBLISHERS,
                "videocodec": "vp8",
                "audiocodec": "opus",
                "bitrate": 0,
                "fir_freq": 0,
                "notify_joining": False,
                "permanent": False,
            },
        )
    finally:
        await session.destroy()
    return room


# --- a VideoRoom participant driving an SfuClient ---------------------------


Deliver = Callable[[JsonDict], None]


class JanusPeer:
    """A participant of a Janus VideoRoom, seen by :class:`SfuClient` as the SFU.

    Use :meth:`open`, then build the client with ``send=peer.send`` and set
    :attr:`deliver` to its ``deliver``; then either ``client.publish()``
    (a publisher, which also subscribes to the room's other publishers if
    ``subscribe`` is true) or :meth:`subscribe_room` (a subscriber only).
    """

    def __init__(
        self, http: Any, base_url: str, call_id: str, participant_id: str, *, subscribe: bool
    ) -> None:
        self.session = JanusSession(http, base_url)
        self.room = room_number(call_id)
        self.id = participant_id
        self.subscribe = subscribe
        self.deliver: Deliver = lambda message: None
        self.feed_id: int | None = None
        self.displays: dict[int, str] = {}  # feed id -> participant id
        self._wanted: set[int] = set()
        self._subscribed: set[int] = set()
        self._sub_handle: int | None = None
        self._streams: dict[str, JsonDict] = {}  # mid -> tracks entry
        self._wake = asyncio.Event()
        self._answer: asyncio.Future[str] | None = None
        self._negotiating = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.errors: list[str] = []
        self._closing = False

    async def open(self) -> None:
        await self.session.create()
        self._spawn(self._subscriptions(), "subscriptions")

    def _spawn(self, coro: Awaitable[None], what: str) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing:  # e.g. a renegotiation cut short by leaving
                    logger.debug("janus peer %s: %s ended by close: %r", self.id, what, exc)
                    return
                self.errors.append(f"{what}: {exc!r}")
                logger.exception("janus peer %s: %s failed", self.id, what)

        self._tasks.append(asyncio.get_running_loop().create_task(run(), name=f"{self.id} {what}"))

    # SfuClient -> "SFU"

    async def send(self, message: JsonDict) -> None:
        kind, pc = message.get("type"), message.get("pc")
        if kind == "offer" and pc == "publish":
            self._spawn(self._publish(str(message["sdp"])), "publish")
        elif (
            kind == "answer"
            and pc == "subscribe"
            and self._answer is not None
            and not self._answer.done()
        ):
            self._answer.set_result(str(message["sdp"]))

    async def _publish(self, sdp: str) -> None:
        handle = await self.session.attach(self._on_publisher_event)
        data, jsep = await self.session.message(
            handle,
            {
                "request": "joinandconfigure",
                "ptype": "publisher",
                "room": self.room,
                "display": self.id,
            },
            jsep={"type": "offer", "sdp": sdp, "trickle": False},
        )
        self.feed_id = int(data["id"])
        if jsep is None or jsep.get("type") != "answer":
            raise JanusError(f"joinandconfigure returned no answer: {data}")
        self.deliver({"type": "answer", "pc": "publish", "sdp": jsep["sdp"], "sender_id": "sfu"})
        if self.subscribe:
            self._want(data.get("publishers", []))

    def _on_publisher_event(self, event: JsonDict) -> None:
        data = event.get("plugindata", {}).get("data", {})
        if self.subscribe and data.get("publishers"):
            self._want(data["publishers"])

    async def subscribe_room(self, limit_s: float = 30.0) -> None:
        """Subscribe to every publisher in the room (waits, bounded, for one)."""
        self._spawn(self._list_and_subscribe(limit_s), "subscribe room")

    async def _list_and_subscribe(self, limit_s: float) -> None:
        self._sub_handle = await self.session.attach(self._on_subscriber_event)
        deadline = time.monotonic() + limit_s
        while True:
            data, _ = await self.session.message(
                self._sub_handle, {"request": "listparticipants", "room": self.room}
            )
            publishers = [p for p in data.get("participants", []) if p.get("publisher")]
            if publishers or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        self._want(publishers)

    def _want(self, publishers: list[JsonDict]) -> None:
        for publisher in publishers:
            feed = int(publisher["id"])
            if feed == self.feed_id:
                continue
            self.displays[feed] = str(publisher.get("display") or feed)
            self._wanted.add(feed)
        self._wake.set()

    async def _subscriptions(self) -> None:
        """Adds wanted feeds to the one subscriber handle, one negotiation at a time.

        A failed join/subscribe (say, a feed Janus does not list yet) is
        retried after a pause, at most ``SUBSCRIBE_ATTEMPTS`` times in all.
        """
        failures = 0
        joined = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            new = sorted(self._wanted - self._subscribed)
            if not new:
                continue
            if self._sub_handle is None:
                self._sub_handle = await self.session.attach(self._on_subscriber_event)
            streams = [{"feed": feed} for feed in new]
            async with self._negotiating:
                if not joined:
                    body = {
                        "request": "join",
                        "ptype": "subscriber",
                        "room": self.room,
                        "streams": streams,
                    }
                else:
                    body = {"request": "subscribe", "streams": streams}
                self._subscribed.update(new)
                try:
                    data, jsep = await self.session.message(self._sub_handle, body)
                except JanusError as exc:
                    failures += 1
                    self.errors.append(f"{body['request']}: {exc}")
                    if failures >= SUBSCRIBE_ATTEMPTS:
                        raise
                    self._subscribed.difference_update(new)
                    await asyncio.sleep(0.5)
                    self._wake.set()
                    continue
                joined = True
                if jsep is not None:
                    await self._answer_offer(data, jsep)

    def _on_subscriber_event(self, event: JsonDict) -> None:
        # An offer Janus sends on its own (a feed left: it renegotiates).
        jsep = event.get("jsep")
        if jsep is not None and jsep.get("type") == "offer" and not self._closing:
            data = event.get("plugindata", {}).get("data", {})
            self._spawn(self._renegotiate(data, jsep), "renegotiate")

    async def _renegotiate(self, data: JsonDict, jsep: JsonDict) -> None:
        async with self._negotiating:
            await self._answer_offer(data, jsep)

    async def _answer_offer(self, data: JsonDict, jsep: JsonDict) -> None:
        assert self._sub_handle is not None
        if "streams" in data:
            self._streams = {}
            for stream in data["streams"]:
                kind = stream.get("type")
                if kind not in ("audio", "video") or not stream.get("active", True):
                    continue
                feed = int(stream.get("feed_id") or 0)
                who = str(stream.get("feed_display") or self.displays.get(feed, feed))
                self._streams[str(stream["mid"])] = {
                    "mid": str(stream["mid"]),
                    "kind": kind,
                    "participant_id": who,
                    "stream_id": who,
                }
        self.deliver({"type": "tracks", "tracks": list(self._streams.values())})
        self._answer = asyncio.get_running_loop().create_future()
        self.deliver({"type": "offer", "pc": "subscribe", "sdp": jsep["sdp"], "sender_id": "sfu"})
        sdp = await asyncio.wait_for(self._answer, REQUEST_TIMEOUT)
        self._answer = None
        await self.session.message(
            self._sub_handle,
            {"request": "start"},
            jsep={"type": "answer", "sdp": sdp, "trickle": False},
        )

    async def close(self) -> None:
        """Destroy the session (Janus hangs up every handle), stop the tasks."""
        self._closing = True
        self.deliver = lambda message: None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.session.destroy()
