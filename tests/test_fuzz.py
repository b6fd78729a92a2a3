"""Fuzzing in CI: a short atheris run per target (default run) and a long one (``-m fuzz_long``),
plus a replay of every committed regression input and every seed.

Each short run is 12 s on one core (6 targets: ~75 s plus start-up); ``-m fuzz_long`` runs each
target for ``$ZIGLLAMA_FUZZ_SECONDS`` (default 600). Both print executions, exec/s, coverage
and findings; a finding fails the test and is saved under ``tests/fuzz/findings/<target>/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="pip install atheris==3.0.0 (the test extra)")

from fuzz.run import CORPUS, REGRESSIONS, replay, run_target  # noqa: E402
from fuzz.targets import TARGETS  # noqa: E402

SHORT_SECONDS = 12


def _inputs(root: Path):
    return [pytest.param(t, p, id=f"{t}/{p.name}") for t in TARGETS for p in sorted((root / t).glob("*"))
            if p.is_file()]


@pytest.mark.parametrize("target,path", _inputs(REGRESSIONS))
def test_regression_input_is_handled(target, path):
    """A minimised input a fuzzer once crashed on: it now passes the target's checks."""
    replay(target, path)


@pytest.mark.parametrize("target,path", _inputs(CORPUS))
def test_seed_input_is_handled(target, path):
    replay(target, path)


def _check(report):
    print(report.line())
    assert report.execs > 0, report.tail
    assert report.cov > 0, "no coverage reported: is the target instrumented?\n" + report.tail
    assert not report.findings, report.line() + "\n" + report.tail


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_short(target):
    _check(run_target(target, SHORT_SECONDS, cpu=1, timeout=10))


@pytest.mark.fuzz_long
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_long(target):
    _check(run_target(target, int(os.environ.get("ZIGLLAMA_FUZZ_SECONDS", "600")), cpu=1, timeout=20))
