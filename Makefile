# The README's two commands: `make demo` and `make test`. Each one installs what it needs.
# Test tiers: test-fast (no Ray, the edit loop), test (what CI runs first), test-cluster (jobs on
# a real 2-node local Ray cluster, CI's second step), test-slow (benchmark-sized reproductions).
VENV ?= .venv
PYTEST_ARGS ?=
PYTEST = $(VENV)/bin/python -m pytest --durations=15

.PHONY: install demo test test-fast test-cluster test-slow lint
install:
	@./scripts/bootstrap.sh

demo: install
	$(VENV)/bin/semray demo

# Two pytest-xdist workers: one takes the tests that share the session's trained runs (an
# xdist_group, tests/conftest.py), the other the remaining Ray tests. Ray's start-up leaves a core
# idle in a serial run; two workers, not one per core, because every Ray test is itself two or more
# processes. 357 -> 283 s on a 2-core Zen 4 (bench/RESULTS.md, "Test suite").
test: install
	@./scripts/test-deps.sh
	$(PYTEST) -m "not slow and not cluster" -n 2 --dist loadgroup $(PYTEST_ARGS)

test-fast: install
	@./scripts/test-deps.sh
	$(PYTEST) -m "not slow and not ray" $(PYTEST_ARGS)

test-cluster: install
	$(PYTEST) -m "cluster" $(PYTEST_ARGS)

test-slow: install
	$(PYTEST) -m "slow" $(PYTEST_ARGS)

# ruff: pyflakes, pycodestyle, import order, bugbear, pyupgrade (settings in pyproject.toml)
lint: install
	$(VENV)/bin/ruff check semray tests bench jobs
