"""Fuzz targets: one module per input surface, each with ``setup()`` and ``TestOneInput(data)``.

``INSTRUMENT`` names the packages whose code atheris instruments for coverage.
"""

TARGETS = ("gguf", "tokenizer", "template", "grammar", "json_schema", "server")
