# Two commands on a fresh clone: `make serve` and `make test`. Everything installs into .venv.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
SETUP  := $(VENV)/.installed
# The kserve SDK, only to check deploy/kserve/ against KServe's schema, in its own venv (its pins clash).
KSERVE_SETUP := .venv-kserve/.installed
MODELS := image_classifier text_classifier audio_classifier

EXPORTS  := $(MODELS:%=exports/%/model.json)
ARCHIVES := $(MODELS:%=model_store/%.mar)
SHARED_TRAINING := model_defs/__init__.py model_defs/registry.py model_defs/export.py train/__init__.py train/common.py

.PHONY: setup exports archives serve stop test test-unit test-live bench kserve clean
.DELETE_ON_ERROR:

setup: $(SETUP)

# Fails with a message when Python 3.11 or Java 17 is missing; reinstalls when requirements change.
$(SETUP): requirements.txt scripts/check_prereqs.sh
	scripts/check_prereqs.sh $(PYTHON)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# A demo export is retrained when it is missing or older than the code that produced it.
# (Train on your own data with `$(PY) -m train.<modality> --data ...`; see README.)
exports/image_classifier/model.json: train/image.py train/synthetic_shapes.py model_defs/image.py $(SHARED_TRAINING) | $(SETUP)
	$(PY) -m train.image
exports/text_classifier/model.json: train/text.py train/synthetic_messages.py model_defs/text.py $(SHARED_TRAINING) | $(SETUP)
	$(PY) -m train.text
exports/audio_classifier/model.json: train/audio.py train/synthetic_sounds.py model_defs/audio.py $(SHARED_TRAINING) | $(SETUP)
	$(PY) -m train.audio

exports: $(EXPORTS)

model_store/%.mar: exports/%/model.json configs/%.yaml archive.sh $(wildcard handlers/*.py model_defs/*.py) | $(SETUP)
	./archive.sh $*

archives: $(ARCHIVES)

# The folder KServe's TorchServe runtime reads (kserve/config, kserve/model-store): README, "KServe".
kserve: $(ARCHIVES)
	$(PY) -m scripts.kserve_bundle

serve: $(ARCHIVES)
	$(PY) -m scripts.serve

stop:
	-$(VENV)/bin/torchserve --stop

$(KSERVE_SETUP): requirements-kserve.txt
	test -x .venv-kserve/bin/python || $(PYTHON) -m venv .venv-kserve
	.venv-kserve/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-kserve.txt
	touch $@

test: $(EXPORTS) $(KSERVE_SETUP)
	$(PY) -m pytest tests

test-unit: $(EXPORTS) $(KSERVE_SETUP)
	$(PY) -m pytest tests/unit

test-live: $(EXPORTS)
	$(PY) -m pytest tests/integration

# Throughput/latency/memory against the in-process model and TorchServe's stock handler (not a test).
bench: $(SETUP)
	$(PY) -m bench.bench

clean:
	rm -rf exports model_store logs samples key_file.json kserve
