"""JupyterLab opens the curriculum's .py notebooks as notebooks.

The project ships ``.jupyter/labconfig/default_setting_overrides.json``, which
makes jupytext's "Jupytext Notebook" the default viewer for Python files;
``scripts/lab.sh`` puts ``.jupyter/`` on ``JUPYTER_CONFIG_PATH`` so JupyterLab
reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ROOT / ".jupyter" / "labconfig" / "default_setting_overrides.json"
PLUGIN = "@jupyterlab/docmanager-extension:plugin"


def test_overrides_file_sets_jupytext_default_viewer():
    with open(OVERRIDES, encoding="utf-8") as f:
        overrides = json.load(f)
    assert overrides[PLUGIN]["defaultViewers"]["python"] == "Jupytext Notebook"


def test_jupyterlab_reads_the_project_overrides(tmp_path, monkeypatch):
    settings_utils = pytest.importorskip("jupyterlab_server.settings_utils",
                                         reason="JupyterLab (the notebooks extra)")
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(ROOT / ".jupyter"))
    overrides, error = settings_utils._get_overrides(str(tmp_path))
    assert not error
    assert overrides[PLUGIN]["defaultViewers"]["python"] == "Jupytext Notebook"

