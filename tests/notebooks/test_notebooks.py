"""Placeholder module: ``conftest.py`` in this folder collects it as the nbval
run of every ``notebooks/NN_*.py`` (one test item per code cell).

Run only the notebooks: ``python -m pytest -q -m notebooks``.
"""
