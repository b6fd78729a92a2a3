"""Coverage-guided fuzz targets (atheris) for everything that reads hostile input.

One module per target in :mod:`tests.fuzz.targets`, each with ``TestOneInput(data: bytes)``
that feeds the bytes to the library and lets only the library's own, expected errors
(:class:`~zigllama_lib.foundation.errors.ZigLlamaError`, the server's ``APIError``) pass: any
other exception, a hang past the per-input timeout or an RSS over the limit is a finding.

    python -m tests.fuzz.run gguf --seconds 60          # one target, one core
    python -m tests.fuzz.run all --seconds 20           # every target in turn
    python -m tests.fuzz.seeds                          # rebuild tests/fuzz/corpus/*/ (small files)

Seeds live in ``corpus/<target>/`` (small real inputs, written by our own writer); every finding
is minimised and committed to ``regressions/<target>/``, and ``tests/test_fuzz.py`` replays them.
"""
