# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-terrain test lint bench bench-ray bench-peer docs

$(STAMP): pyproject.toml requirements/ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/ci.txt -e '.[all,dev,bench,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/bands/demo.py

demo-terrain: $(STAMP)
	$(PY) examples/terrain/optimize.py

bench: $(STAMP)
	$(PY) bench/transport.py
	$(PY) bench/pipeline.py
	$(PY) bench/overhead.py
	$(PY) bench/load.py

bench-ray: $(STAMP)
	$(PY) bench/scaleout.py

bench-peer: $(STAMP)
	$(PY) bench/peer.py
	$(PY) bench/peer_runtimes.py

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The container tests need podman: scripts/container-tools.sh installs it as root (CI) and
# otherwise says what is missing, and the other tests run (CI=true makes that an error).
test: lint
	@status=0; ./scripts/container-tools.sh || status=$$?; \
	if [ $$status = 0 ]; then $(PY) -m pytest; \
	elif [ $$status = 1 ]; then $(PY) -m pytest -m "not containers"; \
	else exit $$status; fi
