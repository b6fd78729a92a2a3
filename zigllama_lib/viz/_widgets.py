"""The one widget pattern every view uses: controls above a figure that redraws."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def require(module: str) -> Any:
    """Import ``module`` (matplotlib, ipywidgets) or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"zigllama_lib.viz needs {module.split('.')[0]}: pip install -e \".[notebooks]\""
        ) from exc


def figure_view(plot: Callable[..., Any], controls: dict[str, Any], title: str | None = None,
                sections: dict[str, list[str]] | None = None):
    """An ipywidgets view: ``controls`` (name -> widget) above the figure ``plot(**values)``.

    ``plot`` is the module's static ``plot_*`` function with everything but the
    controlled arguments already bound; it returns a matplotlib Figure. Each
    change of a control redraws the figure into an ``Output`` widget (the old
    figure is closed, so a slider drag does not pile up figures in memory).
    The first figure is drawn before returning, so a notebook saved with its
    widget state (the book) shows it without a kernel. ``sections`` (tab title
    -> control names) lays the controls out in tabs instead of one wrapped row.
    """
    widgets = require("ipywidgets")
    plt = require("matplotlib.pyplot")
    from IPython.display import display

    out = widgets.Output()

    def redraw(_change=None):
        values = {name: w.value for name, w in controls.items()}
        with out:
            out.clear_output(wait=True)
            fig = plot(**values)
            display(fig)
            plt.close(fig)

    for w in controls.values():
        w.observe(redraw, names="value")
    redraw()
    def row(names):
        return widgets.HBox([controls[n] for n in names], layout=widgets.Layout(flex_flow="row wrap"))

    if sections:
        panel = widgets.Tab(children=[row(names) for names in sections.values()])
        for i, name in enumerate(sections):
            panel.set_title(i, name)
    else:
        panel = row(list(controls))
    children = ([widgets.HTML(f"<b>{title}</b>")] if title else []) + [panel, out]
    return widgets.VBox(children)
