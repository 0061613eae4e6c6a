# PromptEcho: every target creates/reuses .venv and never downloads model weights.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is constrained to the build already in .venv, else to the local CPU wheel (override: make TORCH=2.5.1 ...).
TORCH ?= 2.13.0
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: venv demo test test-fast test-browser test-ui-compat bench eval proof ui clean-venv
# `make demo UI=0` only scores the example (no app)
UI ?= 1

venv: $(STAMP)

$(STAMP): requirements.txt requirements-ui.txt requirements-dev.txt requirements-test-extras.txt requirements-browser.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt 2>/dev/null \
	  || echo "torch==$(TORCH)" > $(VENV)/constraints.txt
	@echo "constraints: $$(cat $(VENV)/constraints.txt)"
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -r requirements-dev.txt
	@# test-only extras kept apart from site-packages (see requirements-test-extras.txt); tests skip without them
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/test-extras -r requirements-test-extras.txt \
	  || echo "warning: test extras not installed; Qwen/SmolVLM engine tests will be skipped"
	@# browser tests: playwright's package only (no `playwright install`); they drive Debian's /usr/bin/chromium
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -r requirements-browser.txt \
	  || echo "warning: playwright not installed; browser tests will be skipped"
	touch $(STAMP)

demo: venv
	$(PY) -m promptecho demo --out out/demo
	@if [ "$(UI)" = "1" ]; then echo "opening the Gradio app on http://127.0.0.1:7860 (Ctrl-C to quit; UI=0 skips it)"; \
	  $(PY) -m promptecho.ui --port 7860; fi

ui: venv
	$(PY) -m promptecho.ui

# ShapesWorld evaluation table (README): discrimination, best-of-N, Spearman; about 10 min on 2 cores
eval: venv
	$(PY) -m promptecho.shapes.eval

# ShapesWorld RL proof (README table): PromptEcho-rewarded AWM and Flow-GRPO, VQAScore-rewarded baseline, the three
# in parallel on one thread each, 30 minutes of training each (about 35 minutes in all on 2 cores). The recipes are the
# "ShapesWorld proof" (AWM) and "ShapesWorld proof Flow-GRPO" presets: LoRA on the attention, image MLPs and output
# projection; AWM with a trust region to a moving average of its LoRA weights and Flow-GRPO with a KL to the base
# model: without them the wider LoRA collapsed (AWM) or reward-hacked (Flow-GRPO)
PROOF = $(PY) -m promptecho.grpo.shapes_proof --minutes 30 --max-steps 100000 --threads 1 --eval-prompts 400
proof: venv
	$(PROOF) --algorithm awm --reward promptecho --out out/proof/awm-promptecho & \
	$(PROOF) --algorithm grpo --reward promptecho --out out/proof/grpo-promptecho & \
	$(PROOF) --algorithm awm --reward vqascore --out out/proof/awm-vqascore & \
	wait
	$(PY) -m promptecho.grpo.shapes_proof --table out/proof/*/proof.json

test: venv
	$(PY) -m pytest -q tests

test-fast: venv
	$(PY) -m pytest -q -x -m "not slow" tests

# the app in Debian's Chromium through Playwright (screenshots in test-artifacts/browser/); skipped without them
test-browser: venv
	$(PY) -m pytest -q tests/test_browser.py

# The tab under the Gradio versions WebUI hosts pin (A1111 / SD.Next 3.41-3.43, Forge 4.40): one venv each,
# torch constrained to .venv's build. huggingface_hub 1.x (needed by transformers 5) dropped HfFolder, which these
# Gradio versions import: tests/ui_gradio4_hfshim.py aliases it (test venvs only, via a .pth line).
UI_COMPAT_TESTS := tests/test_ui_api.py tests/test_ui_core.py tests/test_ui_train_api.py tests/test_webui_entry.py
GRADIO3 ?= 3.41.2
GRADIO4 ?= 4.40.0

# requirements-compat-gradio{3,4}.txt: the fastapi / starlette / pydantic pins those Gradio versions need (why: in them).
.venv-gradio%/.installed: requirements.txt requirements-compat-gradio%.txt
	test -f $(VENV)/constraints.txt || $(MAKE) venv
	test -x .venv-gradio$*/bin/python || $(PYTHON) -m venv .venv-gradio$*
	.venv-gradio$*/bin/python -m pip install -q -c $(VENV)/constraints.txt -r requirements.txt pytest accelerate \
	  "gradio==$(GRADIO$*)" -r requirements-compat-gradio$*.txt
	cp tests/ui_gradio4_hfshim.py "$$(.venv-gradio$*/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
	echo "import ui_gradio4_hfshim" > "$$(.venv-gradio$*/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/ui_gradio4_hfshim.pth"
	touch $@

test-ui-compat: .venv-gradio3/.installed .venv-gradio4/.installed
	@rc=0; for v in 3 4; do echo "== Gradio $$(.venv-gradio$$v/bin/python -c 'import gradio; print(gradio.__version__)')"; \
	  .venv-gradio$$v/bin/python -m pytest -q -p no:cacheprovider $(UI_COMPAT_TESTS) || rc=1; done; exit $$rc

bench: venv
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
