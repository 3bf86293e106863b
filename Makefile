# DJZ-VibeVoice developer entry points: the environment, the tests, a CPU demo with a tiny checkpoint.
PYTHON ?= python3.11
VENV := .venv
DJZ := $(VENV)/bin/djz
DEMO := .demo

.PHONY: venv test demo clean

venv: $(VENV)/.installed

# torch is pinned and installed first: here it resolves to a local CPU wheel, where a plain `torch` requirement
# would pull several GB of CUDA packages.
$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install torch==2.13.0
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $@

test: venv
	$(VENV)/bin/python -m pytest -q

# Each stage runs only when its output folder is absent; a failed stage leaves no half-built folder behind.
$(DEMO)/checkpoint: | venv
	mkdir -p $(DEMO)
	$(DJZ) make-checkpoint --size tiny --out $@ || { rm -rf $@; exit 1; }

$(DEMO)/repository: | $(DEMO)/checkpoint
	$(DJZ) export --checkpoint $(DEMO)/checkpoint --out $@ --runtime onnxruntime || { rm -rf $@; exit 1; }

# Random tiny weights never choose to speak on their own, so the demo forces 40 frames (about 5 s).
demo: venv $(DEMO)/repository
	$(DJZ) synth --model $(DEMO)/repository --script examples/two_speakers.txt \
		--voice 0=examples/voices/alice.wav --voice 1=examples/voices/bob.wav --out $(DEMO)/demo.wav \
		--frames 40 --seed 1

clean:
	rm -rf $(DEMO) .pytest_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
