# freshen: the two commands of the README, and the helpers they use.
#   make demo   the main job end to end on the embedded ToyWorld default
#   make test   the test suite
# Both create (or reuse) the virtual environment .venv and install the pinned packages.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv browser servers demo test lint check clean bench-edit bench-speed bench-feeds bench-registry bench-demo

venv: $(STAMP)

# open_clip_torch is installed only for the CLIP BPE merges it ships (SD's tokenizer, rebuilt
# for the tests and the benchmark imports), without its dependencies, which would pull another torch
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "freshen needs Python 3.11, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==24.3.1
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps open_clip_torch==3.3.0
	touch $(STAMP)

demo: venv
	$(BIN)/freshen demo

test: venv browser servers
	$(BIN)/python -m pytest -q

# Debian's Chromium and its driver, for the tests that open pages in a real headless browser
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x /usr/bin/chromedriver -a -x /usr/bin/chromium || { \
	  echo "installing Debian's chromium and chromium-driver (browser tests)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Debian's PostgreSQL and Redis, for the tests that run the service on real servers (the
# tests start and stop their own instances on free ports: tests/servers.py)
servers:
	@test -x /usr/bin/redis-server && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql and redis-server (stack tests)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >/dev/null; }

lint: venv
	$(BIN)/ruff check .

check: venv
	$(BIN)/freshen dev toyworld check

# Benchmarks (slow; not part of make test). Results land in bench/results/.
bench-edit: venv
	$(BIN)/python -m bench.edit_quality

bench-speed: venv
	$(BIN)/python -m bench.edit_speed

bench-feeds: venv
	$(BIN)/python -m bench.feeds_throughput

bench-registry: venv
	$(BIN)/python -m bench.registry_storage

bench-demo: venv
	$(BIN)/python -m bench.demo_time

clean:
	rm -rf var .pytest_cache
