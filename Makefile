# The README's commands. `make test` is what CI runs (.ci/run).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  ?= cpu,train,export,bench,test,mlx,serve
# CPU build of torch, installed first where no GPU is present so nothing pulls a CUDA build.
TORCH_CPU ?= torch==2.13.0
CMKP    ?= ../shared/data/cmkp

.PHONY: setup demo test score clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then echo "GPU found: torch from the index"; \
	 else echo "no GPU: installing the CPU torch build ($(TORCH_CPU))"; $(BIN)/pip install -q $(TORCH_CPU); fi
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

# The one-command demo: synthetic posts → zero_shot → sft → cot-data → cot → dynamic_cot →
# int8 ONNX bundle → mmkp-predict, offline on CPU with a tiny student.
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/mmkp-train demo --out runs/demo

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

# Score CMKP's published predictions with the CMKP-exact scorer (needs the CMKP files in $(CMKP)).
score: setup
	$(BIN)/mmkp-score $(CMKP)/test_src.txt $(CMKP)/cmkp_best_pred.txt --ocr $(CMKP)/test_ocr_final.txt

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
