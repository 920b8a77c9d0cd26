"""Up tracks (one per published track) and down tracks (one per subscriber).

Packet-level forwarding: an :class:`UpTrack` is one published track; its
packets arrive from the receive path (:mod:`media.inbound`) on one
:class:`media.layer.Layer` per encoding (one, or one per simulcast rid),
which reads once what every subscriber needs of a packet, keeps it in a
packet cache shared by its subscribers and hands it to every down track on
that layer. The up track decides which layer each subscriber gets and moves
it at a keyframe of the new layer. A down track's sender
(:class:`media.fastsend.FastRtp`) rewrites only the header (SSRC, sequence
number, timestamp; the VP8 picture id and TL0PICIDX) onto the shared payload,
so a subscriber's stream stays continuous across layer and source switches.

A down track is the ``MediaStreamTrack`` behind a subscriber's
``RTCRtpSender`` (aiortc needs one per sender); it never yields frames and
never ends on its own, so its transceiver can carry another publisher later.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiortc import RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .aiortc_compat import negotiated_codecs, on_receiver_end
from .allocator import PAUSED
from .downstream import PacketTuple, describe
from .layer import Layer, PacketStore
from .metrics import MediaMetrics
from .rtpheader import RtpPacket
from .signals import default_source

if TYPE_CHECKING:
    from .fastsend import FastRtp
    from .inbound import PublisherInbound
    from .relay import RemoteSource

logger = logging.getLogger(__name__)

#: An incoming packet as forwarding reads it, computed once for every
#: subscriber (:func:`media.downstream.describe`); what the packet cache keeps.
Forwardable = PacketTuple


#: The packet tuple of a parsed packet (tests build theirs with it).
forwardable = describe

#: A simulcast layer whose rate was never measured is assumed this many times
#: the layer below it (Huddle's client caps its layers 150/500/1500 kbit/s).
UNMEASURED_STEP = 3.0
#: A layer costs at least this many times the layer below it: a top layer just
#: restarted (dynacast, the publisher's own adaptation) measures a fraction of
#: what it will send, and taken at that price it overloads the subscriber.
MIN_STEP = 1.5


class UpTrack:
    """One published track: its layers, which subscriber gets which, keyframes.

    The receive path hands the packets of a track that is not simulcast to
    the track itself (:meth:`on_packet`, its one layer); those of a simulcast
    track to the layer of their rid (:meth:`layer`). Each subscriber (down
    track) is on one layer at a time: the highest one that is arriving, up to
    what the subscriber may take (:meth:`set_max_layer`); it moves at a
    keyframe of the layer it moves to (:meth:`media.layer.Layer.switch_here`).
    """

    def __init__(
        self,
        participant_id: str,
        transceiver: RTCRtpTransceiver | None,
        inbound: PublisherInbound | RemoteSource,
        *,
        pli_min_interval: float,
        metrics: MediaMetrics,
        on_ended: Callable[[UpTrack], None],
        on_layers: Callable[[UpTrack, list[str]], None] | None = None,
        source: str | None = None,
        remote: tuple[str, str, Any] | None = None,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.participant_id = participant_id
        #: A track published on another node of a spanning room (media/span.py):
        #: no transceiver here, ``remote`` says (kind, mid, codec), ``inbound`` is the relay.
        self.remote = transceiver is None
        if transceiver is not None:
            kind, mid = transceiver.kind, str(transceiver.mid)
            codecs = [c for c in negotiated_codecs(transceiver) if c.name.lower() != "rtx"]
        elif remote is not None:
            kind, mid, codec = remote
            codecs = [codec]
        else:
            raise ValueError("an up track needs a transceiver or a remote description")
        self.kind: str = kind
        #: What it carries: ``camera``, ``screen`` or ``microphone`` (``media.seam.TRACK_SOURCES``),
        #: as the publisher's offer said; what an allocator ranks tracks by (screen before camera).
        self.source: str = source or default_source(self.kind)
        self.mid: str = mid
        if not codecs:
            raise ValueError("transceiver has no negotiated codec")
        self.codec: Any = codecs[0]
        self._metrics = metrics
        self._pli_min_interval = pli_min_interval
        self._on_ended = on_ended
        self._on_layers = on_layers
        self._active: tuple[str, ...] | None = None  # the layers the publisher was asked for
        self._inbound = inbound
        self._downs: list[DownTrack] = []
        self._layer_of: dict[DownTrack, Layer] = {}
        self._max_layer: dict[DownTrack, int] = {}
        self._paused: set[DownTrack] = set()  # downs getting no video (set_max_layer PAUSED)
        #: Downs taken off a higher layer at once, waiting for the lower layer's
        #: keyframe: down -> (the layer they wait for, the one they left).
        self._dropping: dict[DownTrack, tuple[Layer, Layer]] = {}
        self._urgent: set[DownTrack] = set()  # set_max_layer(urgent=True)
        self._live: set[Layer] | None = None  # layers with packets at the last tick
        self.ended = False
        self._default = Layer(self, None, pli_min_interval=pli_min_interval, metrics=metrics)
        self._layers: dict[str, Layer] = {}  # simulcast: rid -> layer
        inbound.bind(self.mid, self)
        if transceiver is not None:
            on_receiver_end(transceiver.receiver, self._end)

    def __repr__(self) -> str:
        return f"UpTrack({self.participant_id}/{self.source} {self.id[:8]})"

    @property
    def mime_type(self) -> str:
        return str(self.codec.mimeType).lower()

    @property
    def audio_level_id(self) -> int | None:
        """The audio-level extension id on the publisher's connection, if negotiated."""
        return self._inbound.ids.audio_level if self.kind == "audio" else None

    @property
    def rids(self) -> tuple[str, ...]:
        """The simulcast layers the publisher offered, lowest first (empty: not simulcast)."""
        return self._inbound.rids_of(self.mid)

    @property
    def is_screen(self) -> bool:
        """A screen share (the allocator serves it before cameras)."""
        return self.source == "screen"

    @property
    def subscriber_count(self) -> int:
        return len(self._downs)

    def downs(self) -> list[DownTrack]:
        """The down tracks fed by this track (a copy)."""
        return list(self._downs)

    def layers(self) -> list[Layer]:
        """Its layers in order, lowest first (one if not simulcast)."""
        rids = self.rids
        if not rids:
            return [self._default]
        return [self._layers[rid] for rid in rids if rid in self._layers]

    def target_of(self, down: DownTrack) -> Layer | None:
        """The layer ``down`` is moving to (at its next keyframe), else the one it is on."""
        for layer in self.layers():
            if down in layer.pending:
                return layer
        return self._layer_of.get(down)

    def layer_at(self, index: int) -> Layer | None:
        """The layer of index ``index`` (see :meth:`index_of`), if it arrived yet."""
        for layer in self.layers():
            if self.index_of(layer) == index:
                return layer
        return None

    def layer_of(self, down: DownTrack) -> Layer | None:
        return self._layer_of.get(down)

    # --- what the receive path sees (media.inbound.PacketSink) ----------------

    @property
    def fast_sink(self) -> Any:
        return self._default.fast_sink

    def on_packet(self, packet: RtpPacket) -> None:
        """One packet of a track that is not simulcast."""
        self._default.on_packet(packet)

    def repaired(self, nbytes: int) -> None:
        self._default.repaired(nbytes)

    def layer(self, rid: str) -> Layer:
        """The layer of ``rid`` (created at its first stream)."""
        layer = self._layers.get(rid)
        if layer is None:
            layer = self._layers[rid] = Layer(
                self, rid, pli_min_interval=self._pli_min_interval, metrics=self._metrics
            )
            if self.ended:
                layer.ended = True
            else:
                self._reassign()
        return layer

    def sync(self) -> None:
        """Periodic (receiver report ticks): C counters, bit rates, each subscriber's layer."""
        layers = [self._default, *self._layers.values()]
        now = time.monotonic()
        for layer in layers:
            layer.sync()
            layer.tick(now)
        if self._layers:
            self._live = {layer for layer in layers if layer.take_activity()}
            self._reassign()

    @property
    def packets_in(self) -> int:
        """Packets received from the publisher (every layer)."""
        return self._default.packets_in + sum(layer.packets_in for layer in self._layers.values())

    @property
    def cache(self) -> PacketStore | None:
        """The packet cache of its highest layer."""
        layers = self.layers()
        return layers[-1].cache if layers else None

    def take_audio_levels(self) -> tuple[int, int, int]:
        """(packets carrying a level, speech packets, their summed ``127 - level``)
        since the last call, for :class:`media.speakers.SpeakerMonitor`; zeroes them."""
        return self._default.take_audio_levels()

    def restart(self) -> None:
        """A remote track's source changed on its node (a layer switch there, in
        other numbers): its subscribers here start over at it, the cache with it."""
        for layer in [self._default, *self._layers.values()]:
            if layer.cache is not None:
                layer.cache.clear()
        for down in self._downs:
            if down.sender is not None:
                down.sender.switch()

    # --- keyframes -----------------------------------------------------------

    def send_pli(self, rid: str | None) -> bool:
        return self._inbound.send_pli(self.mid, rid)

    def request_keyframe(self, down: DownTrack | None = None) -> None:
        """A keyframe of the layer ``down`` is on, or waits for (moved down at once);
        none for a paused ``down`` (it gets no video: its browser's PLIs must not
        raise keyframes for everyone, Chromium's VP8 simulcast encoding one on every
        layer); without ``down`` (or one not placed yet): of every layer."""
        if self.kind != "video" or self.ended:
            return
        layer = self._layer_of.get(down) if down is not None else None
        if layer is None and down is not None:
            dropping = self._dropping.get(down)
            if dropping is not None:
                layer = dropping[0]
            elif down in self._paused:
                return
        if layer is not None:
            layer.request_keyframe()
            return
        for each in self.layers():
            each.request_keyframe()

    def replay(self, down: DownTrack) -> None:
        """Send ``down`` its layer's cached latest keyframe and what followed, if recent."""
        layer = self._layer_of.get(down)
        if layer is not None:
            layer.replay(down)

    def cached(self, sequence_number: int, down: DownTrack | None = None) -> Forwardable | None:
        """A recent packet of ``down``'s layer by its original sequence number."""
        layer = self._layer_of.get(down) if down is not None else None
        if layer is None:
            layer = self._default
        return layer.cached(sequence_number)

    # --- subscribers -----------------------------------------------------------

    def add_down(self, down: DownTrack) -> None:
        """Start feeding ``down``; asks the publisher for a keyframe for it."""
        if down not in self._downs:
            self._downs.append(down)
            target = self._choose(down)
            if target is not None:
                self._layer_of[down] = target
                self._refresh(target)
            self._update_dynacast()
        self.request_keyframe(down)

    def remove_down(self, down: DownTrack) -> None:
        if down in self._downs:
            self._downs.remove(down)
            self._max_layer.pop(down, None)
            self._dropping.pop(down, None)
            self._urgent.discard(down)
            if down in self._paused:
                self._paused.discard(down)
                self._metrics.paused_track_gone()
            for layer in self.layers():
                layer.cancel_switch(down)
            layer_of = self._layer_of.pop(down, None)
            if layer_of is not None:
                self._refresh(layer_of)
            self._update_dynacast()

    def arriving_layers(self) -> list[tuple[int, float]]:
        """(index, bit/s) of the layers a subscriber may get, lowest first: those arriving
        (at the last tick) and those the publisher was asked to stop (dynacast:
        available on demand, at their last measured rate; one never measured is
        taken as :data:`UNMEASURED_STEP` times the layer below it); no layer costs less
        than :data:`MIN_STEP` times the one below."""
        live, active = self._live, self.active_layers
        out: list[tuple[int, float]] = []
        rids = self.rids
        if not rids:
            return [(0, self._default.cost)]
        below = 0.0
        for index, rid in enumerate(rids):
            layer = self._layers.get(rid)
            suspended = rid not in active
            rate = layer.cost if layer is not None else 0.0
            if rate and below:
                rate = max(rate, below * MIN_STEP)
            if layer is not None and (live is None or layer in live or suspended):
                out.append((index, rate))
            elif layer is None and suspended:
                out.append((index, below * UNMEASURED_STEP if below else 0.0))
            below = rate or below * UNMEASURED_STEP
        return out

    @property
    def active_layers(self) -> tuple[str, ...]:
        """The rids the publisher is asked to send (all, until dynacast said otherwise)."""
        return self._active if self._active is not None else self.rids

    def _update_dynacast(self) -> None:
        """Ask the publisher to stop the layers no subscriber may get, and to resume them.

        The lowest layer is always kept (a new subscriber starts at once).
        """
        rids = self.rids
        if len(rids) < 2 or self._on_layers is None or self.ended:
            return
        needed = {rids[0]}
        for down in self._downs:
            cap = self._max_layer.get(down)
            if cap == PAUSED:
                continue
            top = len(rids) - 1 if cap is None else min(cap, len(rids) - 1)
            needed.update(rids[: top + 1])
        for layer in self._layers.values():
            if layer.pending and layer.rid is not None:
                needed.add(layer.rid)
        active = tuple(rid for rid in rids if rid in needed)
        if active != self.active_layers:
            self._active = active
            self._on_layers(self, list(active))

    def set_max_layer(self, down: DownTrack, index: int | None, *, urgent: bool = False) -> None:
        """The highest layer (index, lowest 0) ``down`` may get; None: any; PAUSED
        (-1): no video at all until raised again (it restarts at a keyframe).
        ``urgent``: the subscriber's link cannot carry what it gets now, so a move
        down stops the higher layer at once instead of at the lower one's keyframe."""
        if index is None:
            self._max_layer.pop(down, None)
        else:
            self._max_layer[down] = index
        if urgent:
            self._urgent.add(down)
        else:
            self._urgent.discard(down)
        self._reassign()

    def paused(self, down: DownTrack) -> bool:
        """Whether ``down`` gets nothing because :meth:`set_max_layer` paused it."""
        return down in self._paused

    def move(self, down: DownTrack, layer: Layer) -> None:
        """``layer`` reached a keyframe: ``down`` continues from it (a new epoch)."""
        dropping = self._dropping.pop(down, None)
        old = self._layer_of.get(down)
        if old is layer or down not in self._downs:
            return
        if down.sender is not None and dropping is None:
            # (A drop switched it when it left the higher layer.) Before the move:
            # the sender keeps its newest packets, read from the layer it is on.
            down.sender.switch()
        self._layer_of[down] = layer
        if old is not None:
            self._refresh(old)
        self._refresh(layer)
        left = old if old is not None else dropping[1] if dropping is not None else None
        if left is not None:
            self._metrics.layer_switched("up" if self._index(layer) > self._index(left) else "down")

    def index_of(self, layer: Layer) -> int:
        """A layer's index: its place in the offer's rids, lowest 0 (0 if not simulcast)."""
        rids = self.rids
        return rids.index(layer.rid) if layer.rid in rids else 0

    @property
    def top_index(self) -> int:
        """The index of the highest layer the publisher offered."""
        return max(0, len(self.rids) - 1)

    def _index(self, layer: Layer) -> int:
        return self.index_of(layer)

    def _refresh(self, layer: Layer) -> None:
        layer.refresh([d for d, on in self._layer_of.items() if on is layer])

    def refresh(self) -> None:
        """A down's sender changed: rebuild every layer's fan-out."""
        for layer in {*self._layer_of.values()}:
            self._refresh(layer)

    def _choose(self, down: DownTrack) -> Layer | None:
        layers = self.layers()
        if not layers or self._max_layer.get(down) == PAUSED:
            return None
        live = self._live
        candidates = [layer for layer in layers if live is None or layer in live] or layers
        cap = self._max_layer.get(down, self.top_index)
        below = [layer for layer in candidates if self.index_of(layer) <= cap]
        return below[-1] if below else candidates[0]

    def _reassign(self) -> None:
        self._place_all()
        self._update_dynacast()

    def _place_all(self) -> None:
        for down in list(self._downs):
            target = self._choose(down)
            current = self._layer_of.get(down)
            dropping = self._dropping.pop(down, None)
            if dropping is not None:
                waiting, left = dropping
                if target is waiting:
                    self._dropping[down] = dropping
                    continue  # still waiting for that layer's keyframe
                waiting.cancel_switch(down)
                if target is not None and self._index(target) < self._index(left):
                    self._dropping[down] = (target, left)  # lower still: wait for it instead
                    target.switch_here(down)
                    continue
                # Paused, or back to where it was (placed below as after a pause).
            if target is current and target is not None:
                for layer in self.layers():
                    if layer is not target:
                        layer.cancel_switch(down)
                continue
            if target is None:  # paused: nothing until resumed, then from a keyframe
                for layer in self.layers():
                    layer.cancel_switch(down)
                if current is not None:
                    if down.sender is not None:
                        down.sender.switch()  # before it leaves the layer (see move)
                    del self._layer_of[down]
                    self._refresh(current)
                if self._max_layer.get(down) == PAUSED and down not in self._paused:
                    self._paused.add(down)
                    self._metrics.layer_switched("pause")
                continue
            if current is None:
                self._layer_of[down] = target
                self._refresh(target)
                if down in self._paused:
                    self._paused.discard(down)
                    self._metrics.layer_switched("resume")
                down.replay()
                self.request_keyframe(down)
                continue
            for layer in self.layers():
                if layer is not target:
                    layer.cancel_switch(down)
            target.switch_here(down)
            if down in self._urgent and self._index(target) < self._index(current):
                # Down, the subscriber's link short of it: stop the higher layer now
                # rather than at the lower one's keyframe. Forwarding it meanwhile
                # floods the link; the queue and losses that leaves behind freeze
                # the lower layer too once it starts. The picture holds still
                # until that keyframe (asked for by switch_here).
                self._dropping[down] = (target, current)
                if down.sender is not None:
                    down.sender.switch()  # before it leaves the layer (see move)
                del self._layer_of[down]
                self._refresh(current)

    # --- lifecycle -------------------------------------------------------------

    def end(self) -> None:
        """The published track is gone (m-line removed, connection closed)."""
        if not self.ended:
            self.ended = True
            self._inbound.unbind(self.mid, self)
            self._on_ended(self)

    _end = end  # aiortc's receiver-stop callback

    async def close(self) -> None:
        """Stop forwarding; detaches every down track (idempotent)."""
        self.ended = True
        self._inbound.unbind(self.mid, self)
        for down in list(self._downs):
            down.detach(self)
        self._downs.clear()
        self._layer_of.clear()
        self._dropping.clear()
        self._urgent.clear()
        for _ in self._paused:
            self._metrics.paused_track_gone()
        self._paused.clear()
        for layer in [self._default, *self._layers.values()]:
            await layer.close()


