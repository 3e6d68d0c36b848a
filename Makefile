# The two commands: `make serve` and `make test`. Both build .venv on first use
# (and again whenever setup.cfg changes) and install the viewer's pinned npm
# packages, then do their job. `make train-smoke` and `make evaluate` run the
# training scripts with .venv's Python (no need to activate it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VIEWER_DEPS := viewer/node_modules/.package-lock.json
STORE ?= var/slides
HOST ?= 127.0.0.1
PORT ?= 5000
DATA ?= ../shared/data/monuseg2018-train
MODEL ?=
# the bundles `make serve` loads, the first the default mode (names under tileserver/models, or
# folders): the realistic model beside the faithful one it was fine-tuned from (they share 10X and
# 20X, so switching modes changes only 40X texture) where it is shipped, else msr-lite
MODELS ?= $(if $(wildcard tileserver/models/msr-realistic/manifest.json),msr-faithful msr-realistic,msr-lite)

# Debian packages the browser, IIIF-validator and cluster tests need (installed when root)
SYSTEM_DEPS := chromium libmagic1 redis-server nginx

.PHONY: serve test venv viewer demo train-smoke evaluate system-deps mutate clean

venv: $(STAMP)
viewer: $(VIEWER_DEPS)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,test]'
	touch $(STAMP)

$(VIEWER_DEPS): viewer/package.json viewer/package-lock.json
	cd viewer && npm ci --no-audit --no-fund

system-deps:
	@missing=$$(for p in $(SYSTEM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages: $$missing (apt-get install them; the Chromium, IIIF validator and cluster tests need them)"; \
	  fi; \
	fi

demo: $(STAMP)
	$(VENV)/bin/tileserver demo $(STORE)

serve: demo $(VIEWER_DEPS)
	$(VENV)/bin/tileserver serve $(STORE) --host $(HOST) --port $(PORT) $(foreach m,$(MODELS),--model $(m))

test: system-deps $(STAMP) $(VIEWER_DEPS)
	$(PY) -m pytest -p no:cacheprovider

# mutation testing of the core modules (geometry, IIIF parse/resolve, caches, planes and the synthesis
# budget, catalog rules) with the tests that need no model bundle; [tool.mutmut] in pyproject.toml says
# which. Prints killed / survived / timeout, the survival rate and the survivors. Not part of `make test`.
mutate: $(STAMP)
	$(PY) -m pip install --quiet -e '.[mutate]'
	rm -rf mutants && mkdir -p var
	nice -n 19 $(VENV)/bin/mutmut run --max-children 2 > var/mutmut.log 2>&1 || { tail -c 3000 var/mutmut.log; exit 1; }
	$(PY) benchmarks/mutation_summary.py

# a tiny network for a few steps on DATA (a folder of 40X tiles): seconds on a CPU
train-smoke: $(STAMP)
	$(PY) training/train.py --config training/configs/smoke.yaml --data $(DATA) --out runs/smoke

# PSNR/SSIM against bicubic on DATA's validation images; MODEL: a checkpoint or bundle (default: the shipped one)
evaluate: $(STAMP)
	$(PY) training/evaluate.py $(MODEL) --data $(DATA)

clean:
	rm -rf $(VENV) var build *.egg-info viewer/node_modules mutants
