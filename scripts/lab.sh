#!/usr/bin/env bash
# Open the curriculum in JupyterLab, with the project's settings: a double click
# on a notebooks/NN_*.py file opens it as a notebook (jupytext), not as text.
#
#   scripts/lab.sh                   # JupyterLab in notebooks/
#   scripts/lab.sh --port 8899       # any further arguments go to `jupyter lab`
#
# The setting lives in .jupyter/labconfig/default_setting_overrides.json; this
# script puts .jupyter/ first on JUPYTER_CONFIG_PATH so JupyterLab reads it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export JUPYTER_CONFIG_PATH="$root/.jupyter${JUPYTER_CONFIG_PATH:+:$JUPYTER_CONFIG_PATH}"
cd "$root"
exec jupyter lab --ServerApp.root_dir="$root" "$@" notebooks/
