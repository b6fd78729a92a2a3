"""Run the curriculum notebooks under nbval, straight from their jupytext sources.

The notebooks live in ``notebooks/NN_*.py`` (jupytext percent format), outside
``testpaths``. Pytest reaches them through ``test_notebooks.py`` in this folder:
:func:`pytest_pycollect_makemodule` swaps that module for a collector that
yields one nbval notebook per ``notebooks/*.py``. Each is converted with
jupytext to an ``.ipynb`` in a temporary folder, read by nbval, and run in a
fresh kernel of the current Python, one test item per code cell, with
``--nbval-lax`` semantics: a cell passes when it runs without an error (its
outputs are only compared where the cell says ``# NBVAL_CHECK_OUTPUT``).

Select or skip them with ``-m notebooks`` / ``-m "not notebooks"``, or one
notebook with ``-k quickstart``. The browser test of the built book is marked
``book``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line("markers", "notebooks: runs a curriculum notebook (notebooks/*.py) under nbval")
    config.addinivalue_line("markers", "book: builds the Jupyter Book and checks every chapter in headless Chromium")


def pytest_collection_modifyitems(session, config, items):
    # The book build executes every notebook again and takes longest: run it
    # last, after nbval has pointed at any failing cell more precisely.
    items[:] = sorted(items, key=lambda item: item.get_closest_marker("book") is not None)


def notebook_sources() -> list[Path]:
    """The curriculum notebooks, in reading order (their names start with a number)."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9]*.py") if p.is_file())


def pytest_pycollect_makemodule(module_path, parent):
    if Path(module_path).resolve() == HERE / "test_notebooks.py":
        return NotebookSources.from_parent(parent, path=Path(module_path))
    return None


class NotebookSources(pytest.File):
    """Stands in for ``test_notebooks.py``: one nbval collector per notebook source."""

    def collect(self):
        from nbval.plugin import IPyNbFile  # imported here: a missing test extra fails this collector only

        class JupytextNotebook(IPyNbFile):
            """An nbval notebook read from a jupytext ``.py`` source."""

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.compare_outputs = False  # --nbval-lax: run every cell, compare only marked ones
                self.add_marker(pytest.mark.notebooks)

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
                        cells = list(super().collect())
                    finally:
                        self.path = source
                for cell in cells:
                    cell.path = source
                return cells

            def setup(self):
                # Run in the Python running pytest (nbval's --nbval-current-env),
                # not whatever kernel called "python3" a machine has installed.
                if not self.config.option.nbval_kernel_name:
                    self.config.option.nbval_current_env = True
                super().setup()

        for source in notebook_sources():
            yield JupytextNotebook.from_parent(self, path=source)
