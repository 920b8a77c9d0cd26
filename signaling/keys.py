"""Typed application keys of the signaling layer (beside :mod:`server.keys`)."""

from __future__ import annotations

from aiohttp import web

from signaling.hub import SignalingHub

HUB = web.AppKey("signaling_hub", SignalingHub)
