# Two targets do all the set-up on a fresh machine, and are idempotent:
#   make demo   create .venv if needed, install mmldm, run the demo
#   make test   the same set-up, then ruff and pytest
# and one checks the oldest supported dependencies (pyproject.toml's floors):
#   make test-floors   a second venv (.venv-floors) pinned by constraints-floors.txt, pytest
# CPU machines pin torch through constraints-cpu.txt; on a GPU machine use
#   make test CONSTRAINTS=   (or install into your own environment: pip install -e ".[dev]")

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.mmldm-installed

.PHONY: demo test test-floors install system-deps clean

install: $(STAMP)

# Debian packages the tests use: ffmpeg (ffprobe checks written mp4 files) and chromium (the
# gallery page is opened in a headless browser). Installed only when missing.
SYSTEM_PACKAGES := ffmpeg:ffprobe chromium:chromium

system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair#*:} >/dev/null 2>&1 || missing="$$missing $${pair%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mmldm needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)

# Re-installs only when the dependency list or the constraints change.
$(STAMP): pyproject.toml $(wildcard $(CONSTRAINTS)) | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	touch $(STAMP)

test: $(STAMP) system-deps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

FLOORS_VENV := .venv-floors
FLOORS_STAMP := $(FLOORS_VENV)/.mmldm-installed

$(FLOORS_STAMP): pyproject.toml constraints-floors.txt $(wildcard $(CONSTRAINTS))
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) \
	  -c constraints-floors.txt -e . "pytest>=8"
	touch $(FLOORS_STAMP)

# The browser tests skip there (no playwright / gradio: the app extra has its own floor).
test-floors: $(FLOORS_STAMP) system-deps
	HF_HUB_OFFLINE=1 $(FLOORS_VENV)/bin/python -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(BIN)/mmldm demo --out runs/demo

clean:
	rm -rf $(VENV) $(FLOORS_VENV) .pytest_cache .ruff_cache src/*.egg-info
