"""Notebook execution cannot hang: the kernel-start retry and the cell timeout.

Both runners are tested through their real code paths, with small timeouts:

* nbval (``conftest.py`` in this folder): an inner ``pytest`` run of a copy of
  that conftest over a throwaway ``notebooks/99_*.py``;
* the book (``jupyter_book/_ext/zigllama_execution.py``): its executor called
  directly, and a tiny Sphinx build with myst-nb and that extension.

A kernel that never answers is a kernel spec whose command just sleeps, found
through ``JUPYTER_PATH``; each launch appends its pid to a file, so the tests
can count attempts and check that no such process outlives the run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXTENSIONS = ROOT / "jupyter_book" / "_ext"
START_TIMEOUT = 2  # s; real ones are 120 s
CELL_TIMEOUT = 2  # s; real ones are 600 s
HANG_KERNEL = "zigllama-test-never-ready"
NOTEBOOK = "notebooks/99_sleepy.py"
SLEEPY_SOURCE = """\
# %%
answer = 42

# %%
import time
time.sleep(60)
"""


@pytest.fixture
def hang_kernel(tmp_path, monkeypatch):
    """Installs a kernel spec that starts but never answers; yields its launch log."""
    launches = tmp_path / "launches.txt"
    spec = tmp_path / "jupyter" / "kernels" / HANG_KERNEL
    spec.mkdir(parents=True)
    code = f"import os, time; open({str(launches)!r}, 'a').write(f'{{os.getpid()}}\\n'); time.sleep(3600)"
    with open(spec / "kernel.json", "w", encoding="utf-8") as f:
        json.dump({"argv": [sys.executable, "-c", code, "{connection_file}"],
                   "display_name": "never ready", "language": "python"}, f)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    yield launches


def launched_pids(launches: Path) -> list[int]:
    return [int(line) for line in launches.read_text(encoding="utf-8").split()]


def is_running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return True  # no /proc: trust os.kill
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def assert_all_gone(pids: list[int]) -> None:
    """Every fake kernel was stopped, not left sleeping."""
    deadline = time.monotonic() + 10
    for pid in pids:
        while is_running(pid):
            assert time.monotonic() < deadline, f"kernel process {pid} still running"
            time.sleep(0.1)


# --- nbval: tests/notebooks/conftest.py -------------------------------------------


def run_inner_pytest(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """``pytest`` over ``notebooks/99_sleepy.py`` with a verbatim copy of this folder's conftest."""
    project = tmp_path / "project"
    (project / "tests" / "notebooks").mkdir(parents=True)
    (project / "notebooks").mkdir()
    (project / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # pins rootdir here
    (project / "tests" / "notebooks" / "conftest.py").write_text(
        (HERE / "conftest.py").read_text(encoding="utf-8"), encoding="utf-8")
    (project / "tests" / "notebooks" / "test_notebooks.py").write_text("", encoding="utf-8")
    (project / NOTEBOOK).write_text(SLEEPY_SOURCE, encoding="utf-8")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "--color=no",
         "tests/notebooks/test_notebooks.py", *args],
        cwd=project, capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - start


def test_nbval_retries_a_kernel_that_never_answers_once_then_names_the_notebook(tmp_path, hang_kernel):
    proc, elapsed = run_inner_pytest(
        tmp_path, f"--nbval-kernel-name={HANG_KERNEL}", f"--nbval-kernel-startup-timeout={START_TIMEOUT}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"{NOTEBOOK}: the kernel did not start within {START_TIMEOUT} s (tried twice)" in out, out
    assert "2 errors" in out, out  # both cells error, from the one failed setup
    pids = launched_pids(hang_kernel)
    assert len(pids) == 2, out
    assert_all_gone(pids)
    # two attempts of ~START_TIMEOUT each, plus shutdown grace and pytest's start
    assert elapsed < 40, out


@pytest.mark.notebooks
def test_nbval_cell_over_the_timeout_fails_naming_notebook_and_cell(tmp_path):
    proc, elapsed = run_inner_pytest(tmp_path, f"--nbval-cell-timeout={CELL_TIMEOUT}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 failed, 1 passed" in out, out
    # the failure's first line, also pytest's one-line summary
    assert f"{NOTEBOOK}, Cell 1: Timeout of {CELL_TIMEOUT} seconds exceeded executing cell" in out, out
    assert elapsed < 40, out


def test_nbval_timeouts_default_to_ours(pytestconfig):
    """No --nbval-*-timeout given (as in this run): the conftest's 120 s / 600 s apply."""
    if {"--nbval-kernel-startup-timeout", "--nbval-cell-timeout"} & {
            arg.split("=")[0] for arg in pytestconfig.invocation_params.args}:
        pytest.skip("this run chose its own nbval timeouts")
    assert pytestconfig.option.nbval_kernel_startup_timeout == 120
    assert pytestconfig.option.nbval_cell_timeout == 600


# --- the book: jupyter_book/_ext/zigllama_execution.py ------------------------------


def load_extension():
    spec = importlib.util.spec_from_file_location("zigllama_execution", EXTENSIONS / "zigllama_execution.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sleepy_notebook(kernel_name: str):
    import jupytext

    nb = jupytext.reads(SLEEPY_SOURCE, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": kernel_name, "display_name": kernel_name, "language": "python"}
    return nb


def test_book_retries_a_kernel_that_never_answers_once_then_names_the_notebook(tmp_path, hang_kernel):
    ext = load_extension()
    start = time.monotonic()
    with pytest.raises(ext.KernelStartError) as raised:
        ext.execute_notebook(sleepy_notebook(HANG_KERNEL), name=NOTEBOOK, cwd=str(tmp_path),
                             cell_timeout=600, start_timeout=START_TIMEOUT)
    elapsed = time.monotonic() - start
    assert str(raised.value).startswith(
        f"{NOTEBOOK}: the kernel did not start within {START_TIMEOUT} s (tried twice): RuntimeError")
    pids = launched_pids(hang_kernel)
    assert len(pids) == 2
    assert_all_gone(pids)
    assert elapsed < 30


@pytest.mark.notebooks
def test_book_cell_over_the_timeout_fails_the_build_naming_the_notebook(tmp_path):
    """A tiny Sphinx build with myst-nb and the extension, as the book loads them."""
    src = tmp_path / "src"
    (src / "notebooks").mkdir(parents=True)
    (src / "conf.py").write_text(textwrap.dedent(f"""\
        import sys
        sys.path.append({str(EXTENSIONS)!r})
        extensions = ["myst_nb", "zigllama_execution"]
        nb_execution_mode = "force"
        nb_execution_timeout = {CELL_TIMEOUT}
        nb_execution_raise_on_error = True
        zigllama_kernel_start_timeout = 60
        """), encoding="utf-8")
    (src / "index.md").write_text("# Test\n\n```{toctree}\nnotebooks/99_sleepy\n```\n", encoding="utf-8")
    import nbformat

    nbformat.write(sleepy_notebook("python3"), src / "notebooks" / "99_sleepy.ipynb")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-b", "html", str(src), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Notebook execution failed:" in out, out
    assert "notebooks/99_sleepy.ipynb: A cell timed out while it was being executed" in out, out
    assert "time.sleep(60)" in out, out  # nbclient's preview of the cell
    assert elapsed < 40, out
