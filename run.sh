#!/usr/bin/env bash
# Sets up .venv (once) and runs diffjax:
#   bash run.sh train [launch.py flags]   train the embedded default into runs/default, then score
#                                         it (FINAL_EVAL_SAMPLES=2000; 0 skips; FINAL_EVAL_METRICS)
#   bash run.sh test  [pytest args]       run the test suite
#   bash run.sh setup                     only install
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
# The install stamp covers everything setup installs, so a change of pins re-installs.
STAMP=$VENV/.installed-$( (cat requirements.txt pyproject.toml diffjax/assets.py) | cksum | cut -d' ' -f1)
TEST_STAMP=$VENV/.installed-test-$( (cat requirements.txt requirements-test.txt pyproject.toml) | cksum | cut -d' ' -f1)

setup() {
  if [ ! -f "$STAMP" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e .            # diffjax and its pinned dependencies
    "$VENV/bin/python" -m diffjax.assets                 # FID weights, embedded digits' package
    touch "$STAMP"
  fi
}

setup_test() {  # test-only packages (torch CPU as the FID reference, scipy, pytest, ruff)
  setup
  if [ ! -f "$TEST_STAMP" ]; then
    "$VENV/bin/python" -m pip install -q -r requirements-test.txt
    # the KID/IS peer (tests/test_metric_peers.py) without the CUDA torchvision it would pull in
    "$VENV/bin/python" -m pip install -q --no-deps torch-fidelity==0.4.0
    touch "$TEST_STAMP"
  fi
}

cmd=${1:-train}
shift || true
case "$cmd" in
  setup) setup ;;
  train) # setup, training and the final evaluation are timed apart
         t0=$(date +%s); setup; t1=$(date +%s)
         echo "setup: $((t1 - t0)) s"
         WD=${WORKDIR:-runs/default}
         "$VENV/bin/python" launch.py --workdir "$WD" "$@"
         t2=$(date +%s)
         echo "training: $((t2 - t1)) s"
         if [ "${FINAL_EVAL_SAMPLES:-2000}" != 0 ]; then  # FID, KID, copy rate, digit classes into $WD/eval/
           "$VENV/bin/python" launch.py --workdir "$WD" --mode=eval \
             --config.eval.num_samples="${FINAL_EVAL_SAMPLES:-2000}" \
             --config.eval.metrics="${FINAL_EVAL_METRICS:-('fid','kid','copy_rate','digit_classes')}"
           echo "final evaluation: $(($(date +%s) - t2)) s"
         fi ;;
  test)  setup_test; "$VENV/bin/ruff" check diffjax configs experiments tests launch.py
         exec "$VENV/bin/python" -m pytest -q -rs -n "${TEST_WORKERS:-2}" --dist loadfile tests "$@" ;;
  *) echo "usage: bash run.sh {train|test|setup} [args]" >&2; exit 2 ;;
esac
