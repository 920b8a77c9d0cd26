"""``huddle``: serve, mint a token, run a load test."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from server.config import ConfigError, is_loopback_host, load_config


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(os.environ)
        if args.workers is not None:
            if not 1 <= args.workers <= 256:
                raise ConfigError(f"--workers {args.workers} is out of range [1, 256]")
            config = dataclasses.replace(config, workers=args.workers)
    except ConfigError as exc:
        print(f"huddle: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    from server.app import StartupError, create_app
    from server.http.edge import serve
    from server.wiring.drain import DRAIN

    if config.dev_mode:
        logging.getLogger("huddle").warning(
            "dev mode: /v1/dev/token issues tokens to anyone; set HUDDLE_JWT_SECRET in production"
        )
        if not is_loopback_host(config.host):
            logging.getLogger("huddle").warning(
                "dev mode on %s (HUDDLE_DEV=1): anyone who can reach this address can mint tokens",
                config.host,
            )
    try:
        # aiohttp's run_app, through the edge server (JSON parser errors, slow-head limits).
        app = create_app(config)
        serve(
            app,
            config,
            on_ready=lambda: logging.getLogger("huddle").info(
                "serving on http://%s:%d", config.host, config.port
            ),
            on_term=app[DRAIN],
        )
    except StartupError as exc:
        print(f"huddle: startup failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _token(args: argparse.Namespace) -> int:
    secret = args.secret or os.environ.get("HUDDLE_JWT_SECRET")
    if not secret:
        print("huddle token: set HUDDLE_JWT_SECRET or pass --secret", file=sys.stderr)
        return 2
    from server.auth import TokenService

    tokens = TokenService(secret)
    try:
        if args.user_id:
            user_id, token = args.user_id, tokens.issue(args.user_id, args.name, ttl_s=args.ttl)
        else:
            user_id, token = tokens.new_user(args.name, ttl_s=args.ttl)
    except ValueError as exc:  # a reserved or malformed user id, an unstorable name
        print(f"huddle token: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(f"user_id={user_id}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="huddle", description="Huddle WebRTC media server")
    parser.add_argument("--log-level", default=os.environ.get("HUDDLE_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server (configured by HUDDLE_* vars)")
    serve.add_argument(
        "--workers",
        type=int,
        help="SFU processes (default: $HUDDLE_WORKERS, else the number of cores; "
        "1: the SFU runs in the server's process)",
    )
    serve.set_defaults(run=_serve)
    token = commands.add_parser("token", help="mint a JWT for a user")
    token.add_argument("name")
    token.add_argument("--user-id", help="use this user id instead of a new UUID")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="seconds (default 1 day)")
    token.add_argument("--secret", help="HS256 secret (default: $HUDDLE_JWT_SECRET)")
    token.set_defaults(run=_token)
    from media.loadtest.cli import add_arguments as loadtest_arguments

    loadtest = commands.add_parser(
        "loadtest",
        help="fill rooms with headless peers and report what the server did",
        description="Fill rooms with headless aiortc peers (pre-encoded VP8 + Opus, no "
        "decoding) and report join latency, first frame, fps, bitrate, loss, freezes and "
        "the server's CPU and memory. Exit status 1 when a threshold is broken.",
    )
    loadtest_arguments(loadtest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result: int = args.run(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
