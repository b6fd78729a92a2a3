"""JupyterLab, as a learner starts it with ``scripts/lab.sh``, opens a ``.py`` notebook as a notebook.

Starts the real JupyterLab server through ``scripts/lab.sh`` (the project's
setting on ``JUPYTER_CONFIG_PATH``) on 127.0.0.1, opens
``00_quickstart.py`` (lab.sh roots the file browser at ``notebooks/``) in headless Chromium the way a double click in
the file browser does (``/lab/tree/<path>``: the default viewer for the file
type), and checks that the main area shows a notebook with the source's cells,
not a text editor. Without the project's setting JupyterLab opens the file in
its text editor, which the test also checks, so it proves the setting does the
work. Needs jupyterlab (the notebooks and test extras) and Debian's Chromium.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from .test_book_browser import CHROMEDRIVER, CHROMIUM, headless_chromium, missing_tool, save_screenshot, wait_for

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "00_quickstart.py"  # lab.sh serves notebooks/ as the file browser's root
SHOTS = ROOT / "artifacts" / "screenshots"

pytestmark = pytest.mark.book


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(port: int, tmp: Path, with_project_setting: bool) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1:port, no token, state in ``tmp`` (never the user's ~/.jupyter)."""
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "ws"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"), "JUPYTER_CONFIG_DIR": str(tmp / "config"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("JUPYTER_CONFIG_PATH", None)
    args = ["--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
            "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")  # CI machines run as root
    if with_project_setting:
        cmd = ["bash", str(ROOT / "scripts" / "lab.sh"), *args]
    else:
        cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={ROOT / 'notebooks'}", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "lab.log", "w"))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"JupyterLab exited ({proc.returncode}):\n{(tmp / 'lab.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise AssertionError(f"JupyterLab did not answer in 90 s:\n{(tmp / 'lab.log').read_text()[-3000:]}")


# What the main area shows for the opened file: a notebook (how many cells) or a text editor.
MAIN_AREA = """
const panel = document.querySelector('.jp-MainAreaWidget.jp-NotebookPanel:not(.lm-mod-hidden)');
const editor = document.querySelector('.jp-MainAreaWidget:not(.lm-mod-hidden) .jp-FileEditor');
if (panel) {
  // JupyterLab renders only the cells near the viewport, so count what is drawn, and wait
  // for the first markdown cell's heading to be rendered as HTML.
  const h1 = panel.querySelector('.jp-MarkdownCell .jp-RenderedMarkdown h1');
  const code = panel.querySelectorAll('.jp-CodeCell .cm-content');
  if (h1 && code.length) return {kind: 'notebook', title: h1.textContent.replace('¶', '').trim(),
                                 codeCells: code.length, firstCode: code[0].textContent};
}
if (editor && editor.querySelector('.cm-content')) return {kind: 'editor'};
return null;
"""


@pytest.fixture(scope="module")
def lab_browser():
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not Path(exe).exists():
            missing_tool(f"{exe} not found (apt-get install -y chromium chromium-driver)")
    pytest.importorskip("jupyterlab", reason="JupyterLab (the notebooks extra)")
    pytest.importorskip("jupytext", reason="jupytext (the notebooks extra)")
    pytest.importorskip("selenium", reason="selenium (the test extra)")
    with headless_chromium(page_load_timeout=90) as driver:
        yield driver


def open_in_lab(driver, with_project_setting: bool) -> dict:
    """Start JupyterLab, open NOTEBOOK as a double click would, return what the main area shows."""
    with tempfile.TemporaryDirectory(prefix="zigllama-lab-") as tmp:
        port = free_port()
        proc = start_lab(port, Path(tmp), with_project_setting)
        try:
            driver.get(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}")
            shown = wait_for(driver, MAIN_AREA, f"JupyterLab to open {NOTEBOOK}", timeout=90)
            if with_project_setting:
                time.sleep(1.0)  # let the notebook finish rendering its markdown for the screenshot
                save_screenshot(driver, SHOTS / "jupyterlab_00_quickstart.png")
            return shown
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_lab_sh_opens_py_notebooks_as_notebooks(lab_browser):
    import jupytext

    source = jupytext.read(ROOT / "notebooks" / NOTEBOOK)
    shown = open_in_lab(lab_browser, with_project_setting=True)
    assert shown["kind"] == "notebook", f"JupyterLab opened {NOTEBOOK} as {shown}"
    first_markdown = next(c for c in source.cells if c.cell_type == "markdown")
    first_code = next(c for c in source.cells if c.cell_type == "code")
    assert "# " + shown["title"] == first_markdown.source.splitlines()[0], shown
    squash = lambda text: "".join(text.split())  # noqa: E731 - CodeMirror's line divs drop the newlines
    assert squash(shown["firstCode"]) == squash(first_code.source), shown


def test_without_the_setting_lab_opens_a_text_editor(lab_browser):
    # The control: plain `jupyter lab` shows the same file as text, so the setting is what does it.
    shown = open_in_lab(lab_browser, with_project_setting=False)
    assert shown["kind"] == "editor", shown
