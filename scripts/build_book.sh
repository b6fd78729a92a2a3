#!/usr/bin/env bash
# Build the ZigLlama book offline into jupyter_book/_build/html.
#
#   scripts/build_book.sh            # from anywhere; uses `python` on PATH (your venv)
#   PYTHON=/path/to/python scripts/build_book.sh
#
# 1. Installs the book's JavaScript from npm (jupyter_book/package-lock.json:
#    MathJax 3 and @jupyter-widgets/html-manager) and copies what the site serves
#    into jupyter_book/_vendor/ (git-ignored), so the site loads nothing from a CDN.
# 2. Builds the book with Jupyter Book 1.x, executing every notebook afresh
#    (a failing cell or any Sphinx warning fails the build).
# Needs: node + npm, and the project installed with its test or notebooks extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BOOK=jupyter_book
start=$(date +%s)

# --- 1. vendored JavaScript ---------------------------------------------------
if [ ! -f "$BOOK/node_modules/.package-lock.json" ] \
   || [ "$BOOK/package-lock.json" -nt "$BOOK/node_modules/.package-lock.json" ]; then
    npm ci --prefix "$BOOK" --ignore-scripts --no-audit --no-fund --loglevel=error
fi
rm -rf "$BOOK/_vendor"
mkdir -p "$BOOK/_vendor/jupyter-widgets"
cp -r "$BOOK/node_modules/mathjax/es5" "$BOOK/_vendor/mathjax"
cp -r "$BOOK/node_modules/@jupyter-widgets/html-manager/dist" "$BOOK/_vendor/jupyter-widgets/html-manager"

# --- 2. the book ----------------------------------------------------------------
# --all: a fresh Sphinx environment, so every notebook is executed against the
# library as it is now, even when the notebook itself did not change.
# Every wait on a notebook's kernel is bounded by _ext/zigllama_execution.py (start:
# 120 s, one retry with a fresh kernel; each cell: execute.timeout), which fails
# the build naming the notebook. BOOK_TIMEOUT (s, default 3600; 0 = none) is only
# a backstop for a hang anywhere else, so that CI cannot wait forever. --foreground
# keeps Ctrl-C working; on expiry Python gets SIGTERM and nbclient stops its kernel.
build=("$PY" -c "import sys; from jupyter_book.cli.main import main; sys.argv[0] = 'jupyter-book'; main()"
       build "$BOOK" --all --warningiserror --nitpick --keep-going)
limit=${BOOK_TIMEOUT:-3600}
if [ "$limit" != 0 ] && command -v timeout >/dev/null; then
    status=0
    timeout --foreground --kill-after=60 "$limit" "${build[@]}" || status=$?
    if [ "$status" = 124 ] || [ "$status" = 137 ]; then
        echo "book build stopped after $limit s (BOOK_TIMEOUT): it hung; the last notebook" \
             "it was executing is named in the log above" >&2
    fi
    [ "$status" = 0 ] || exit "$status"
else
    "${build[@]}"
fi
date -u +%Y-%m-%dT%H:%M:%SZ > "$BOOK/_build/html/.zigllama-built"
echo "book built in $(( $(date +%s) - start )) s: $BOOK/_build/html/index.html"
