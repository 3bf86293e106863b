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

# The repository is exported again whenever the model templates or the export code change.
$(DEMO)/repository/manifest.json: $(wildcard model_repository/*/config.pbtxt model_repository/*/1/model.py export/*.py) | $(DEMO)/checkpoint
	rm -rf $(DEMO)/repository
	$(DJZ) export --checkpoint $(DEMO)/checkpoint --out $(DEMO)/repository --runtime onnxruntime \
		|| { rm -rf $(DEMO)/repository; exit 1; }

# Random tiny weights never choose to speak on their own, so the demo forces their length: 40 frames (about 5 s)
# for the CLI example, 0.5 frames per character of script (about speaking pace) for the orchestrator, which starts
# with the example voices (Alice, Bob) and keeps its data in .demo/data.
demo: venv $(DEMO)/repository/manifest.json
	$(DJZ) synth --model $(DEMO)/repository --script examples/two_speakers.txt \
		--voice 0=examples/voices/alice.wav --voice 1=examples/voices/bob.wav --out $(DEMO)/demo.wav \
		--frames 40 --seed 1
	DJZ_EXACT_FRAMES_PER_CHAR=0.5 DJZ_STARTER_VOICES_DIR=examples/voices \
		$(DJZ) serve --model-repository $(DEMO)/repository --data-dir $(DEMO)/data

clean:
	rm -rf $(DEMO) .pytest_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
