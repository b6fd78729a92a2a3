"""The built book, as a reader's browser shows it: every chapter in headless Chromium.

Builds the book with ``scripts/build_book.sh`` (unless ``jupyter_book/_build/html``
is newer than every source it is made from), serves it on 127.0.0.1 from a
thread, opens each chapter of ``_toc.yml`` in Debian's ``chromium`` through
``chromedriver`` and checks that:

* MathJax typeset every formula (an ``mjx-container`` in each ``.math`` element,
  no TeX errors, no raw ``$$`` left in the text);
* every ``<img>`` loaded (``naturalWidth > 0``);
* every widget view embedded in the page was rendered by the widget manager;
* the page logged no JavaScript console error and fetched nothing from
  another host (the book must work offline);

and saves a full-page screenshot per chapter in ``artifacts/screenshots/``.

Needs ``apt-get install chromium chromium-driver`` and npm. Without them the
test skips, except under CI (``CI`` set), where it fails. Select it with
``-m book``; ``ZIGLLAMA_BOOK_REBUILD=1`` forces a fresh build.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "jupyter_book"
HTML = BOOK / "_build" / "html"
STAMP = HTML / ".zigllama-built"  # written by scripts/build_book.sh when a build succeeds
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("ZIGLLAMA_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ZIGLLAMA_CHROMEDRIVER", "/usr/bin/chromedriver")

pytestmark = pytest.mark.book


def toc_files() -> list[str]:
    """Every document of ``_toc.yml`` in reading order (root first), without suffix."""
    import yaml

    with open(BOOK / "_toc.yml", encoding="utf-8") as f:
        toc = yaml.safe_load(f)
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    walk(toc.get("sections"))
    return files


def missing_tool(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must install it: see .ci/run)")
    pytest.skip(reason)


def build_is_fresh() -> bool:
    """True when the last successful build is newer than everything it is made from."""
    if os.environ.get("ZIGLLAMA_BOOK_REBUILD") or not STAMP.exists():
        return False
    built = STAMP.stat().st_mtime
    sources = [*BOOK.glob("*.yml"), *BOOK.glob("*.md"), *(BOOK / "_ext").rglob("*.*"), BOOK / "package-lock.json",
               *(ROOT / "notebooks").glob("*.py"), *(ROOT / "zigllama_lib").rglob("*.py")]
    return all(p.stat().st_mtime < built for p in sources if p.exists())


@pytest.fixture(scope="module")
def book_html() -> Path:
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not Path(exe).exists():
            missing_tool(f"{exe} not found (apt-get install -y chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium (the test extra)")
    if not build_is_fresh():
        if shutil.which("npm") is None:
            missing_tool("npm not found: it installs the book's MathJax and widget JavaScript")
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_book.sh")], cwd=ROOT,
                              env={**os.environ, "PYTHON": sys.executable},
                              capture_output=True, text=True, encoding="utf-8")
        if proc.returncode != 0:
            pytest.fail(f"book build failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
        print(f"book built in {time.perf_counter() - t0:.0f} s")
    return HTML


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def base_url(book_html):
    handler = functools.partial(QuietHandler, directory=str(book_html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: any free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def headless_chromium(page_load_timeout: float = 60.0):
    """Debian's Chromium through chromedriver: headless, no sandbox, no background networking,
    a throwaway profile, console messages logged. Yields the selenium driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="zigllama-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(page_load_timeout)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(book_html):
    with headless_chromium() as driver:
        yield driver


