#!/usr/bin/env bash
# Run the fast test suite against the lowest supported peft/transformers pair and against the newest releases pip
# resolves for pyproject.toml's ranges (what a new user gets), each in a throwaway venv:
#
#   scripts/check_versions.sh                    # both pairs
#   scripts/check_versions.sh low                # only the lowest pair
#   PYTEST_ARGS="tests/test_gift.py" scripts/check_versions.sh high
#
# Exit code 0 when every selected pair passes. Needs network access to the package index (or a local mirror).
set -euo pipefail
cd "$(dirname "$0")/.."

LOW="${LOW:-peft==0.21.2 transformers==5.24.0}"   # transformers 5.0.0: 28 fast tests fail (ViT/DINOv2 module names)
HIGH="${HIGH:-}"                                     # empty: the newest releases the ranges allow
TORCH="${TORCH:-torch==2.13.0}"
PYTEST_ARGS="${PYTEST_ARGS:--q -m \"not slow\"}"

pairs=()
case "${1:-both}" in
  low) pairs=("$LOW") ;;
  high) pairs=("$HIGH") ;;
  both) pairs=("$LOW" "$HIGH") ;;
  *) echo "usage: $0 [low|high|both]" >&2; exit 2 ;;
esac

status=0
for pair in "${pairs[@]}"; do
  venv="$(mktemp -d)/venv"
  echo "== ${pair:-newest releases} (venv $venv)"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "$TORCH"
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install -q -e ".[test]" $pair
  "$venv/bin/python" -c "import peft, transformers; print('peft', peft.__version__, 'transformers', transformers.__version__)"
  if (export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1; eval "\"$venv/bin/python\" -m pytest $PYTEST_ARGS"); then
    echo "== ${pair:-newest releases}: passed"
  else
    echo "== ${pair:-newest releases}: FAILED"
    status=1
  fi
  rm -rf "$(dirname "$venv")"
done
exit $status
