"""Second new-user sweep of Squeezed Attention's inputs (context files, prompts, option combinations, export disk
space) through the real CLI and the Python API it wraps, on a tiny real-format GGUF and its packs."""

import codecs
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from export import cli
from squeeze_mobile.errors import SqueezeError
from squeezed_attention.file_kinds import read_utf8_text
from squeezed_attention.testing import write_tiny_llama_gguf

ROOT = Path(__file__).resolve().parents[1]
TINY_TEXT = " ".join(["ab abss an"] * 22)  # 154 tokens of the tiny vocabulary


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error(rc, err, *fragments):
    lines = err.strip().splitlines()
    assert rc == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep2_sa")
    write_tiny_llama_gguf(d / "tiny.gguf")
    (d / "ctx.txt").write_text(TINY_TEXT)
    rc = cli.main(["context", "build", "--context", str(d / "ctx.txt"), "--out", str(d / "raw.pack"),
                   "--model", str(d / "tiny.gguf"), "--raw", "--observation-window", "8"])
    assert rc == 0
    rc = cli.main(["context", "build", "--context", str(d / "ctx.txt"), "--out", str(d / "chat.pack"),
                   "--model", str(d / "tiny.gguf")])   # the exported decoders' observation window (100)
    assert rc == 0
    return d


# ------------------------------------------------------------------------------ context files: encodings, NUL
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_unicode_text_with_a_byte_order_mark_reads_as_its_text(tmp_path, encoding):
    """Windows editors save "Unicode" text as UTF-16 with a byte-order mark: it is the same text as its UTF-8."""
    text = "Le café coûte 3 €. 東京 😀\nline two"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    (tmp_path / "t.txt").write_bytes(data)
    assert read_utf8_text(tmp_path / "t.txt") == text


@pytest.mark.parametrize("data", ["hello world".encode("utf-16-le"), b"abc\x00def ghi\n"],
                         ids=["utf16_without_bom", "nul_byte"])
def test_text_with_nul_characters_is_refused_before_the_model_loads(tiny, tmp_path, capsys, data):
    """UTF-16 without a byte-order mark is valid UTF-8 with a NUL in every other byte: it was built into a pack of
    garbage tokens. Refused in one line, before the model (missing here) is looked at."""
    (tmp_path / "ctx.txt").write_bytes(data)
    rc, _, err = run(["context", "build", "--context", tmp_path / "ctx.txt", "--out", tmp_path / "x.pack",
                      "--model", tiny / "missing.gguf"], capsys)
    assert_one_error(rc, err, "contains NUL characters", "without a byte-order mark")
    assert not (tmp_path / "x.pack").exists()


def test_pack_built_from_utf16_matches_the_same_text_in_utf8(tiny, tmp_path, capsys):
    (tmp_path / "ctx16.txt").write_bytes(TINY_TEXT.encode("utf-16"))
    rc, _, err = run(["context", "build", "--context", tmp_path / "ctx16.txt", "--out", tmp_path / "p.pack",
                      "--model", tiny / "tiny.gguf", "--raw", "--observation-window", "8"], capsys)
    assert rc == 0, err
    from squeezed_attention.pack import load_context_pack

    a, b = load_context_pack(tmp_path / "p.pack"), load_context_pack(tiny / "raw.pack")
    assert a.token_ids.tolist() == b.token_ids.tolist()
    assert a.hashes["context_sha256"] == b.hashes["context_sha256"]
