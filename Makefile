# Two commands on a fresh clone: `make serve` and `make test`. Everything installs into .venv.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
SETUP  := $(VENV)/.installed
# The kserve SDK, only to check deploy/kserve/ against KServe's schema, in its own venv (its pins clash).
KSERVE_SETUP := .venv-kserve/.installed
# kserve 0.13, the runtime's own front end in front of TorchServe in the KServe live tests (docs/kserve.md).
KSERVE_FRONTEND_SETUP := .venv-kserve-frontend/.installed
MODELS := image_classifier text_classifier audio_classifier

# Variants of the same models, served by the same handlers on ONNX Runtime (docs/onnx.md).
VARIANTS := $(MODELS:%=%_onnx) image_classifier_int8

EXPORTS  := $(MODELS:%=exports/%/model.json) $(VARIANTS:%=exports/%/model.json)
ARCHIVES := $(MODELS:%=model_store/%.mar) $(VARIANTS:%=model_store/%.mar)
SHARED_TRAINING := model_defs/__init__.py model_defs/registry.py model_defs/export.py train/__init__.py train/common.py train/init_weights.py model_defs/checkpoints.py

.PHONY: setup exports archives serve stop console test test-unit test-live bench soak kserve clean
.DELETE_ON_ERROR:

setup: $(SETUP)

# Fails with a message when Python 3.11 or Java 17 is missing; reinstalls when requirements change.
$(SETUP): requirements.txt scripts/check_prereqs.sh
	scripts/check_prereqs.sh $(PYTHON)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# A demo export is retrained when it is missing or older than the code that produced it.
# (Train on your own data with `$(PY) -m train.<modality> --data ...`; see docs/your-model.md.)
exports/image_classifier/model.json: train/image.py train/synthetic_shapes.py model_defs/image.py $(SHARED_TRAINING) | $(SETUP)
	$(PY) -m train.image
exports/text_classifier/model.json: train/text.py train/synthetic_messages.py model_defs/text.py $(SHARED_TRAINING) | $(SETUP)
	$(PY) -m train.text
exports/audio_classifier/model.json: train/audio.py train/synthetic_sounds.py model_defs/audio.py $(SHARED_TRAINING) | $(SETUP)
	$(PY) -m train.audio

# An ONNX variant is remade from its base export when that, or the export code, changes; the int8
# model from the fp32 graph, calibrated and evaluated on the image trainer's data.
ONNX_EXPORT := train/export_onnx.py model_defs/onnx_export.py model_defs/onnx_runtime.py
exports/%_onnx/model.json: exports/%/model.json $(ONNX_EXPORT) | $(SETUP)
	$(PY) -m train.export_onnx $*
exports/image_classifier_int8/model.json: exports/image_classifier_onnx/model.json train/image.py $(ONNX_EXPORT) | $(SETUP)
	$(PY) -m train.export_onnx image_classifier --int8

exports: $(EXPORTS)

model_store/%.mar: exports/%/model.json configs/%.yaml archive.sh $(wildcard handlers/*.py model_defs/*.py) | $(SETUP)
	./archive.sh $*

archives: $(ARCHIVES)

# The folder KServe's TorchServe runtime reads (kserve/config, kserve/model-store): docs/kserve.md.
kserve: $(ARCHIVES)
	$(PY) -m scripts.kserve_bundle

serve: $(ARCHIVES)
	$(PY) -m scripts.serve

stop:
	-$(VENV)/bin/torchserve --stop

# A page in the browser for the running `make serve` (docs/console.md): try a model, see its explanation
# drawn, compare its variants. Prints the URL (with the inference key in its fragment); Ctrl+C stops it.
# CONSOLE_PORT=0 picks a free port.
CONSOLE_PORT ?= 8090
console: $(SETUP)
	$(PY) -m scripts.console --port $(CONSOLE_PORT)

$(KSERVE_SETUP): requirements-kserve.txt
	test -x .venv-kserve/bin/python || $(PYTHON) -m venv .venv-kserve
	.venv-kserve/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-kserve.txt
	touch $@

$(KSERVE_FRONTEND_SETUP): requirements-kserve-frontend.txt
	test -x .venv-kserve-frontend/bin/python || $(PYTHON) -m venv .venv-kserve-frontend
	.venv-kserve-frontend/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-kserve-frontend.txt
	touch $@

test: $(EXPORTS) $(KSERVE_SETUP) $(KSERVE_FRONTEND_SETUP)
	$(PY) -m pytest tests

test-unit: $(EXPORTS) $(KSERVE_SETUP)
	$(PY) -m pytest tests/unit

test-live: $(EXPORTS) $(KSERVE_SETUP) $(KSERVE_FRONTEND_SETUP)
	$(PY) -m pytest tests/integration

# Every model served at 1/4/16/64 clients against its in-process baseline, and the image handler against
# TorchServe's stock one (not a test; ~15 min on 2 cores). Results in bench/results/ (docs/benchmark.md);
# options: $(PY) -m bench.bench --help, e.g. make bench BENCH_ARGS='--models text_classifier --seconds 4'.
bench: $(EXPORTS)
	$(PY) -m bench.bench $(BENCH_ARGS)

# Every model at once at about half the server's capacity for SOAK_SECONDS (default 10 min) on a
# TorchServe of its own: errors, p99 first/last minute, worker RSS drift, fds and threads; exits 1 on
# any error or an RSS drift of 5% or more. `make test` runs a 60 s version (docs/production.md).
SOAK_SECONDS ?= 600
soak: $(EXPORTS)
	$(PY) -m bench.soak --seconds $(SOAK_SECONDS)

clean:
	rm -rf exports model_store logs samples key_file.json kserve
