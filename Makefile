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

# The main job: an EfficientFormerV2 backbone for a 1.5 ms budget on the iPhone 12 (shipped analytic
# table, training-free proxy scores); the found architecture is printed as YAML.
demo: $(STAMP)
	$(PY) -m nas.search --target-latency 1.5ms --device iphone12

test: $(STAMP)
	$(PY) -m pytest -q -n 2

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
