"""Small fixes the book needs on top of Jupyter Book 1.x (loaded via ``local_extensions``).

1. Sphinx 7.4 writes an inline ``<script>`` registered by an extension after the
   builder started (sphinx-thebe's and sphinx-togglebutton's configuration) twice
   into every page: once as ``filename=None`` and once as ``filename=''``, which
   its de-duplication treats as different. Twice-declared ``const THEBE_JS_URL``
   is a JavaScript error on every page. We drop the repeats before rendering.
2. Ships ``widgets-mathjax3.js`` (see that file) into ``_static/``.
3. Streamed text (``print(piece, end="", flush=True)``) arrives as one stream
   output per piece. myst-nb's ``nb_merge_streams`` joins them, but strips and
   ends every piece with a newline, printing one token per line. We swap in a
   merge that concatenates consecutive pieces of the same stream, as Jupyter
   itself shows them.
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"


def _add_static_path(app):
    app.config.html_static_path.append(str(STATIC))


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        key = (js.filename or "", js.priority, tuple(sorted(js.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    if len(unique) != len(scripts):
        context["script_files"] = unique


def merge_streams(outputs):
    """Join consecutive stream outputs of the same name (stdout, stderr) into one."""
    merged = []
    for out in outputs or []:
        prev = merged[-1] if merged else None
        if (out.get("output_type") == "stream" and prev is not None
                and prev.get("output_type") == "stream" and prev.get("name") == out.get("name")):
            prev["text"] = prev["text"] + out["text"]
        else:
            merged.append(out)
    return merged


def _use_our_stream_merge():
    from myst_nb.core import render

    if hasattr(render, "coalesce_streams"):
        render.coalesce_streams = merge_streams


def setup(app):
    _use_our_stream_merge()
    app.connect("builder-inited", _add_static_path)
    app.connect("html-page-context", _dedupe_scripts, priority=900)  # after other extensions add theirs
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
