"""Typed application keys: everything create_app wires, in one place."""

from __future__ import annotations

from aiohttp import web

from server.auth import TokenService
from server.calls import CallService
from server.config import Config
from server.health import Readiness
from server.metrics import Metrics
from server.store import Store

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
TOKENS = web.AppKey("tokens", TokenService)
STORE = web.AppKey("store", Store)
CALLS = web.AppKey("calls", CallService)
READINESS = web.AppKey("readiness", Readiness)
