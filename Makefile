# dmlm: the two commands. Both create/use .venv/ in the repo.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install sysdeps bench clean

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (Python 3.11)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# pinned CPU torch first (an unpinned torch pulls a multi-GB CUDA build), then the package
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

# Debian tools the demo and the tests need (espeak-ng, flite: speech synthesis; chromium: the browser
# test of `dmlm serve`'s page, driven by Playwright with this system browser)
sysdeps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "installing espeak-ng (Debian)"; \
	  (apt-get update -qq && apt-get install -y -qq espeak-ng) >/dev/null || \
	  { echo "could not install espeak-ng; run: apt-get install espeak-ng"; exit 1; }; }
	@command -v flite >/dev/null 2>&1 || { \
	  echo "installing flite (Debian)"; \
	  (apt-get update -qq && apt-get install -y -qq flite) >/dev/null || \
	  { echo "could not install flite; run: apt-get install flite"; exit 1; }; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null || \
	  { echo "could not install chromium; run: apt-get install chromium"; exit 1; }; }

# `make demo QUICK=1`: every task end to end on a slice of the work (configs/demo-quick.yaml)
# `make demo OPEN=1`: the open-vocabulary model from SmolLM2-135M (configs/open.yaml; hours, resumable)
# `make demo MULTI=1`: speech in English, Spanish, German and French, and S2ST (configs/multilingual.yaml; <= 60 min)
# `OUT=DIR`: the run folder (default: the config's `out`), e.g. outside the repository for a long run
QUICK_OR_DEMO := $(if $(QUICK),configs/demo-quick.yaml,configs/demo.yaml)
DEMO_CONFIG := $(if $(OPEN),configs/open.yaml,$(if $(MULTI),configs/multilingual.yaml,$(QUICK_OR_DEMO)))
DEMO_ASSETS := whisper-base $(if $(OPEN),smollm2-135m)

demo: install sysdeps
	$(BIN)/dmlm assets $(DEMO_ASSETS)
	$(BIN)/dmlm demo $(DEMO_CONFIG) $(if $(OUT),out=$(OUT))

test: install sysdeps
	$(BIN)/python -m pytest -q

# each benchmark measures dmlm against a baseline in the same run; results in bench/results/
bench: install sysdeps
	$(BIN)/python -m bench.tokenize_speed
	$(BIN)/python -m bench.train_speed
	$(BIN)/python -m bench.pretrained_speed
	$(BIN)/python -m bench.pretrained_cut --with-last
	$(BIN)/python -m bench.decode_speed
	$(BIN)/python -m bench.asr_rtf
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.vocoder_speed
	$(BIN)/python -m bench.serve_load
	$(BIN)/python -m bench.under_load
	$(BIN)/python -m bench.stage_scaling

clean:
	rm -rf runs/ .pytest_cache
