"""Pictures and widgets for the curriculum notebooks (above the six layers: may import any).

One module per layer (``gguf_anatomy``, ``quantisation``, ``primitives``,
``attention``, ``tokenizer``/``anatomy``, ``sampling``). Each view comes in two
forms that draw the same picture:

* ``plot_*(...) -> matplotlib.figure.Figure``: the static figure. It is what the
  book and nbval show, and what a reader without a running kernel sees.
* ``*_view(...) -> ipywidgets.Widget``: the same figure under controls (pickers,
  sliders, a text box), built with :func:`figure_view`, which redraws the static
  figure whenever a control changes.

matplotlib and ipywidgets come with the ``notebooks`` extra
(``pip install -e ".[notebooks]"``); the engine itself never imports this package.
"""

from ._widgets import figure_view, require

__all__ = ["figure_view", "require"]
