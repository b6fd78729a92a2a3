"""Run the curriculum notebooks under nbval, straight from their jupytext sources.

The notebooks live in ``notebooks/NN_*.py`` (jupytext percent format), outside
``testpaths``. Pytest reaches them through ``test_notebooks.py`` in this folder:
:func:`pytest_pycollect_makemodule` swaps that module for a collector that
yields one nbval notebook per ``notebooks/*.py``. Each is converted with
jupytext to an ``.ipynb`` in a temporary folder, read by nbval, and run in a
fresh kernel of the current Python, one test item per code cell, with
``--nbval-lax`` semantics: a cell passes when it runs without an error (its
outputs are only compared where the cell says ``# NBVAL_CHECK_OUTPUT``).

Nothing here can hang: each notebook's kernel must answer within
``--nbval-kernel-startup-timeout`` (default here :data:`KERNEL_START_TIMEOUT`)
or it is replaced once, then the notebook's cells error with a message naming
it; each cell may run ``--nbval-cell-timeout`` (default here
:data:`CELL_TIMEOUT`), then it is interrupted and fails, naming notebook and cell.

Select or skip them with ``-m notebooks`` / ``-m "not notebooks"``, or one
notebook with ``-k quickstart``. The browser test of the built book is marked
``book``.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
HERE = Path(__file__).resolve().parent

KERNEL_START_TIMEOUT = 120  # s per attempt: a kernel answers in ~2 s; room for a busy machine
KERNEL_START_ATTEMPTS = 2
CELL_TIMEOUT = 600  # s: the slowest cell takes far less
# nbval 0.11's defaults (60 s, 2000 s): an option still at its default was not
# chosen by the user, so ours applies. (pyproject.toml pins nbval to 0.11.)
NBVAL_DEFAULTS = {"nbval_kernel_startup_timeout": 60, "nbval_cell_timeout": 2000}


def pytest_configure(config):
    config.addinivalue_line("markers", "notebooks: runs a curriculum notebook (notebooks/*.py) under nbval")
    config.addinivalue_line("markers", "book: builds the Jupyter Book and checks every chapter in headless Chromium")
    # nbval reads these options when a notebook starts and for every cell.
    ours = {"nbval_kernel_startup_timeout": KERNEL_START_TIMEOUT, "nbval_cell_timeout": CELL_TIMEOUT}
    for option, value in ours.items():
        if getattr(config.option, option, None) == NBVAL_DEFAULTS[option]:
            setattr(config.option, option, value)


def pytest_collection_modifyitems(session, config, items):
    # The book build executes every notebook again and takes longest: run it
    # last, after nbval has pointed at any failing cell more precisely.
    items[:] = sorted(items, key=lambda item: item.get_closest_marker("book") is not None)


def notebook_sources() -> list[Path]:
    """The curriculum notebooks, in reading order (their names start with a number)."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9]*.py") if p.is_file())


class KernelStartError(RuntimeError):
    """A notebook's kernel never became ready, on every attempt."""


def start_kernel(notebook: str, kernel_name: str, cwd: str, timeout: float,
                 attempts: int = KERNEL_START_ATTEMPTS):
    """nbval's ``RunningKernel`` for ``notebook``, replacing a kernel that never answers.

    nbval gives a kernel ``timeout`` seconds to answer ``kernel_info``, then
    ~30 s more to show its IOPub channel. A kernel that fails either (or dies
    first) is shut down and a fresh one started, ``attempts`` times in all: that
    failure belongs to one kernel process, not to the notebook. Then
    :class:`KernelStartError` names ``notebook``.
    """
    from nbval.kernel import RunningKernel

    last = None
    for _ in range(attempts):
        # Built in two steps so that a kernel which started but never showed its
        # IOPub channel (RunningKernel.__init__ raises after setting .km) is stopped,
        # not left running: nbval only cleans up a kernel that failed wait_for_ready.
        kernel = RunningKernel.__new__(RunningKernel)
        try:
            RunningKernel.__init__(kernel, kernel_name, cwd=cwd, startup_timeout=timeout)
            return kernel
        except RuntimeError as exc:  # "Kernel didn't respond", "died before replying", no IOPub
            last = exc
            if hasattr(kernel, "km"):
                with contextlib.suppress(Exception):  # a kernel that won't stop must not block the retry
                    kernel.stop()
        except Exception as exc:  # e.g. no such kernel: a retry would not help
            raise KernelStartError(f"{notebook}: could not start kernel {kernel_name!r}: {exc!r}") from exc
    tries = "twice" if attempts == 2 else f"{attempts} times"
    raise KernelStartError(f"{notebook}: the kernel did not start within {timeout:g} s "
                           f"(tried {tries}): {last}") from last


