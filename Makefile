# Huddle: `make run` serves on http://127.0.0.1:8080 with embedded defaults;
# `make test` installs what the tests need and runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-weaklink lint format bench bench-janus bench-simulcast bench-workers bench-deps reliability soak services system-deps clean

# The stamps re-run pip only when pyproject.toml, setup.py or the C source
# changed (pip then compiles media/_udpsend.c), so `make run` also
# starts offline once installed.
$(VENV)/.installed-run: pyproject.toml setup.py media/_udpsend.c media/_fanout.c media/_rtpparse.c media/_receive.c media/_sendlog.c media/_pacer.c media/_udpsend.h
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml setup.py media/_udpsend.c media/_fanout.c media/_rtpparse.c media/_receive.c media/_sendlog.c media/_pacer.c media/_udpsend.h
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

# The browser client's lint and type-check tools (ESLint, tsc --checkJs), pinned in
# package.json / package-lock.json; users need none of it (static/ has no build step).
NODE_BIN := node_modules/.bin
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

run: $(VENV)/.installed-run
	mkdir -p var
	$(BIN)/huddle serve

system-deps:
	scripts/install-system-deps.sh

services:
	scripts/ensure-services.sh

test: $(VENV)/.installed-dev system-deps services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python scripts/check_imports.py
	$(BIN)/hadolint Dockerfile
	$(NODE_BIN)/eslint --max-warnings 0 .
	$(NODE_BIN)/tsc -p jsconfig.json

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The fuzzers, the authorization matrix and the fault tests at full strength
# (the suite runs them bounded); see docs/reliability.md.
# A receiver behind a tc-shaped link in its own network namespace (root): layers
# and pause under 400 and 100 kbit/s. Outside `make test` until its bounds hold.
test-weaklink: $(VENV)/.installed-dev system-deps services
	$(BIN)/python -m pytest -s tests/browser/test_adaptation.py $(PYTEST_ARGS)

reliability: $(VENV)/.installed-dev system-deps services
	HUDDLE_RELIABILITY=full $(BIN)/python -m pytest tests/reliability $(PYTEST_ARGS)

# The soak (bench/soak): a real server cycling calls through the whole lifecycle
# plus load-tester media rooms, sampling RSS, FDs, asyncio tasks and database
# connections; 10 minutes unless SOAK_DURATION (seconds) says otherwise.
SOAK_DURATION ?= 600
soak: $(VENV)/.installed-dev services
	mkdir -p var
	$(BIN)/python -m bench.soak.run --duration $(SOAK_DURATION) $(SOAK_ARGS)

# Every benchmark in docs/benchmarks.md, each bounded in count and time (~50 min).
bench: $(VENV)/.installed-dev services bench-deps
	mkdir -p var
	$(BIN)/python -m bench.lifecycle --backend sqlite
	$(BIN)/python -m bench.lifecycle --backend postgres
	$(BIN)/python -m bench.signaling.run --pairs 60
	$(BIN)/python -m bench.loadtest.run
	$(MAKE) --no-print-directory bench-simulcast
	$(MAKE) --no-print-directory bench-janus
	taskset -c 1 $(BIN)/python -m bench.sfu.run --mode naive --subscribers '' \
		--av-subscribers 0,1,8 --room 0 --json var/bench-sfu-naive.json

# Benchmark-only Debian packages (Janus); the test suite never needs them.
bench-deps:
	scripts/install-bench-deps.sh

# Huddle's SFU beside Janus 1.1.2 (default threads, then event_loops = 1), one
# load generator, same scenarios; the table goes to var/bench-sfu-compare.md
# (~20 min; Janus runs in a private network namespace, so it needs root).
bench-janus: $(VENV)/.installed-dev bench-deps
	mkdir -p var
	taskset -c 1 $(BIN)/python -m bench.sfu.run --mode huddle --netns --json var/bench-sfu-huddle.json
	taskset -c 1 $(BIN)/python -m bench.sfu.run --mode janus --json var/bench-sfu-janus.json
	taskset -c 1 $(BIN)/python -m bench.sfu.run --mode janus --event-loops 1 \
		--json var/bench-sfu-janus-el1.json
	$(BIN)/python -m bench.sfu.compare var/bench-sfu-huddle.json var/bench-sfu-janus.json \
		var/bench-sfu-janus-el1.json | tee var/bench-sfu-compare.md

# Simulcast (issue #13; bench/simulcast): server CPU of a room of 6 publishing
# three layers against one layer (alternating runs, same server and generator),
# time from a 400 kbit/s downlink cap to the down-switch and from its lift back
# up, and a `huddle loadtest --simulcast --subscriber-cap` report (~8 min; every
# figure in var/bench-simulcast/results.json, the load test's report beside it).
bench-simulcast: $(VENV)/.installed-dev
	mkdir -p var
	$(BIN)/python -m bench.simulcast.run --json var/bench-simulcast/results.json $(SIMULCAST_ARGS)

# Media workers (issue #15): rooms of 5 load-tester peers on one worker process, then
# on two, each worker in its own cgroup with a quota of 0.25 core (root, cgroup v1
# cpu controller) and two load generator processes; the room count each holds at
# the quality bar is searched, bounded to 15 min; var/bench-workers.json (~5-15 min).
# The first method (no quota, one generator, a list of room counts):
#   make bench-workers WORKERS_ARGS="--rooms 1,2,3,4,5,6,8,10"
WORKERS_ARGS ?= --worker-cpu 0.25 --generators 2 --budget 15
bench-workers: $(VENV)/.installed-dev
	mkdir -p var
	$(BIN)/python -m bench.workers.run $(WORKERS_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache node_modules
