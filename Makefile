# The README's two commands: `make demo` and `make test`. Each one installs what it needs.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: install demo test bench
install:
	@./scripts/bootstrap.sh

demo: install
	$(VENV)/bin/semray demo

test: install
	@./scripts/test-deps.sh
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
