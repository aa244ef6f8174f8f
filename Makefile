# The two commands a newcomer needs: `make up` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: up test bench soak venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

## Start the whole stack locally in the foreground (Redis, producer :3000, consumers, reclaimer).
up: $(STAMP)
	$(PY) -m streamcore.cli up $(ARGS)

## Run every test tier that is not opt-in.
test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/run.py

## Chaos soak (soak/README.md): SOAK_S seconds of load, consumer SIGKILLs, Redis restarts and
## poison entries, then the table; exit 0 only when every target holds. `make soak SOAK_S=60` is the
## short form the test suite runs; SOAK_ARGS passes more flags (e.g. '--json soak.json').
SOAK_S ?= 600
soak: $(STAMP)
	$(PY) -m soak.run --seconds $(SOAK_S) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .local-data
include mk/cluster.mk
