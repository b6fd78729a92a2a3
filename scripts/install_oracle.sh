#!/usr/bin/env bash
# Install the pinned llama.cpp oracle: llama-cpp-python 0.3.36 built for generic x86-64 AVX2.
#
#   scripts/install_oracle.sh            # the pinned build, into the active Python environment
#   scripts/install_oracle.sh --native   # also a build for this CPU (-march=native), into its own
#                                        # folder, for `zigllama bench/parity --llama-cpp native`
#
# Why pinned: pip builds llama.cpp for the host CPU, and ggml's float code rounds differently on
# AVX-512 than on AVX2 (other vector widths, tinyBLAS tiles, VNNI kernels), so its logits and then
# its greedy text differ between machines. Our numerics="llama.cpp" mirrors one build, the same
# binary code on every x86-64 machine with AVX2:
#     llama-cpp-python 0.3.36, CMAKE_ARGS as PINNED_CMAKE_ARGS below (no -march=native, generic tuning).
# pip's wheel cache keys a built wheel by name and version only (it ignores CMAKE_ARGS), so a native
# wheel built earlier would come back. We build each wheel once, with pip's cache off, into a folder
# of our own keyed by version and flags: $ZIGLLAMA_CACHE/wheels/llama-cpp-python-<version>-<key>/.
# The first build takes about 5-8 minutes on 2 cores; later runs install the cached wheel in seconds.
set -euo pipefail
VERSION=0.3.36
PINNED_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF"
# ZIGLLAMA_NATIVE_CMAKE_ARGS overrides the native flags. Known trap: on a VM that advertises AMX without enabling
# it, the -march=native build dies of SIGILL at its first tileloadd, and -DGGML_AMX_*=OFF does not help (-march=native
# still enables AMX). What works there (verified on a Xeon model 207 VM): GGML_NATIVE=OFF with the host's AVX-512
# flags named, e.g. ZIGLLAMA_NATIVE_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON
# -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON
# -DGGML_BMI2=ON" (zigllama_lib/inference/bench.py: NO_AMX_NATIVE_CMAKE_ARGS).
NATIVE_CMAKE_ARGS=${ZIGLLAMA_NATIVE_CMAKE_ARGS:-"-DGGML_NATIVE=ON"}
CACHE=${ZIGLLAMA_CACHE:-$HOME/.cache/zigllama}
PY=${PYTHON:-python}

# build_wheel FLAGS -> prints the folder holding the wheel built with those flags
build_wheel() {
    local flags=$1 key dir tmp
    key=$(printf '%s|%s|%s' "$VERSION" "$flags" "$(gcc -dumpfullversion 2>/dev/null || echo cc)" | sha256sum | cut -c1-16)
    dir="$CACHE/wheels/llama-cpp-python-$VERSION-$key"
    if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        echo "install_oracle: building llama-cpp-python $VERSION with CMAKE_ARGS=\"$flags\" (once; minutes)" >&2
        mkdir -p "$CACHE/wheels" && tmp=$(mktemp -d "$CACHE/wheels/.build-XXXXXX")
        "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp/sdist" >&2
        CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
            "$PY" -m pip wheel -q --no-deps --no-cache-dir "$tmp"/sdist/llama_cpp_python-$VERSION.tar.gz -w "$tmp/wheel" >&2
        printf '%s\n' "llama-cpp-python $VERSION" "CMAKE_ARGS=$flags" "built $(date -u +%FT%TZ) on $(uname -m)" > "$tmp/wheel/BUILD_INFO"
        rm -rf "$dir" && mv "$tmp/wheel" "$dir" && rm -rf "$tmp"
    fi
    echo "$dir"
}

pinned=$(build_wheel "$PINNED_CMAKE_ARGS")
# The wheel's own dependencies (numpy, typing-extensions, diskcache, jinja2) come from PyPI as usual.
"$PY" -m pip install -q --force-reinstall --no-deps "$pinned"/llama_cpp_python-*.whl
"$PY" -m pip install -q "$pinned"/llama_cpp_python-*.whl
echo "install_oracle: llama-cpp-python $VERSION (pinned AVX2 build) from $pinned" >&2

if [ "${1:-}" = "--native" ]; then
    native=$(build_wheel "$NATIVE_CMAKE_ARGS")
    target="$CACHE/llama-cpp-native-$VERSION"
    if [ ! -f "$target/.installed-from" ] || [ "$(cat "$target/.installed-from")" != "$native" ]; then
        rm -rf "$target"
        "$PY" -m pip install -q --no-deps --target "$target" "$native"/llama_cpp_python-*.whl
        echo "$native" > "$target/.installed-from"
    fi
    echo "install_oracle: native build in $target (zigllama bench --llama-cpp native)" >&2
fi
