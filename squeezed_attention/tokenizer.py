"""Byte-level BPE tokenizer and chat template, built from GGUF metadata or a HF tokenizer.json.

The GGUF stores the vocabulary, merges and token types; we rebuild a `tokenizers` BPE from them (the same
engine transformers uses), so no hub download is needed. The chat template is a Jinja2 string from the
model file, rendered in a sandbox.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .errors import SqueezeError, reason_of

# llama.cpp pre-tokenizer names that use the GPT-2 byte-level split plus single-digit splitting.
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
CONTROL_TOKEN_TYPE = 3
USER_DEFINED_TOKEN_TYPE = 4


@dataclass
class ChatTokenizer:
    backend: "object"  # tokenizers.Tokenizer
    chat_template: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    special_ids: set = field(default_factory=set)

    # ---------------------------------------------------------------------------------------------- build
    @classmethod
    def from_gguf_fields(cls, tokens, merges, token_types, pre: str, bos, eos, chat_template, source: str = "the model"):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        try:
            vocab = {tok: i for i, tok in enumerate(tokens)}
            merge_pairs = [tuple(m.split(" ", 1)) for m in merges]
            bpe = models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False, byte_fallback=False)
            backend = Tokenizer(bpe)
            byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
            if pre in _DIGIT_SPLIT_PRE:
                backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
            else:
                backend.pre_tokenizer = byte_level
            backend.decoder = decoders.ByteLevel()
            special = [i for i, t in enumerate(token_types) if t in (CONTROL_TOKEN_TYPE, USER_DEFINED_TOKEN_TYPE)]
            backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in special])
        except Exception as exc:  # the Rust tokenizers library raises plain Exception on inconsistent data
            reason = reason_of(exc)
            raise SqueezeError(f"the tokenizer stored in {source} is invalid ({reason}); pass an intact model file") from None
        return cls(backend, chat_template, bos, eos, set(special))

    @classmethod
    def from_hf_directory(cls, directory):
        from pathlib import Path

        from tokenizers import Tokenizer

        directory = Path(directory)
        tok_file = directory / "tokenizer.json"
        if not tok_file.exists():
            raise SqueezeError(f"{directory} has no tokenizer.json; pass a Hugging Face model folder with its tokenizer files")
        try:
            backend = Tokenizer.from_file(str(tok_file))
        except Exception as exc:  # tokenizers raises plain Exception on a bad file
            raise SqueezeError(f"{tok_file} is not a readable tokenizer ({type(exc).__name__}); "
                               "pass a Hugging Face model folder with intact tokenizer files") from None
        template, bos, eos = None, None, None
        cfg_file = directory / "tokenizer_config.json"
        if cfg_file.exists():
            try:
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                raise SqueezeError(f"{cfg_file} is not readable JSON; fix or remove it") from None
            if not isinstance(cfg, dict):
                raise SqueezeError(f"{cfg_file} is not a JSON object; fix or remove it")
            template = cfg.get("chat_template")
            bos = backend.token_to_id(cfg["bos_token"]) if isinstance(cfg.get("bos_token"), str) else None
            eos = backend.token_to_id(cfg["eos_token"]) if isinstance(cfg.get("eos_token"), str) else None
        special = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        return cls(backend, template, bos, eos, special)

    # ------------------------------------------------------------------------------------------------ use
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` with its special-token strings matched (the chat framing's own markers)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_text(self, text: str) -> list[int]:
        """Ids of user text (a document, a question): written special-token strings stay text."""
        return encode_literal(self.backend, text)

    def decode(self, ids, skip_special: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def stop_token_ids(self) -> list:
        """The ids that end an answer: the model's end-of-sequence token and id 0 (<|endoftext|> in GPT-2-style
        vocabularies such as SmolLM2's), sorted (the decoder manifest records them for the apps)."""
        return sorted(i for i in (self.eos_token_id, 0) if i is not None)

    def render_chat(self, messages, add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise SqueezeError("this model has no chat template; use --raw for plain continuation")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        from jinja2 import TemplateError

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        try:
            return env.from_string(self.chat_template).render(messages=messages,
                                                              add_generation_prompt=add_generation_prompt)
        except (TemplateError, TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError) as exc:
            raise SqueezeError(f"the model's chat template cannot be rendered ({type(exc).__name__}); "
                               "use --raw for plain continuation") from None

    def chat_frame(self) -> tuple[str, str]:
        """(prefix, suffix) such that prefix + context + prompt + suffix is one user turn + assistant cue.

        Found by rendering the template around a marker, so it follows whatever template the model ships.
        """
        marker = "\ue000SQUEEZE_MARKER\ue000"
        text = self.render_chat([{"role": "user", "content": marker}], add_generation_prompt=True)
        if text.count(marker) != 1:
            raise SqueezeError("the model's chat template does not place the user message once; use --raw")
        prefix, suffix = text.split(marker)
        return prefix, suffix

    def fingerprint(self) -> str:
        """sha256 of everything that changes token ids: the full tokenizer JSON and the chat template."""
        h = hashlib.sha256()
        h.update(self.backend.to_str().encode())
        h.update(b"\0")
        h.update((self.chat_template or "").encode())
        return h.hexdigest()


def check_user_text(text, what: str = "the prompt") -> str:
    """``text`` if it is a str the tokenizer can encode, else a one-line SqueezeError. Python hands a command line's
    bytes that are not UTF-8 (a Latin-1 terminal's "café") over as lone surrogates, which no tokenizer takes."""
    if not isinstance(text, str):
        raise SqueezeError(f"{what} must be text (str); got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SqueezeError(f"{what} is not valid UTF-8 text (character {exc.start + 1} is a stray byte or surrogate); "
                           "set your terminal to UTF-8 or pass the text in UTF-8") from None
    return text


def check_question(text, raw: bool, what: str = "the prompt") -> str:
    """check_user_text, and in chat framing a question that is not blank: an empty user turn asks nothing, and the
    model then answered some question of its own. (Raw framing continues the context: whitespace is text there.)"""
    check_user_text(text, what)
    if not raw and not text.strip():
        raise SqueezeError(f"{what} is empty{' (only whitespace)' if text else ''}: the user's turn needs a question; "
                           "pass --prompt TEXT")
    return text


def encode_literal(backend, text: str) -> list:
    """Ids of ``text`` from a ``tokenizers.Tokenizer`` with no special token matched: a document or a question that
    contains "<|im_end|>" or "<|endoftext|>" as characters must not close the user's turn or end the text. Text
    without such strings gets the ids ``encode`` gives (added tokens are split out before pre-tokenization, so
    encoding the user's text and the framing's markers apart changes nothing else)."""
    previous = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        return backend.encode(text, add_special_tokens=False).ids
    finally:
        backend.encode_special_tokens = previous


def finished_text(text: str) -> str:
    """A generation's text without the replacement characters an unfinished multi-byte character leaves at its end
    (the answer stopped between the bytes of one character; its token ids keep them). Streaming holds the same
    characters back, so the streamed text and the returned text agree."""
    return text.rstrip("\ufffd")


class TextStream:
    """Streams a generation's text to ``on_text`` in whole characters: after each token, the new text unless it ends
    inside a multi-byte character (held back until the character is complete); :meth:`finish` then sends what the
    returned text has beyond what was streamed (text held back with a character the answer never finished), so the
    streamed pieces always add up to the returned text."""

    def __init__(self, decode, on_text=None):
        self.decode, self.on_text, self.printed = decode, on_text, ""

    def update(self, tokens) -> None:
        if self.on_text is None:
            return
        text = self.decode(tokens)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            self.on_text(text[len(self.printed):])
            self.printed = text

    def finish(self, tokens) -> str:
        text = finished_text(self.decode(tokens))
        if self.on_text is not None and len(text) > len(self.printed) and text.startswith(self.printed):
            self.on_text(text[len(self.printed):])
            self.printed = text
        return text
