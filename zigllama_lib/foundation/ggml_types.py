"""The ggml tensor types: their numeric ids and block geometry.

A quantised ggml type stores weights in *blocks*: ``block_size`` consecutive
values packed into ``type_size`` bytes (scales + packed integers). A row of
``n`` values therefore takes ``n // block_size * type_size`` bytes, and ``n``
must be a multiple of ``block_size``. Float types are blocks of one value.

Ids and sizes are ggml's (``ggml.h`` / ``ggml-common.h``); a test checks them
against gguf-py's ``GGML_QUANT_SIZES``.
"""

from __future__ import annotations

import enum

from .errors import UnsupportedTypeError


class GGMLType(enum.IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


QK_K = 256  # values per K-quant super-block

# type -> (values per block, bytes per block)
BLOCK_GEOMETRY: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.BF16: (1, 2),
    GGMLType.F64: (1, 8),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.Q4_0: (32, 2 + 16),
    GGMLType.Q4_1: (32, 2 + 2 + 16),
    GGMLType.Q5_0: (32, 2 + 4 + 16),
    GGMLType.Q5_1: (32, 2 + 2 + 4 + 16),
    GGMLType.Q8_0: (32, 2 + 32),
    GGMLType.Q2_K: (QK_K, 2 + 2 + QK_K // 16 + QK_K // 4),
    GGMLType.Q3_K: (QK_K, 2 + QK_K // 8 + QK_K // 4 + 12),
    GGMLType.Q4_K: (QK_K, 2 + 2 + 12 + QK_K // 2),
    GGMLType.Q5_K: (QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),
    GGMLType.Q6_K: (QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),
    GGMLType.Q8_K: (QK_K, 4 + QK_K + QK_K // 16 * 2),
    GGMLType.IQ2_XXS: (QK_K, 2 + QK_K // 4),
    GGMLType.IQ2_XS: (QK_K, 2 + QK_K // 4 + QK_K // 32),
    GGMLType.IQ3_XXS: (QK_K, 2 + 3 * QK_K // 8),
    GGMLType.IQ1_S: (QK_K, 2 + QK_K // 8 + QK_K // 16),
    GGMLType.IQ4_NL: (32, 2 + 16),
    GGMLType.IQ3_S: (QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    GGMLType.IQ2_S: (QK_K, 2 + QK_K // 4 + QK_K // 16),
    GGMLType.IQ4_XS: (QK_K, 2 + 2 + QK_K // 64 + QK_K // 2),
    GGMLType.IQ1_M: (QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    GGMLType.TQ1_0: (QK_K, 2 + 4 * 13 ),
    GGMLType.TQ2_0: (QK_K, 2 + 64),
    GGMLType.MXFP4: (32, 1 + 16),
}


def ggml_type(value: int, where: str = "") -> GGMLType:
    """Return the :class:`GGMLType` for a raw id, or raise naming ``where``."""
    try:
        t = GGMLType(value)
    except ValueError:
        raise UnsupportedTypeError(f"{where}unknown ggml tensor type id {value}") from None
    if t not in BLOCK_GEOMETRY:
        raise UnsupportedTypeError(f"{where}ggml type {t.name} has no known block layout")
    return t


def row_bytes(t: GGMLType, n_values: int, where: str = "") -> int:
    """Bytes taken by ``n_values`` consecutive values of type ``t``."""
    block, size = BLOCK_GEOMETRY[t]
    if n_values % block:
        raise UnsupportedTypeError(
            f"{where}{n_values} values is not a multiple of the {t.name} block size {block}"
        )
    return n_values // block * size
