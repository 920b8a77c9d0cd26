"""Huddle's load tester: rooms full of headless aiortc peers, honestly measured.

Modules (import the one you need; this package imports nothing heavy itself,
so ``huddle --help`` stays fast):

* :mod:`media.loadtest.api` — the HTTP API calls a load run makes (tokens,
  conversations, calls, join/leave);
* :mod:`media.loadtest.peers` — :class:`~media.loadtest.peers.SignaledPeer`, an
  :class:`media.peers.SfuClient` driven over the signaling WebSocket, with
  connection timing and packet-loss counters;
* :mod:`media.loadtest.metrics` — server ``/metrics`` scraping, the timeline,
  percentiles and the per-peer/per-track results;
* :mod:`media.loadtest.orchestration` — :class:`~media.loadtest.orchestration.LoadTest`:
  creates the rooms, ramps the joins, runs, leaves, and builds the report;
* :mod:`media.loadtest.report` — summary table, JSON and the HTML report;
* :mod:`media.loadtest.cli` — ``huddle loadtest`` arguments and entry point.
"""
