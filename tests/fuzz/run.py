"""Run one fuzz target (or all) under atheris in a subprocess, time-bounded, and report.

    python -m tests.fuzz.run gguf --seconds 60 [--cpu 1] [--timeout 10] [--rss-mb 2048]
    python -m tests.fuzz.run all --seconds 15

Prints one line per target::

    gguf: 123456 execs in 60 s (2057 exec/s), cov 812, ft 2301, corpus 140, findings 0

``cov`` / ``ft`` are libFuzzer's coverage counters (edges and features of the instrumented
Python code). New interesting inputs go to a scratch corpus, not to the committed seeds; a
finding (crash, timeout, out-of-memory) is copied to ``tests/fuzz/findings/<target>/`` for
minimising (``--minimize FILE``) and committing under ``regressions/<target>/``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CORPUS = HERE / "corpus"
REGRESSIONS = HERE / "regressions"
FINDINGS = HERE / "findings"

_STATUS = re.compile(r"^#(\d+)\s+\w+.*?cov: (\d+) ft: (\d+)(?: corp: (\d+)/\S+)?.*?exec/s: (\d+)", re.M)
_DONE = re.compile(r"^Done (\d+) runs in (\d+) second", re.M)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class Report:
    target: str
    seconds: float
    execs: int = 0
    exec_per_s: float = 0.0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    findings: list[str] = field(default_factory=list)
    returncode: int = 0
    tail: str = ""

    def line(self) -> str:
        return (f"{self.target}: {self.execs} execs in {self.seconds:.0f} s ({self.exec_per_s:.0f} exec/s), "
                f"cov {self.cov}, ft {self.ft}, corpus {self.corpus}, findings {len(self.findings)}"
                + "".join(f"\n  finding: {f}" for f in self.findings))


def parse_output(target: str, text: str, seconds: float, returncode: int) -> Report:
    """libFuzzer's status lines (``#N ... cov: C ft: F corp: K/.. exec/s: E``) -> a Report."""
    r = Report(target, seconds, returncode=returncode)
    for m in _STATUS.finditer(text):
        r.execs, r.cov, r.ft = int(m.group(1)), int(m.group(2)), int(m.group(3))
        r.corpus = int(m.group(4) or r.corpus)
    done = _DONE.search(text)
    if done:
        r.execs = int(done.group(1))
    r.exec_per_s = r.execs / seconds if seconds > 0 else 0.0
    r.findings = _ARTIFACT.findall(text)
    if returncode not in (0,) and not r.findings:
        r.findings = [f"exit status {returncode} (see output)"]
    r.tail = "\n".join(text.strip().splitlines()[-30:])
    return r


def run_target(target: str, seconds: int, cpu: int | None = 1, timeout: int = 10, rss_mb: int = 2048,
               extra: list[str] | None = None, keep_corpus: Path | None = None, verbose: bool = False) -> Report:
    """Fuzz ``target`` for ``seconds`` in a child process (pinned to ``cpu`` with taskset when it exists)."""
    seeds = CORPUS / target
    scratch = Path(tempfile.mkdtemp(prefix=f"zl-fuzz-{target}-"))
    work = keep_corpus or (scratch / "corpus")
    work.mkdir(parents=True, exist_ok=True)
    artifacts = scratch / "artifacts"
    artifacts.mkdir()
    real = scratch / "real"
    from .seeds import write_runtime

    try:
        write_runtime(target, real)
    except Exception as e:  # the cache may be missing: the committed seeds still run
        print(f"{target}: no runtime seeds ({e})", file=sys.stderr)
    cmd = [sys.executable, "-m", "tests.fuzz.run", "--child", target,
           f"-max_total_time={seconds}", f"-timeout={timeout}", f"-rss_limit_mb={rss_mb}",
           f"-artifact_prefix={artifacts}/", "-print_final_stats=1", "-max_len=65536", *(extra or []),
           str(work)] + [str(d) for d in (seeds, real) if d.is_dir() and any(d.iterdir())]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    # The fuzzer runs as a grandchild, forked by a shell: libFuzzer's RSS limit reads the peak RSS
    # (getrusage's ru_maxrss), which Linux carries across fork + exec, so a child of a large process
    # (pytest after a model-sized test) would start "out of memory". A new process's peak starts at 0.
    cmd = ["sh", "-c", '"$@" & wait $!', "sh", *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=seconds + 120)
        out, rc = stdout + stderr, proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the shell and the fuzzer
        stdout, stderr = proc.communicate()
        rc = -9
        out = (stdout or "") + (stderr or "") + "\nRUNNER: the fuzzer did not stop in time (killed)"
    elapsed = time.monotonic() - t0
    if verbose:
        print(out)
    report = parse_output(target, out, min(elapsed, float(seconds)) if rc == 0 else elapsed, rc)
    saved = []
    for f in sorted(artifacts.iterdir()):
        dest = FINDINGS / target / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
        saved.append(str(dest.relative_to(ROOT)))
    if saved:
        report.findings = saved
    shutil.rmtree(scratch, ignore_errors=True)
    return report


def load_target(target: str):
    return importlib.import_module(f"{__package__ or 'tests.fuzz'}.targets.{target}")


def replay(target: str, path: Path) -> None:
    """Run one input through a target in this process (what the regression tests do)."""
    mod = load_target(target)
    mod.setup()
    mod.TestOneInput(path.read_bytes())


def _child(target: str, argv: list[str]) -> None:
    import atheris

    names = importlib.import_module("tests.fuzz.targets").__name__
    spec_mod = importlib.import_module(f"{names}.{target}")  # plain import first: read INSTRUMENT
    include = list(spec_mod.INSTRUMENT)
    for name in [m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in include)]:
        del sys.modules[name]  # re-import the instrumented packages under atheris
    del sys.modules[f"{names}.{target}"]
    with atheris.instrument_imports(include=include):
        for p in include:
            importlib.import_module(p)
        mod = importlib.import_module(f"{names}.{target}")
    mod.setup()
    atheris.Setup([sys.argv[0], *argv], mod.TestOneInput)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2:])
        return 0
    from .targets import TARGETS

    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.split("\n")[0])
    ap.add_argument("target", choices=[*TARGETS, "all"])
    ap.add_argument("--seconds", type=int, default=30, help="fuzzing time per target")
    ap.add_argument("--cpu", type=int, default=1, help="core to pin the fuzzer to (taskset); -1: no pinning")
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it is a hang")
    ap.add_argument("--rss-mb", type=int, default=2048, help="memory limit of the fuzzer process")
    ap.add_argument("--json", action="store_true", help="print the reports as JSON too")
    ap.add_argument("--verbose", action="store_true", help="print libFuzzer's output")
    ap.add_argument("--minimize", type=Path, help="minimise this crashing input (libFuzzer -minimize_crash)")
    a = ap.parse_args(argv)
    targets = TARGETS if a.target == "all" else (a.target,)
    cpu = None if a.cpu < 0 else a.cpu
    if a.minimize:
        r = run_target(a.target, a.seconds, cpu, a.timeout, a.rss_mb,
                       extra=["-minimize_crash=1", f"-exact_artifact_path={a.minimize}.min", str(a.minimize)],
                       verbose=True)
        print(r.line())
        return 0
    reports = [run_target(t, a.seconds, cpu, a.timeout, a.rss_mb, verbose=a.verbose) for t in targets]
    for r in reports:
        print(r.line())
        if r.findings:
            print("  ", r.tail.replace("\n", "\n   "))
    if a.json:
        print(json.dumps([asdict(r) for r in reports], indent=1))
    return 1 if any(r.findings for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
