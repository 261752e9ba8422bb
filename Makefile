# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser run index test bench clean
# The browser tests drive Debian's Chromium (Playwright only drives it); a Korean font makes the page readable.
BROWSER_PACKAGES := chromium fonts-nanum
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# torch goes first and pinned: its CPU build lies on the machines' disk, while letting the
# resolver pick it (via sentence-transformers) may pull several GB of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	# sentence-transformers' OpenVINO backend. Without --no-deps it would pull PyPI's torchvision, whose
	# build does not load beside the CPU torch on disk and breaks `import transformers`; it is not used
	# for text. Its other requirements are in pyproject.toml.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps optimum-intel==2.2.0
	touch $(STAMP)

install: $(STAMP)

browser:
	@dpkg -s $(BROWSER_PACKAGES) >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PACKAGES); }

index: install
	$(BIN)/bookqa index

run: index
	$(BIN)/bookqa serve

test: install browser
	$(BIN)/python -m pytest

clean:
	rm -rf .bookqa .pytest_cache
