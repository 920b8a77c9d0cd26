"""Huddle's load tester: rooms full of headless aiortc peers, honestly measured.

Modules (import the one you need; this package imports nothing heavy itself,
so ``huddle --help`` stays fast):

* :mod:`media.loadtest.api` — the HTTP API calls a load run makes (tokens,
  conversations, calls, join/leave);
* :mod:`media.loadtest.peers` — :class:`~media.loadtest.peers.SignaledPeer`, an
  :class:`~media.loadtest.sfuclient.SfuClient` driven over the signaling
  WebSocket, with connection timing and packet-loss counters;
* :mod:`media.loadtest.metrics` — server ``/metrics`` scraping, the timeline,
  percentiles and the per-peer/per-track results;
* :mod:`media.loadtest.orchestration` — :class:`~media.loadtest.orchestration.LoadTest`:
  creates the rooms, ramps the joins, runs, leaves, and builds the report;
* :mod:`media.loadtest.report` — summary table, JSON and the HTML report;
* :mod:`media.loadtest.cli` — ``huddle loadtest`` arguments and entry point.

The peers themselves, also used by the tests and ``bench/`` (none of these is
on the SFU's path):

* :mod:`media.loadtest.sfuclient` — :class:`~media.loadtest.sfuclient.SfuClient`,
  a headless participant that publishes clips and counts what it receives
  without decoding, :class:`~media.loadtest.sfuclient.ClipTrack` and
  :class:`~media.loadtest.sfuclient.LocalSignaling` (in-process signaling);
* :mod:`media.loadtest.preencoded` — clips encoded once, sent many times;
* :mod:`media.loadtest.frames` — encoded frames and keyframe detection;
* :mod:`media.loadtest.packer` — a pack-only encoder for publishing senders;
* :mod:`media.loadtest.passthrough` and :mod:`media.loadtest.reassembly` — a
  receiver that yields whole encoded frames instead of decoding;
* :mod:`media.loadtest.rtpcount` — header-only RTP counting for cheap receivers;
* :mod:`media.loadtest.aiortc_compat` — the one module here that touches
  private aiortc names, each checked at import.
"""
