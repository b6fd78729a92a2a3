"""Bounded notebook execution for the book: a kernel that never answers cannot stall the build.

myst-nb (``execute_notebooks: force``) runs each notebook through nbclient, which
waits for a new kernel in two steps: ``wait_for_ready`` (bounded by nbclient's
``startup_timeout``, 60 s, which myst-nb does not expose) and then a
``kernel_info`` request whose reply it awaits with the *cell* timeout (600 s
here). A kernel that never answers that request stalls the build for ten
minutes, and then fails it with a misleading "cell timed out".

myst-nb has no hook for the executor, so this extension swaps the function its
"force" (and "cache") client calls, ``single_nb_execution``, for
:func:`execute_notebook`, which

* bounds both start-up steps by ``zigllama_kernel_start_timeout`` (120 s) and
  each cell by myst-nb's ``nb_execution_timeout`` (``execute.timeout``);
* replaces a kernel that never answered (did not start, died before or never
  replied to its first request) by a fresh one, once: such a failure is a
  property of that kernel process, not of the notebook;
* fails the build with a message naming the notebook (and, for a failing cell,
  nbclient's description of that cell), printed by Sphinx itself rather than
  only in its saved traceback.

A failure after the first cell started is the notebook's own and is never retried.
"""

from __future__ import annotations

from sphinx.errors import ExtensionError, SphinxError

KERNEL_START_TIMEOUT = 120  # s: a kernel answers in ~2 s; leave room for a busy machine
KERNEL_START_ATTEMPTS = 2


class KernelStartError(RuntimeError):
    """A notebook's kernel never answered, on every attempt."""


class NotebookExecutionError(SphinxError):
    """Fails the build; Sphinx prints the category and message (no traceback dump)."""

    category = "Notebook execution failed"


def execute_notebook(nb, *, name, cwd, cell_timeout, start_timeout=KERNEL_START_TIMEOUT,
                     allow_errors=False, attempts=KERNEL_START_ATTEMPTS, **client_options):
    """Execute ``nb`` in place, as jupyter-cache's ``single_nb_execution`` does.

    Returns jupyter-cache's ``ExecutionResult`` (what myst-nb expects), with
    ``err`` set when a cell failed or exceeded ``cell_timeout`` seconds. Raises
    :class:`KernelStartError`, naming the notebook ``name``, when none of
    ``attempts`` kernels answered within ``start_timeout`` seconds.
    """
    import atexit
    import time
    import traceback

    from jupyter_cache.executors.utils import ExecutionResult
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    resources = {"metadata": {"path": cwd}} if cwd is not None else {}
    t0 = time.perf_counter()
    for _ in range(attempts):
        cells_started = []  # nbclient starts the first cell only once kernel_info was answered
        client = NotebookClient(
            nb, resources=resources, allow_errors=allow_errors, record_timing=False,
            startup_timeout=int(start_timeout),
            # nbclient waits for the kernel_info reply (no cell) with `timeout`
            # and for each cell with `timeout_func`: start-up gets the start-up bound.
            timeout=int(start_timeout),
            timeout_func=lambda cell: cell_timeout,
            on_cell_start=lambda cell, cell_index: cells_started.append(cell_index),
            **client_options,
        )
        try:
            client.execute()
        except Exception as err:
            if cells_started:  # the notebook's own failure: report it, never retry it
                if isinstance(err, (CellExecutionError, CellTimeoutError)):
                    return ExecutionResult(nb, cwd, time.perf_counter() - t0, err,
                                           "".join(traceback.format_exc()))
                raise
            if not isinstance(err, (RuntimeError, TimeoutError)):  # e.g. no such kernel
                raise KernelStartError(f"{name}: could not start its kernel: {err!r}") from err
            # RuntimeError: wait_for_ready timed out, or the kernel died (DeadKernelError);
            # CellTimeoutError (a TimeoutError): kernel_info was never answered.
            # nbclient has shut that kernel down; a fresh one usually starts fine.
            last = err
            # nbclient leaves its at-exit cleanup registered when wait_for_ready
            # fails; at exit it would fail on the kernel it already removed.
            atexit.unregister(client._cleanup_kernel)
        else:
            return ExecutionResult(nb, cwd, time.perf_counter() - t0)
    tries = "twice" if attempts == 2 else f"{attempts} times"
    reason = (str(last).strip().splitlines() or [""])[0]
    raise KernelStartError(f"{name}: the kernel did not start within {start_timeout:g} s "
                           f"(tried {tries}): {type(last).__name__}: {reason}") from last


def _bounded_single_nb_execution(app):
    """A drop-in for jupyter-cache's ``single_nb_execution`` that knows which document it runs."""

    def single_nb_execution(nb, cwd, timeout, allow_errors, meta_override=True,
                            record_timing=False, **kwargs):
        # record_timing: in the signature for compatibility; myst-nb leaves it False.
        if meta_override and "execution" in nb.metadata:  # as jupyter-cache does
            timeout = nb.metadata.execution.get("timeout", timeout)
            allow_errors = nb.metadata.execution.get("allow_errors", allow_errors)
        name = app.env.doc2path(app.env.docname, False)  # e.g. notebooks/03_layer3_primitives.py
        try:
            result = execute_notebook(
                nb, name=name, cwd=cwd, cell_timeout=timeout, allow_errors=allow_errors,
                start_timeout=app.config.zigllama_kernel_start_timeout, **kwargs)
        except KernelStartError as err:
            raise NotebookExecutionError(str(err)) from err
        except Exception as err:  # e.g. the kernel died in a cell
            raise NotebookExecutionError(f"{name}: {type(err).__name__}: {err}") from err
        if result.err is not None and app.config.nb_execution_raise_on_error:
            # myst-nb would raise ExecutionError(<path>), whose cause (which cell,
            # what error) Sphinx writes only to a temporary traceback file.
            raise NotebookExecutionError(f"{name}: {result.err}") from result.err
        return result

    return single_nb_execution


def _install(app, config):
    from myst_nb.core.execute import cache, direct

    for module in (direct, cache):
        if not hasattr(module, "single_nb_execution"):
            raise ExtensionError(
                f"zigllama_execution: {module.__name__}.single_nb_execution is gone "
                "(myst-nb changed); notebook execution would not be bounded")
        module.single_nb_execution = _bounded_single_nb_execution(app)


def setup(app):
    app.setup_extension("myst_nb")
    app.add_config_value("zigllama_kernel_start_timeout", KERNEL_START_TIMEOUT, "env", [int, float])
    app.connect("config-inited", _install)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
