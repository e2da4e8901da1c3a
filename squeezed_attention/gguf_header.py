"""A small, bounded reader for the GGUF header: metadata key/values and the tensor table.

gguf.GGUFReader builds a numpy view per array element (seconds for a 49k-token vocabulary) and reads past the
end of a truncated file without noticing. This reader parses the same format (v2/v3, little-endian) with
struct in well under a second, checks every length against the bytes that remain, and raises
:class:`GGUFFormatError` (a ValueError) with a short reason for anything malformed. Tensor data is not read here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_NESTING = 2  # arrays of arrays (llama.cpp writes none deeper)

# GGUF value types -> struct format (scalars)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """The bytes are not a well-formed GGUF header (the message says where)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple          # ggml order: innermost first
    type_id: int         # GGMLQuantizationType value
    offset: int          # relative to the data section


@dataclass(frozen=True)
class GGUFHeaderData:
    version: int
    metadata: dict       # key -> int | float | bool | str | list
    tensors: list        # TensorInfo, in file order
    data_start: int      # absolute offset of the (aligned) tensor data section
    file_size: int


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos, self.size = buf, 0, len(buf)

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            raise GGUFFormatError(f"truncated while reading {what} (needs {n} bytes at offset {self.pos}, "
                                  f"file has {self.size})")
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize("<" + fmt)
        return struct.unpack_from("<" + fmt, self.buf, self.take(size, what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("Q", what)
        start = self.take(n, what)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFFormatError(f"{what} is not UTF-8") from None


def _value(cur: _Cursor, type_id: int, what: str, depth: int = 0):
    if type_id in _SCALARS:
        return cur.unpack(_SCALARS[type_id], what)
    if type_id == _STRING:
        return cur.string(what)
    if type_id == _ARRAY:
        if depth >= MAX_NESTING:
            raise GGUFFormatError(f"{what} nests arrays too deeply")
        item_type = cur.unpack("I", what)
        count = cur.unpack("Q", what)
        if item_type in _SCALARS:
            fmt = _SCALARS[item_type]
            size = struct.calcsize("<" + fmt)
            start = cur.take(count * size, what)  # bounds-checked before anything is allocated
            return list(struct.unpack_from(f"<{count}{fmt}", cur.buf, start))
        if item_type not in (_STRING, _ARRAY):
            raise GGUFFormatError(f"{what} has unknown item type {item_type}")
        if count > cur.size - cur.pos:  # every string/array item takes at least 8 bytes
            raise GGUFFormatError(f"{what} claims {count} items, more than the file can hold")
        return [_value(cur, item_type, what, depth + 1) for _ in range(count)]
    raise GGUFFormatError(f"{what} has unknown value type {type_id}")


def parse_gguf_header(buf) -> GGUFHeaderData:
    """Parse the header of a GGUF file held in ``buf`` (bytes, mmap or memoryview)."""
    cur = _Cursor(buf)
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise GGUFFormatError("no GGUF magic")
    cur.take(4, "magic")
    version = cur.unpack("I", "version")
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0:
            raise GGUFFormatError("big-endian GGUF files are not supported")
        raise GGUFFormatError(f"unsupported GGUF version {version} (supported: {SUPPORTED_VERSIONS})")
    tensor_count = cur.unpack("Q", "tensor count")
    kv_count = cur.unpack("Q", "key/value count")
    # each key/value takes >= 12 bytes, each tensor info >= 24: refuse counts the file cannot hold up front
    if kv_count * 12 + tensor_count * 24 > cur.size - cur.pos:
        raise GGUFFormatError(f"claims {kv_count} keys and {tensor_count} tensors, more than the file can hold")
    metadata = {}
    for i in range(kv_count):
        key = cur.string(f"key #{i}")
        if key in metadata:
            raise GGUFFormatError(f"duplicate key {key[:60]!r}")
        shown = repr(key[:60])  # names come from the file: quoted, so control characters cannot reach a terminal
        metadata[key] = _value(cur, cur.unpack("I", f"the type of {shown}"), shown)
    tensors, names = [], set()
    for i in range(tensor_count):
        name = cur.string(f"tensor name #{i}")
        if name in names:
            raise GGUFFormatError(f"duplicate tensor {name[:60]!r}")
        names.add(name)
        shown = repr(name[:60])
        n_dims = cur.unpack("I", f"the dimensions of {shown}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFFormatError(f"tensor {shown} has {n_dims} dimensions")
        dims = tuple(cur.unpack("Q", f"the shape of {shown}") for _ in range(n_dims))
        type_id = cur.unpack("I", f"the type of {shown}")
        offset = cur.unpack("Q", f"the offset of {shown}")
        tensors.append(TensorInfo(name, dims, type_id, offset))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFFormatError("general.alignment is not a power of two")
    data_start = -(-cur.pos // alignment) * alignment
    return GGUFHeaderData(version, metadata, tensors, data_start, cur.size)
