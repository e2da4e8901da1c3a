"""Name what a file is from its first bytes, so an error can say "X is a video, not a checkpoint".

Only cheap, certain signatures; ``describe`` returns None when it does not recognise the file.
"""

from __future__ import annotations

import codecs
import stat
import json
import struct
from pathlib import Path
from typing import Optional

from .errors import SqueezeError


def _safetensors_metadata(head: bytes, path: Path) -> Optional[dict]:
    if len(head) < 10:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if not 2 <= n <= 100_000_000 or head[8:9] != b"{":
        return None
    try:
        with open(path, "rb") as fh:
            fh.seek(8)
            header = json.loads(fh.read(min(n, 1 << 20)).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _varint(data: bytes, at: int):
    """A protobuf varint at ``at``: (the index after it, its value), or (None, None) when it does not end in ``data``."""
    value, shift = 0, 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return at, value
        shift += 7
    return None, None


def _mindspore_checkpoint(head: bytes) -> bool:
    """MindSpore's .ckpt: a protobuf ``Checkpoint`` whose first field is a ``value`` entry (field 1) holding a
    parameter's ``tag`` (field 1: its name, printable ASCII) followed by its ``tensor`` (field 2)."""
    if head[:1] != b"\x0a":
        return False
    at, _ = _varint(head, 1)
    if at is None or head[at:at + 1] != b"\x0a":
        return False
    at, n = _varint(head, at + 1)
    if at is None or not 1 <= n <= 256 or at + n >= len(head):
        return False
    name = head[at:at + n]
    return all(33 <= b < 127 for b in name) and head[at + n:at + n + 1] == b"\x12"


def describe(path) -> Optional[str]:
    """A short noun phrase for the kind of ``path`` ("a directory", "an MP4/MOV video", ...), or None."""
    path = Path(path)
    try:
        if path.is_dir():
            if path.suffix == ".mlpackage":
                return "a Core ML package (.mlpackage directory)"
            if (path / "manifest.json").is_file():
                return "an export directory"
            return "a directory"
        if not path.exists():
            return None
        special = special_kind(path)
        if special is not None:   # opening a FIFO would wait for a writer; a device can read forever
            return special
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return None
    if not head:
        return "an empty file (0 bytes)"
    if not head.strip(b"\x00"):
        return "a file of zero bytes only (e.g. space reserved by an interrupted download or copy)"
    meta = _safetensors_metadata(head, path)
    if meta is not None:
        fmt = str(meta.get("format", ""))
        if fmt.startswith("squeeze-context-pack"):
            return "a Squeezed Attention context pack"
        return "a safetensors file"
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "a Matroska/WebM video"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "an AVI video"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "a WAV audio file"
    if head[:4] == b"GGUF":
        return "a GGUF model file"
    if head[4:8] == b"TFL3":
        return "a TFLite model"
    if head[4:6] == b"ET" and head[6:8].isdigit():
        return "an ExecuTorch program (.pte)"
    if _onnx_model(head):
        return "an ONNX model"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (e.g. a PyTorch checkpoint)"
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return "a pickle file (e.g. a legacy PyTorch checkpoint)"
    if head[:2] == b"\x1f\x8b":
        return "a gzip file"
    if head[257:262] == b"ustar":
        return "a tar archive (extract the file inside it)"
    if _mindspore_checkpoint(head):
        return "a MindSpore checkpoint (.ckpt)"
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "a JSON file"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "a PNG image"
    if head[:3] == b"\xff\xd8\xff":
        return "a JPEG image"
    if b"\x00" in head:  # NUL decodes as UTF-8 but no text file holds it
        return None
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return None


def _onnx_model(head: bytes) -> bool:
    """An ONNX ModelProto as exporters write it: field 1 (ir_version, a small varint) first, then field 2
    (producer_name) or another of the model's opening fields, with a printable producer name when there is one."""
    if len(head) < 4 or head[0] != 0x08 or not 3 <= head[1] <= 20 or head[2] not in (0x12, 0x1a, 0x22, 0x2a, 0x3a,
                                                                                       0x42):
        return False
    if head[2] == 0x12:   # producer_name: length, then text
        n = head[3]
        return 0 < n < 64 and head[4:4 + n].isascii() and head[4:4 + n].decode("ascii").isprintable()
    return True


def is_plain_file_name(name) -> bool:
    """A file name a manifest may give for something inside its own directory: no path separators or '..', nothing
    hidden, no NUL, at most 255 characters. Readers check it before joining it to the directory, so a manifest cannot
    point outside the export."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and "/" not in name and "\\" not in name
            and "\x00" not in name and not name.startswith("."))


def special_kind(path) -> Optional[str]:
    """What a path that exists but is neither a regular file nor a directory is ("a named pipe (FIFO)", "a device",
    "a socket"), else None."""
    try:
        mode = Path(path).stat().st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


# The most a text input (a context document, a label file) is read: far above any context a model window takes,
# far below what would exhaust memory on a phone-sized laptop
MAX_TEXT_BYTES = 256 << 20


def open_for_reading(path, what: str, hint: str, stream_ok: bool = False):
    """Open ``path`` for binary reading or raise a one-line SqueezeError that says which problem it is
    (missing, a directory, a device or socket, permission denied, other OS error). ``what`` names the expected file,
    ``hint`` what to do instead. ``stream_ok``: a named pipe is read too (a text read once: `--context <(cmd)`)."""
    path = Path(path)
    special = special_kind(path)
    if special is not None and not (stream_ok and special == "a named pipe (FIFO)"):
        # a device reads forever (/dev/zero) or never (a terminal); a FIFO cannot be read twice, as a format's reader
        # does (its header, then the data), and blocks until a writer comes
        raise SqueezeError(f"{path} is {special}, not a {what} file; {hint}")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise SqueezeError(f"{what} not found: {path}; {hint}") from None
    except IsADirectoryError:
        raise SqueezeError(f"{path} is a directory, not a {what}; {hint}") from None
    except PermissionError:
        raise SqueezeError(f"cannot read {path}: permission denied; ask its owner to make it readable "
                           f"(chmod a+r) or {hint}") from None
    except OSError as exc:
        raise SqueezeError(f"cannot read {path} ({exc.strerror or exc}); {hint}") from None


# Byte-order marks that name an encoding unambiguously (UTF-32 first: its little-endian mark starts with UTF-16's).
# Windows editors save "Unicode" text as UTF-16 with a mark; such a file is read as the text it holds.
_UNICODE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                 (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def read_utf8_text(path, what: str = "context file", hint: str = "pass a UTF-8 text file with --context") -> str:
    """The text of a user's text file: UTF-8, or UTF-8/16/32 with a byte-order mark (the mark dropped: Windows editors
    write one, and it is not part of the text), or a one-line SqueezeError naming the problem. A file with NUL
    characters is refused: it is binary data, or UTF-16/32 without a mark, which also decodes as UTF-8."""
    path = Path(path)
    with open_for_reading(path, what, hint, stream_ok=True) as f:
        try:
            data = f.read(MAX_TEXT_BYTES + 1)
        except OSError as exc:
            raise SqueezeError(f"cannot read {path} ({exc.strerror or exc}); {hint}") from None
    if len(data) > MAX_TEXT_BYTES:
        raise SqueezeError(f"{path} holds more than {MAX_TEXT_BYTES >> 20} MiB, too much for a text input; {hint}")
    encoding = next((name for bom, name in _UNICODE_BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        label = "UTF-8 text" if encoding.startswith("utf-8") else f"{encoding.upper()} text (as its byte-order mark says)"
        raise SqueezeError(f"{path} is not {label}; {hint}") from None
    if "\0" in text:
        raise SqueezeError(f"{path} contains NUL characters, so it is not plain text (binary data, or UTF-16/32 "
                           f"without a byte-order mark); {hint}")
    return text


__all__ = ["describe", "is_plain_file_name", "open_for_reading", "read_utf8_text"]
