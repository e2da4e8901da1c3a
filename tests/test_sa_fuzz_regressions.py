"""Inputs kept from fuzzing the context-pack and GGUF loaders (bench/fuzz/fuzz_context_pack.py, fuzz_gguf.py):
one per distinct way the fuzzers reached a refusal, each must stay a one-line SqueezeError -- never another
exception. The pack inputs include forged ones (content hash recomputed after the mutation) that reach the
structural checks behind the hash."""

import json
import warnings
from pathlib import Path

import pytest

from squeeze_mobile.errors import SqueezeError
from squeezed_attention.model import LlamaForCausalLM
from squeezed_attention.pack import load_context_pack
from squeezed_attention.weights import load_gguf, read_gguf_header

DATA = Path(__file__).parent / "data" / "fuzz"
PACKS = json.loads((DATA / "pack" / "expected.json").read_text())
GGUFS = json.loads((DATA / "gguf" / "expected.json").read_text())


@pytest.mark.parametrize("folder, expected", [("pack", PACKS), ("gguf", GGUFS)])
def test_every_kept_input_has_an_expectation(folder, expected):
    assert sorted(expected) == sorted(p.name for p in (DATA / folder).iterdir() if p.name != "expected.json")


def _one_line(exc, path):
    message = str(exc.value)
    assert "\n" not in message and message.isprintable()
    return message.replace(f"{path} ", "").replace(f" of {path}", "").replace(f" in {path}", "")


@pytest.mark.parametrize("name", sorted(PACKS))
def test_pack_fuzz_input_is_a_squeeze_error(name):
    path = DATA / "pack" / name
    with pytest.raises(SqueezeError) as info:
        load_context_pack(path)
    assert PACKS[name] in _one_line(info, path)


def _load_everything(path):
    """What `--model PATH` goes through: header, dequantized weights, tokenizer, chat template, the decoder."""
    read_gguf_header(path)
    checkpoint = load_gguf(path)
    checkpoint.tokenizer.encode("ab abss an 12")
    checkpoint.tokenizer.chat_frame()
    LlamaForCausalLM.from_checkpoint(checkpoint)


@pytest.mark.parametrize("name", sorted(GGUFS))
def test_gguf_fuzz_input_is_a_squeeze_error(name):
    path = DATA / "gguf" / name
    with warnings.catch_warnings(), pytest.raises(SqueezeError) as info:
        warnings.simplefilter("ignore")  # NaN scales make numpy warn before the loader refuses them
        _load_everything(path)
    assert GGUFS[name] in _one_line(info, path)
