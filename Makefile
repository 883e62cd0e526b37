# Two targets do all the set-up on a fresh machine, and are idempotent:
#   make demo   create .venv if needed, install mmldm, run the demo
#   make test   the same set-up, then ruff and pytest
# CPU machines pin torch through constraints-cpu.txt; on a GPU machine use
#   make test CONSTRAINTS=   (or install into your own environment: pip install -e ".[dev]")

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.mmldm-installed

.PHONY: demo test install system-deps clean

install: $(STAMP)

# Debian's ffmpeg gives ffprobe, which the tests use to check written mp4 files.
system-deps:
	@command -v ffprobe >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's ffmpeg (for ffprobe)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null; \
	  else echo "ffprobe is missing: sudo apt-get install ffmpeg"; exit 1; fi; }

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "mmldm needs Python >= 3.10"'
	$(PYTHON) -m venv $(VENV)

# Re-installs only when the dependency list or the constraints change.
$(STAMP): pyproject.toml $(wildcard $(CONSTRAINTS)) | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	touch $(STAMP)

test: $(STAMP) system-deps
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

demo: $(STAMP)
	@$(BIN)/mmldm --help
	@echo
	@echo "mmldm demo is not available yet: it needs the signal/data, autoencoder, generator and"
	@echo "evaluation stages (issues 3-7). The commands listed above work now."

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
