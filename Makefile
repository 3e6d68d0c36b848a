# The two commands: `make serve` and `make test`. Both build .venv on first use
# (and again whenever setup.cfg changes), then do their job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STORE ?= var/slides
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: serve test venv clean demo

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m tileserver.demo $(STORE)

serve: demo
	$(VENV)/bin/tileserver serve $(STORE) --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider

clean:
	rm -rf $(VENV) var build *.egg-info
