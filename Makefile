# Two commands do all the set-up on a fresh machine: `make up` and `make test`.
# Every target bootstraps .venv first (fast when nothing changed).
N ?= 3
PYTEST_ARGS ?=
VENV := .venv/bin

.PHONY: setup up test test-docker lint bench down doctor clean

setup:
	@scripts/bootstrap

up: setup          ## start N pairs in the foreground (Ctrl-C tears them down)
	$(VENV)/harness up $(N)

test: setup        ## the whole suite: unit, emulator, stand-in, harness, integration (2, 3, 4 instances)
	$(VENV)/pytest -n 2 $(PYTEST_ARGS)

test-docker: setup ## the integration suite with emulator containers (needs a Docker engine)
	$(VENV)/harness image build
	$(VENV)/pytest -n 2 tests/integration --emulator docker $(PYTEST_ARGS)

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	PATH="$(CURDIR)/.venv/bin:$$PATH" scripts/check-workflows

bench: setup
	$(VENV)/pip install -q -e '.[bench]'
	$(VENV)/python -m bench

down: setup
	$(VENV)/harness down

doctor: setup
	$(VENV)/harness doctor

clean:
	rm -rf .venv build *.egg-info .mypy_cache .ruff_cache
