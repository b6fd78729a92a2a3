#!/usr/bin/env bash
# Build llama.cpp's own OpenAI-compatible server, llama-server, once, and print the binary's path.
#
#   bin=$(scripts/build_llama_server.sh)        # -> $ZIGLLAMA_CACHE/llama-server-0.3.36-<key>/bin/llama-server
#   zigllama bench-serve --llama-server "$bin"  # our server and llama-server side by side
#
# The serving anchor of `zigllama bench-serve`: the llama.cpp sources vendored in llama-cpp-python
# 0.3.36 (scripts/fetch_llama_cpp_sources.sh), built with cmake for this CPU (-DGGML_NATIVE=ON: what
# a user building llama-server gets), Release, no curl / no web UI download, 2 jobs: about 10 minutes
# on 2 cores the first time, then instant. The folder is keyed by version, flags and compiler.
#
# If the build fails, the fallback anchor is llama-cpp-python's own server (`pip install
# 'llama-cpp-python[server]'`, run as `python -m llama_cpp.server`): the script then prints the word
# "python-server" instead of a path, and says so on stderr. Which anchor was used goes to stderr.
set -euo pipefail
VERSION=0.3.36
CACHE=${ZIGLLAMA_CACHE:-$HOME/.cache/zigllama}
JOBS=${JOBS:-2}
FLAGS="-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
-DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF"
here=$(cd "$(dirname "$0")" && pwd)
key=$(printf '%s|%s|%s' "$VERSION" "$FLAGS" "$(gcc -dumpfullversion 2>/dev/null || echo cc)" | sha256sum | cut -c1-12)
dest="$CACHE/llama-server-$VERSION-$key"
bin="$dest/bin/llama-server"

if [ -x "$bin" ] && [ -f "$dest/BUILD_INFO" ]; then
    echo "build_llama_server: anchor llama-server (cmake build, cached) $bin" >&2
    echo "$bin"
    exit 0
fi

src=$("$here/fetch_llama_cpp_sources.sh")/vendor/llama.cpp
mkdir -p "$CACHE"
build=$(mktemp -d "$CACHE/.llama-server-build-XXXXXX")
log="$build/build.log"
echo "build_llama_server: building llama-server $VERSION from $src (once; ~10 min on 2 cores; log $log)" >&2
# shellcheck disable=SC2086
if cmake -S "$src" -B "$build" $FLAGS >"$log" 2>&1 \
   && cmake --build "$build" --config Release --target llama-server -j "$JOBS" >>"$log" 2>&1; then
    rm -rf "$dest" && mkdir -p "$dest/bin"
    cp "$build/bin/llama-server" "$bin"
    printf '%s\n' "llama-server from llama-cpp-python $VERSION sources" "cmake $FLAGS" \
        "built $(date -u +%FT%TZ) on $(uname -m) with gcc $(gcc -dumpfullversion 2>/dev/null || echo '?')" > "$dest/BUILD_INFO"
    rm -rf "$build"
    echo "build_llama_server: anchor llama-server (cmake build) $bin" >&2
    echo "$bin"
    exit 0
fi

echo "build_llama_server: the cmake build failed (tail of $log below); falling back to llama-cpp-python[server]" >&2
tail -n 20 "$log" >&2 || true
PY=${PYTHON:-python}
if "$PY" -c "import llama_cpp.server, uvicorn, sse_starlette, starlette_context" 2>/dev/null \
   || "$PY" -m pip install -q "llama-cpp-python[server]==$VERSION" >&2; then
    echo "build_llama_server: anchor python-server (llama_cpp.server of llama-cpp-python $VERSION)" >&2
    echo "python-server"
    exit 0
fi
echo "build_llama_server: no anchor: neither the cmake build nor llama-cpp-python[server] is available" >&2
exit 1
