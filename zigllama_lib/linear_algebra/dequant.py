"""Dequantisation: raw GGUF rows of any supported type -> float32.

``dequantize(raw, qtype)`` takes ``raw: (..., row_bytes) uint8`` -- rows of a
GGUF tensor, typically a zero-copy memmap view -- and returns
``(..., n_cols) float32`` with ``n_cols = row_bytes / type_size * block_size``.
It runs a Numba kernel (parallel over rows); ``dequantize_reference`` computes
the same values with readable numpy, block by block, and the tests check both
bit for bit against gguf-py.

``get_rows(raw, qtype, ids)`` dequantises only the rows ``ids`` (an embedding
lookup: ``ggml_get_rows``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from numba import njit, prange

from ..foundation.errors import ConfigError, UnsupportedTypeError
from ..foundation.ggml_types import BLOCK_GEOMETRY, GGMLType
from . import float_formats as ff
from . import kquants as kq
from . import legacy as lg

# ggml ids, as Numba-friendly ints for the kernels' dispatch
F32, F16, BF16 = int(GGMLType.F32), int(GGMLType.F16), int(GGMLType.BF16)
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = (int(GGMLType.Q4_0), int(GGMLType.Q4_1), int(GGMLType.Q5_0),
                                int(GGMLType.Q5_1), int(GGMLType.Q8_0))
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = (int(GGMLType.Q2_K), int(GGMLType.Q3_K), int(GGMLType.Q4_K),
                                int(GGMLType.Q5_K), int(GGMLType.Q6_K))

# type -> numpy reference: (n_blocks, type_size) uint8 -> (n_blocks, block_size) float32
REFERENCE: dict[GGMLType, Callable[[np.ndarray], np.ndarray]] = {
    GGMLType.F32: ff.dequantize_f32_ref,
    GGMLType.F16: ff.dequantize_f16_ref,
    GGMLType.BF16: ff.dequantize_bf16_ref,
    GGMLType.Q4_0: lg.dequantize_blocks_q4_0,
    GGMLType.Q4_1: lg.dequantize_blocks_q4_1,
    GGMLType.Q5_0: lg.dequantize_blocks_q5_0,
    GGMLType.Q5_1: lg.dequantize_blocks_q5_1,
    GGMLType.Q8_0: lg.dequantize_blocks_q8_0,
    GGMLType.Q2_K: kq.dequantize_blocks_q2_K,
    GGMLType.Q3_K: kq.dequantize_blocks_q3_K,
    GGMLType.Q4_K: kq.dequantize_blocks_q4_K,
    GGMLType.Q5_K: kq.dequantize_blocks_q5_K,
    GGMLType.Q6_K: kq.dequantize_blocks_q6_K,
}

SUPPORTED_TYPES: tuple[GGMLType, ...] = tuple(REFERENCE)


def check_type(qtype) -> GGMLType:
    """``qtype`` as a :class:`GGMLType`, or :class:`UnsupportedTypeError` naming it."""
    try:
        t = GGMLType(int(qtype))
    except ValueError:
        raise UnsupportedTypeError(f"unknown ggml type id {qtype!r}") from None
    if t not in REFERENCE:
        raise UnsupportedTypeError(
            f"ggml type {t.name} is not implemented by linear_algebra "
            f"(supported: {', '.join(x.name for x in SUPPORTED_TYPES)})"
        )
    return t


def n_cols_of(qtype: GGMLType, row_bytes: int) -> int:
    """Values in a row of ``row_bytes`` bytes of type ``qtype``."""
    block, size = BLOCK_GEOMETRY[qtype]
    if row_bytes % size:
        raise ConfigError(f"a {qtype.name} row of {row_bytes} bytes is not a whole number of {size}-byte blocks")
    return row_bytes // size * block


def as_rows(raw: np.ndarray) -> np.ndarray:
    """``raw (..., row_bytes) uint8`` as a C-contiguous 2-D ndarray ``(n_rows, row_bytes)``, zero-copy if possible."""
    raw = np.asarray(raw)  # also turns a np.memmap into a plain ndarray view
    if raw.dtype != np.uint8:
        raise ConfigError(f"expected raw tensor bytes (uint8), got dtype {raw.dtype}")
    if raw.ndim == 0:
        raise ConfigError("expected raw rows of shape (..., row_bytes), got a scalar")
    return np.ascontiguousarray(raw.reshape(-1, raw.shape[-1]))


# -- Numba ---------------------------------------------------------------------------
@njit(cache=True, inline="always")
def dequant_row(code, row, lut, out):
    """Row ``row: (row_bytes,) uint8`` of ggml type ``code`` -> ``out: (n_cols,) float32``."""
    if code == Q4_0:
        lg.row_q4_0(row, lut, out)
    elif code == Q4_1:
        lg.row_q4_1(row, lut, out)
    elif code == Q5_0:
        lg.row_q5_0(row, lut, out)
    elif code == Q5_1:
        lg.row_q5_1(row, lut, out)
    elif code == Q8_0:
        lg.row_q8_0(row, lut, out)
    elif code == Q4_K:
        kq.row_q4_K(row, lut, out)
    elif code == Q5_K:
        kq.row_q5_K(row, lut, out)
    elif code == Q6_K:
        kq.row_q6_K(row, lut, out)
    elif code == Q2_K:
        kq.row_q2_K(row, lut, out)
    elif code == Q3_K:
        kq.row_q3_K(row, lut, out)
    elif code == F16:
        ff.row_f16(row, lut, out)
    elif code == BF16:
        ff.row_bf16(row, out)
    elif code == F32:
        ff.row_f32(row, out)


@njit(cache=True, parallel=True, nogil=True)
def dequant_rows_kernel(code, rows, lut, out):
    """``rows: (n, row_bytes) uint8 -> out: (n, n_cols) float32``, parallel over rows."""
    for r in prange(rows.shape[0]):
        dequant_row(code, rows[r], lut, out[r])


# -- public ----------------------------------------------------------------------------
def dequantize(raw: np.ndarray, qtype: GGMLType) -> np.ndarray:
    """``raw: (..., row_bytes) uint8`` of type ``qtype`` -> ``(..., n_cols) float32`` (Numba)."""
    t = check_type(qtype)
    raw = np.asarray(raw)
    rows = as_rows(raw)
    n_cols = n_cols_of(t, rows.shape[1])
    out = np.empty((rows.shape[0], n_cols), dtype=np.float32)
    if rows.shape[0] and n_cols:
        dequant_rows_kernel(int(t), rows, ff.FP16_TO_FP32, out)
    return out.reshape(*raw.shape[:-1], n_cols)


def dequantize_reference(raw: np.ndarray, qtype: GGMLType) -> np.ndarray:
    """Same as :func:`dequantize`, with the readable numpy code of each format."""
    t = check_type(qtype)
    raw = np.asarray(raw)
    rows = as_rows(raw)
    n_cols = n_cols_of(t, rows.shape[1])
    block, size = BLOCK_GEOMETRY[t]
    blocks = rows.reshape(-1, size)  # (n_rows * n_blocks, type_size) uint8
    with np.errstate(all="ignore"):  # inf / nan scales are data, not errors
        values = REFERENCE[t](blocks) if blocks.shape[0] else np.empty((0, block), np.float32)
    return values.astype(np.float32, copy=False).reshape(*raw.shape[:-1], n_cols)


def get_rows(raw: np.ndarray, qtype: GGMLType, ids) -> np.ndarray:
    """Dequantised rows ``ids`` of the matrix ``raw: (n_rows, row_bytes) uint8`` -> ``(len(ids), n_cols) float32``.

    The embedding lookup: ``raw`` is e.g. ``token_embd.weight`` (one row per token id).
    """
    t = check_type(qtype)
    rows = as_rows(raw)
    n_cols = n_cols_of(t, rows.shape[1])
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ConfigError(f"row ids must be a 1-D array of integers, got shape {ids.shape} dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= rows.shape[0]):
        bad = ids[(ids < 0) | (ids >= rows.shape[0])][0]
        raise ConfigError(f"row id {bad} is out of range for a matrix of {rows.shape[0]} rows")
    picked = rows[ids]  # (len(ids), row_bytes): copies only the selected rows
    out = np.empty((ids.shape[0], n_cols), dtype=np.float32)
    if ids.size and n_cols:
        dequant_rows_kernel(int(t), picked, ff.FP16_TO_FP32, out)
    return out
