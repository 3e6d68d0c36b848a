# The two commands: `make serve` and `make test`. Both build .venv on first use
# (and again whenever setup.cfg changes) and install the viewer's pinned npm
# packages, then do their job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VIEWER_DEPS := viewer/node_modules/.package-lock.json
STORE ?= var/slides
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: serve test venv viewer demo clean

venv: $(STAMP)
viewer: $(VIEWER_DEPS)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,test]'
	touch $(STAMP)

$(VIEWER_DEPS): viewer/package.json viewer/package-lock.json
	cd viewer && npm ci --no-audit --no-fund

demo: $(STAMP)
	$(PY) -m tileserver.demo $(STORE)

serve: demo $(VIEWER_DEPS)
	$(VENV)/bin/tileserver serve $(STORE) --host $(HOST) --port $(PORT)

test: $(STAMP) $(VIEWER_DEPS)
	$(PY) -m pytest -p no:cacheprovider

clean:
	rm -rf $(VENV) var build *.egg-info viewer/node_modules
