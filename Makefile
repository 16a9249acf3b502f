# The README's two commands: `make demo` and `make test`. Each one installs what it needs.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: install demo test bench
install:
	@./scripts/bootstrap.sh

demo: install
	$(VENV)/bin/semray demo

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
