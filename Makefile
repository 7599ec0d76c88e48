# Two entry points for a new machine: `make demo` (install + main job), `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install clean

install: $(STAMP)

# Re-install whenever pyproject.toml changes, so `make test` always runs against the declared deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	@echo "latnas demo: nas.search is not built yet (see README status); showing the most useful command that exists." >&2
	$(PY) -m search_spaces list
	$(PY) -m search_spaces show efficientformer_v2 --ref s0

test: $(STAMP)
	$(PY) -m pytest -q -n 2

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