def wait_for(driver, script: str, what: str, timeout: float = 30.0):
    """Poll the JavaScript expression ``script`` until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def save_screenshot(driver, path: Path, tile: int = 8000) -> list[Path]:
    """Full-page PNGs: grow the viewport to the page's height, shoot, restore.

    A page taller than ``tile`` pixels is shot in tiles (``name_part1.png``,
    ``name_part2.png``, ...), scrolling between shots, so long chapters are kept
    whole. (WebDriver only shoots the viewport, and DevTools'
    captureBeyondViewport misplaces this theme's sticky sidebars.)
    """
    import base64

    width, height = driver.execute_script(
        "return [window.innerWidth, Math.max(document.documentElement.scrollHeight, window.innerHeight)]")
    width, height = int(width), int(height)
    n_tiles = -(-height // tile)
    paths = [path] if n_tiles == 1 else [path.with_name(f"{path.stem}_part{k + 1}{path.suffix}") for k in range(n_tiles)]
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f"{path.stem}_part*{path.suffix}"):
        old.unlink()
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": min(height, tile), "deviceScaleFactor": 1, "mobile": False})
    try:
        for k, out in enumerate(paths):
            driver.execute_script("window.scrollTo(0, arguments[0])", k * tile)
            time.sleep(0.3)  # let the theme re-lay out for the taller viewport / new scroll position
            shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
            out.write_bytes(base64.b64decode(shot["data"]))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        driver.execute_script("window.scrollTo(0, 0)")
    return paths


PAGE_STATE = """
const mathEls = Array.from(document.querySelectorAll('.math'));
const imgs = Array.from(document.images);
const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
const text = document.body.innerText;
return {
  math: mathEls.length,
  mathUntypeset: mathEls.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80)),
  mjx: document.querySelectorAll('mjx-container').length,
  mathErrors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.textContent.slice(0, 80)),
  rawDollars: text.includes('$$'),
  images: imgs.length,
  brokenImages: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
  widgetViews: views.length,
  renderedWidgets: document.querySelectorAll('.jupyter-widgets').length,
  widgetImages: Array.from(document.querySelectorAll('.jupyter-widgets img')).filter(i => i.naturalWidth > 0).length,
  // The widget manager's failure modes: its error view, its error text, a view still loading.
  // (Case-sensitive: a widget titled "Quantisation error" is fine.)
  widgetErrors: document.querySelectorAll('.jupyter-widgets-error-widget').length + Array.from(
      document.querySelectorAll('.jupyter-widgets')).filter(
      e => /Error displaying widget|Loading widget/.test(e.textContent)).length,
  resources: performance.getEntriesByType('resource').map(r => r.name),
};
"""

# True once MathJax (if the page loads it) has typeset, every image has settled,
# and the widget manager (if the page embeds widgets) has rendered its views.
SETTLED = """
const mj = window.MathJax;
if (document.querySelector('.math')) {
  if (!(mj && mj.startup && mj.startup.promise)) return false;
  if (!window.__zlMathHooked) {
    window.__zlMathHooked = true;
    mj.startup.promise.then(() => { window.__zlMathDone = true; });
  }
  if (!window.__zlMathDone) return false;
}
if (Array.from(document.images).some(i => !i.complete)) return false;
const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length;
if (views && document.querySelectorAll('.jupyter-widgets').length < views) return false;
return true;
"""


def test_book_has_chapters():
    files = toc_files()
    assert files[0] == "intro" and len(files) >= 2, files
    for f in files:
        assert any((BOOK / f).with_suffix(s).exists() for s in (".md", ".py", ".ipynb")), f"_toc.yml names {f}: no such file"


@pytest.mark.parametrize("doc", toc_files())
def test_chapter_renders(doc, browser, base_url):
    browser.get_log("browser")  # drop messages from earlier pages
    browser.get(f"{base_url}/{doc}.html")
    wait_for(browser, "return document.readyState === 'complete'", "the page to load")
    try:
        wait_for(browser, SETTLED, "MathJax, images and widgets to settle")
    finally:
        save_screenshot(browser, SHOTS / (doc.replace("/", "__") + ".png"))
    state = browser.execute_script(PAGE_STATE)

    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, "JavaScript console errors:\n" + "\n".join(e["message"] for e in errors)

    foreign = [r for r in state["resources"] if not r.startswith(base_url)]
    assert not foreign, f"the page fetched from other hosts (the book must work offline): {foreign}"

    assert not state["rawDollars"], "raw $$ in the rendered text: a formula was not parsed as math"
    if state["math"]:
        assert state["mjx"] >= state["math"], state
        assert not state["mathUntypeset"], f"formulas MathJax did not typeset: {state['mathUntypeset']}"
        assert not state["mathErrors"], f"TeX errors: {state['mathErrors']}"

    assert not state["brokenImages"], f"images that did not load: {state['brokenImages']}"

    if state["widgetViews"]:
        assert state["renderedWidgets"] >= state["widgetViews"], state
        assert not state["widgetErrors"], "a widget rendered an error message"


def test_book_has_math_images_and_widgets(browser, base_url):
    """The checks above are not vacuous: the book as a whole has each kind of content."""
    totals = {"math": 0, "images": 0, "widgetViews": 0, "widgetImages": 0}
    for doc in toc_files():
        browser.get(f"{base_url}/{doc}.html")
        wait_for(browser, SETTLED, f"{doc} to settle")
        state = browser.execute_script(PAGE_STATE)
        for key in totals:
            totals[key] += state[key]
    assert totals["math"] > 0 and totals["images"] > 0 and totals["widgetViews"] > 0, totals
    assert totals["widgetImages"] > 0, "no widget showed its matplotlib output"
