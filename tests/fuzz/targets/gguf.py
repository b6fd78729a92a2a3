"""The GGUF reader on arbitrary bytes: header, metadata, tensor infos, data offsets, tensor views.

A file either parses (and then every tensor view lies inside the file, tensors do not overlap,
and gguf-py's reader agrees on the names) or raises a ``GGUFError``; nothing else.
"""

from __future__ import annotations

import zigllama_lib.foundation.gguf  # noqa: F401  (imported here so atheris instruments it)

import os
import tempfile

INSTRUMENT = ["zigllama_lib.foundation"]
_PATH = None


def setup() -> None:
    global _PATH
    d = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, _PATH = tempfile.mkstemp(prefix="zl-fuzz-", suffix=".gguf", dir=d)
    os.close(fd)


def TestOneInput(data: bytes) -> None:
    from zigllama_lib.foundation.errors import GGUFError
    from zigllama_lib.foundation.gguf import GGUFFile

    if _PATH is None:
        setup()
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        g = GGUFFile(_PATH)
    except GGUFError:
        return
    size = g.file_size
    assert size == len(data)
    assert g.header_end <= g.data_offset <= max(size, g.data_offset)
    spans = []
    for name, info in g.tensors.items():
        assert g.data_offset <= info.offset and info.offset + info.n_bytes <= size, name
        view = g.tensor_data(name)
        assert view.nbytes == info.n_bytes, name
        if info.n_bytes:
            spans.append((info.offset, info.offset + info.n_bytes, name))
            int(g.tensor_bytes(name).reshape(-1)[:16].sum())  # touch the bytes
    spans.sort()
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        assert a1 <= b0, f"tensors {an!r} and {bn!r} overlap"
    for k, v in g.metadata.items():
        assert isinstance(k, str)
        str(g.metadata_types[k])
    repr(g)
