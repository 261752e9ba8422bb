# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run index test bench clean

# torch goes first and pinned: its CPU build lies on the machines' disk, while letting the
# resolver pick it (via sentence-transformers) may pull several GB of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

index: install
	$(BIN)/bookqa index

run: index
	$(BIN)/bookqa serve

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf .bookqa .pytest_cache
