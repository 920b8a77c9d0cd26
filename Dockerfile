# syntax=docker/dockerfile:1
#
# Huddle container image. Build:  docker build -t huddle .
# Run:    docker run --rm -p 8080:8080 -v huddle-data:/data \
#           -e HUDDLE_JWT_SECRET="$(openssl rand -base64 48)" huddle
#         (or -e HUDDLE_DEV=1 for a throwaway dev server: anyone can mint tokens)
# See docs/container.md (compose with Postgres, Redis, coturn, two instances).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install Huddle and its dependencies into a self-contained venv ---
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# A C compiler for media/_udpsend.c, the SFU's protect-and-send loop (build
# stage only; the runtime image gets the compiled module, not the compiler).
# Without it pip would fall back silently to the slower pure-Python loop.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/huddle

# Copy only what the package needs, so edits to tests or docs do not
# invalidate the install layer. README/LICENSE are optional: the wildcards
# may match nothing, and pyproject.toml keeps the COPY from being empty.
COPY pyproject.toml setup.py README.md* LICENSE* ./
COPY server ./server
COPY signaling ./signaling
COPY media ./media
# aiortc, av, asyncpg, uvloop, cryptography ship manylinux wheels with their
# native libraries bundled; only Huddle's own extension is compiled here.
RUN /opt/huddle/bin/pip install . \
    && /opt/huddle/bin/python -c "import media._udpsend"

# --- runtime: the venv, the browser client, a non-root user ---
FROM ${PYTHON_IMAGE}

# A fixed numeric uid/gid: volumes can be chowned to it on the host, and
# Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 huddle \
    && useradd --system --uid 10001 --gid huddle --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin huddle \
    && mkdir -p /data \
    && chown huddle:huddle /data

COPY --from=build /opt/huddle /opt/huddle
COPY static /usr/share/huddle/static

# Production-safe by default: HUDDLE_DEV=0, so without HUDDLE_JWT_SECRET the
# server refuses to start instead of minting tokens for anyone on 0.0.0.0.
# Dev mode is an explicit `-e HUDDLE_DEV=1`.
ENV PATH=/opt/huddle/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HUDDLE_HOST=0.0.0.0 \
    HUDDLE_DEV=0 \
    HUDDLE_PORT=8080 \
    HUDDLE_DATABASE_URL=sqlite:////data/huddle.db \
    HUDDLE_STATIC_DIR=/usr/share/huddle/static

# SQLite database (default); unused when HUDDLE_DATABASE_URL is postgresql://.
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001

# HTTP API, WebSocket signaling, /metrics.
EXPOSE 8080
# Media (ICE/RTP) is UDP on ephemeral ports chosen per peer connection, which
# port publishing cannot cover: run with host networking (compose:
# network_mode: host, and set HUDDLE_PUBLIC_IP / HUDDLE_ICE_HOSTS), or relay
# media through coturn (HUDDLE_TURN_URIS, HUDDLE_TURN_SECRET) and publish
# coturn's ports instead. See docs/container.md.

HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HUDDLE_PORT', '8080'), timeout=4)"]

# Exec form: huddle is PID 1 and receives SIGTERM itself for graceful shutdown
# (stop accepting, tell clients, close peer connections, persist, exit).
STOPSIGNAL SIGTERM
ENTRYPOINT ["huddle"]
CMD ["serve"]
