#!/usr/bin/env bash
# Unpack the llama.cpp sources vendored in the llama-cpp-python 0.3.36 sdist, once, and print where.
#
#   src=$(scripts/fetch_llama_cpp_sources.sh)     # -> $ZIGLLAMA_CACHE/sources/llama-cpp-python-0.3.36
#   ls "$src/vendor/llama.cpp/models/templates"   # the chat templates llama.cpp tests with
#
# Used for reading and as an oracle (its chat templates, llama-server); nothing from it is committed.
set -euo pipefail
VERSION=0.3.36
CACHE=${ZIGLLAMA_CACHE:-$HOME/.cache/zigllama}
PY=${PYTHON:-python}
dest="$CACHE/sources/llama-cpp-python-$VERSION"
if [ ! -f "$dest/.complete" ]; then
    mkdir -p "$CACHE/sources"
    tmp=$(mktemp -d "$CACHE/sources/.fetch-XXXXXX")
    "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp" >&2
    tar -xzf "$tmp/llama_cpp_python-$VERSION.tar.gz" -C "$tmp"
    rm -rf "$dest" && mv "$tmp/llama_cpp_python-$VERSION" "$dest" && rm -rf "$tmp"
    touch "$dest/.complete"
fi
echo "$dest"