def pytest_pycollect_makemodule(module_path, parent):
    if Path(module_path).resolve() == HERE / "test_notebooks.py":
        return NotebookSources.from_parent(parent, path=Path(module_path))
    return None


class NotebookSources(pytest.File):
    """Stands in for ``test_notebooks.py``: one nbval collector per notebook source."""

    def collect(self):
        # imported here: a missing test extra fails this collector only
        from nbval.kernel import CURRENT_ENV_KERNEL_NAME
        from nbval.plugin import IPyNbCell, IPyNbFile, NbCellError

        class NotebookCell(IPyNbCell):
            """An nbval cell whose failure report starts with its notebook and cell."""

            def repr_failure(self, excinfo):
                # nbval says "Cell 3: Timeout of 600 seconds exceeded ..." but not in
                # which notebook. Our first line (also pytest's one-line summary)
                # names both, with the reason; nbval's report follows.
                where = f"{self.parent.label}, Cell {self.cell_num}"
                report = super().repr_failure(excinfo)
                if isinstance(excinfo.value, NbCellError):
                    return f"{where}: {excinfo.value}\n{report}"
                return f"{where}: {report}"

        class JupytextNotebook(IPyNbFile):
            """An nbval notebook read from a jupytext ``.py`` source."""

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.compare_outputs = False  # --nbval-lax: run every cell, compare only marked ones
                self.add_marker(pytest.mark.notebooks)
                self.label = self.path.relative_to(ROOT).as_posix()  # notebooks/NN_*.py

            def collect(self):
                import jupytext

                source = self.path
                with tempfile.TemporaryDirectory(prefix="zigllama-nbval-") as tmp:
                    ipynb = Path(tmp) / (source.stem + ".ipynb")
                    jupytext.write(jupytext.read(source), ipynb)
                    # nbval reads the notebook from self.path: point it at the
                    # converted copy while it collects, then back at the source so
                    # reports name notebooks/NN_*.py and the kernel starts there.
                    self.path = ipynb
                    try:
                        # nbval builds each cell's options; we rebuild the items as
                        # NotebookCell (nbval's collect hard-codes IPyNbCell).
                        cells = [
                            NotebookCell.from_parent(self, name=c.name, cell_num=c.cell_num,
                                                     cell=c.cell, options=c.options)
                            for c in super().collect()
                        ]
                    finally:
                        self.path = source
                for cell in cells:
                    cell.path = source
                return cells

            def setup(self):
                """nbval's setup, with a bounded, retried kernel start (see :func:`start_kernel`)."""
                option = self.config.option
                # Run in the Python running pytest (nbval's --nbval-current-env),
                # not whatever kernel called "python3" a machine has installed.
                kernel_name = option.nbval_kernel_name or CURRENT_ENV_KERNEL_NAME
                try:
                    self.kernel = start_kernel(self.label, kernel_name, cwd=str(self.path.parent),
                                               timeout=option.nbval_kernel_startup_timeout)
                    failure = None
                except KernelStartError as exc:
                    failure = str(exc)
                if failure:  # raised outside the except: no chain of nbval's tracebacks
                    # Every cell of this notebook errors with this one line.
                    pytest.fail(failure, pytrace=False)
                self.setup_sanitize_files()
                if getattr(option, "cov_source", None):
                    from nbval.cover import setup_coverage

                    setup_coverage(self.config, self.kernel, getattr(self, "fspath", None))

        for source in notebook_sources():
            yield JupytextNotebook.from_parent(self, path=source)