class DownTrack(MediaStreamTrack):
    """A subscriber's end of one forwarded track; its sender does the sending.

    ``sender`` (set by :class:`media.subscription.Slot`) rewrites and sends
    what :meth:`forward` hands it. ``recv`` only waits: aiortc's own send loop
    is replaced, but a sender still needs a track.
    """

    def __init__(self, kind: str, metrics: MediaMetrics) -> None:
        super().__init__()
        self.kind = kind
        self._metrics = metrics
        self.source: UpTrack | None = None
        self.sender: FastRtp | None = None
        self._stopped: asyncio.Future[None] | None = None
        self.replays = 0  # times it started from the source's cached keyframe

    def attach(self, source: UpTrack) -> None:
        """Forward ``source`` from its next keyframe on, numbering continuing ours."""
        if self.source is source:
            return
        if self.source is not None:
            self.source.remove_down(self)
        self.source = source
        if self.sender is not None:
            self.sender.switch()
        source.add_down(self)
        self.replay()

    def detach(self, source: UpTrack | None = None) -> None:
        """Stop forwarding (only if ``source`` is still ours, when given)."""
        current = self.source
        if current is None or (source is not None and current is not source):
            return
        self.source = None
        current.remove_down(self)
        if self.sender is not None:
            self.sender.switch()

    @property
    def packets_out(self) -> int:
        """Packets its sender forwarded (from every source it carried)."""
        return self.sender.packets_sent if self.sender is not None else 0

    def forward(self, entry: Forwardable) -> bool:
        """Rewrite and queue one packet; False if the gate or the sender refused it."""
        sender = self.sender
        return sender is not None and sender.forward(entry)

    def flush(self) -> None:
        if self.sender is not None:
            self.sender.flush()

    def replay(self) -> None:
        """Start from the source's cached keyframe now, if the sender can send."""
        sender = self.sender
        if self.source is not None and sender is not None and sender.ready:
            self.source.replay(self)

    def request_keyframe(self) -> None:
        """The subscriber asked for a keyframe (PLI/FIR), or needs one: relay it upstream."""
        self._metrics.pli_relayed()
        if self.source is not None:
            self.source.request_keyframe(self)

    async def recv(self) -> Any:
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_future()
        if self.readyState == "live":
            await self._stopped
        raise MediaStreamError

    def stop(self) -> None:
        """End the track for good (only when its sender goes too)."""
        self.detach()
        self.sender = None
        super().stop()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
