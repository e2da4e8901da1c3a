"""Answer questions with an EXPORTED decoder, exactly as an app does: runtime + numpy + tokenizer, no PyTorch.

    session = DecoderSession("decoder_artifacts", fmt="onnx")      # manifest.json, the artifact, tokenizer.json
    session.attach("manual.pack")                                  # a context pack built for the same model
    result = session.generate("What does section 4 require?")     # greedy, streams with on_text=

The call sequence is the one the manifest documents: the question's prompt, then ``decode`` one token at a time
(cache_len = tokens so far). The prompt goes in as the contract's ``prefill_rows`` / ``prefill_tail`` say (the same rule as the
host's ``squeeze generate --prefill-rows/--prefill-tail``, settings.prefill_chunks): by default ``prefill`` once
with the whole question (n_tokens = its real length, cache_len = 0: one key selection for the question; its tokens
input is the question's length where the manifest gives it a dynamic axis, else padded to the artifact's
max_prompt); a chunk of several tokens is one ``prefill`` call at cache_len = tokens before it, and
a token that selects on its own (the tail, or prefill_rows = 1) is one ``decode`` step (costs a decode step per
such token). With explicit cache I/O (ONNX) this loop writes each step's ``new_keys`` /
``new_values`` into its cache at cache_len; with state held in the runtime (.pte mutable buffers) the runtime
does. A new question starts again at cache_len = 0 (entries past it are masked, nothing needs clearing).
"""

from __future__ import annotations

import json
import numbers
import sys
import time
from pathlib import Path

import numpy as np

from squeeze_mobile.file_kinds import is_plain_file_name

from .errors import SqueezeError, reason_of
from .pack_arrays import artifact_keep_keys, decoder_context_inputs, held_inputs, read_pack_arrays
from .settings import (GenerationResult, check_exact_below, exact_below_label, exact_decode_label, exact_span,
                       prefill_chunks, prompt_is_raw, top_probability)
from .tokenizer import TextStream, check_question, encode_literal

# The decoder manifest's schema. 2: the clustered context rows are two inputs per layer, clustered_keys_l /
# clustered_values_l (1: one clustered_kv_l of [key | value] rows)
SCHEMA = "squeeze-mobile/decoder-manifest/2"
SCHEMA_PREFIX = "squeeze-mobile/decoder-manifest/"

MANIFEST = "manifest.json"
# the methods that attend every fixed-context row (no lookup): the prompt's exact tail, and the split plan's
# one-token copy of it for the answer's opening steps (in-graph plans run those as 1-token prefill_exact calls)
EXACT_METHODS = ("prefill_exact", "decode_exact")


def prompt_selection(contract: dict, prefill_rows: int | None = None, prefill_tail: int | None = None) -> tuple:
    """(prefill_rows, prefill_tail) of a loop over this artifact: the caller's choice, else the contract's (exports
    before these fields: (0, 0), one selection per prompt). Full attention selects nothing: (0, 0)."""
    rows = contract.get("prefill_rows") or 0 if prefill_rows is None else prefill_rows
    tail = contract.get("prefill_tail") or 0 if prefill_tail is None else prefill_tail
    for flag, value in (("--prefill-rows", rows), ("--prefill-tail", tail)):
        if type(value) is not int or value < 0:
            raise SqueezeError(f"{flag} must be a whole number of tokens >= 0; got {value!r}")
    for flag, value in (("--prefill-rows", prefill_rows), ("--prefill-tail", prefill_tail)):
        _refuse_for_full(contract, flag, value)
    return (rows, tail) if contract.get("attention") == "squeezed" else (0, 0)


def _refuse_for_full(contract: dict, flag: str, value) -> None:
    """A prompt-selection option given for a full-attention artifact (it selects nothing) is a one-line error, not
    silently ignored, as the host's `squeeze generate --full` refuses it."""
    if contract.get("attention") == "full" and value:
        raise SqueezeError(f"{flag} shapes Squeezed Attention's key selection and does nothing with a full-attention "
                           "artifact (every key is attended); drop it or pick the squeezed artifact "
                           "(--artifact-attention squeezed)")


def exact_tail_of(contract: dict, exact_tail: int | None = None) -> int:
    """The prompt tokens that run through ``prefill_exact`` (every fixed-context row): the caller's choice, at most
    the artifact's (its method's width), else the contract's (artifacts without the method: 0)."""
    have = contract.get("exact_tail") or 0
    if exact_tail is None:
        return have
    _refuse_for_full(contract, "--exact-tail", exact_tail)
    if type(exact_tail) is not int or not 0 <= exact_tail <= have:
        raise SqueezeError(f"--exact-tail must be a whole number of tokens from 0 to {have} for this artifact (its "
                           f"prefill_exact method's width; re-export with --exact-tail N for more); got {exact_tail!r}")
    return exact_tail


def exact_head_of(contract: dict, exact_head: int | None = None) -> int:
    """The prompt's first tokens that run through ``prefill_exact`` before the rest (settings.exact_span): the caller's
    choice, else the contract's (exports before the field: 0). Needs the artifact's exact method (exact_tail > 0);
    any length (the loop calls the method in pieces of its width)."""
    if exact_head is None:
        if contract.get("attention") != "squeezed":
            return 0
        have = contract.get("exact_head") or 0
        if type(have) is not int or have < 0:
            raise SqueezeError(f"the manifest's decoder.exact_head is {have!r}, not a whole number of tokens >= 0; "
                               "re-export the decoder")
        if have and not contract.get("exact_tail"):
            raise SqueezeError(f"the manifest's decoder.exact_head ({have}) needs the artifact's exact method, which it "
                               "lacks (exact_tail 0); re-export the decoder")
        return have
    _refuse_for_full(contract, "--exact-head", exact_head)
    if type(exact_head) is not int or exact_head < 0:
        raise SqueezeError(f"--exact-head must be a whole number of tokens >= 0; got {exact_head!r}")
    if exact_head:
        _needs_exact_method(contract, f"--exact-head {exact_head}", "runs the prompt's first tokens")
    return exact_head if contract.get("attention") == "squeezed" else 0


def exact_method_of(plan: str | None, methods) -> str:
    """The method the answer's opening steps call: the split plan's one-token stages ``decode_exact_<s>`` where the
    artifact has them, else ``prefill_exact`` with one token (in-graph: its token axis is dynamic; padded elsewhere)."""
    return "decode_exact" if plan == "split" and "decode_exact_0" in (methods or {}) else "prefill_exact"


def exact_decode_of(contract: dict, exact_decode: int | None = None) -> int:
    """The answer's first decode steps that run through the exact method (every fixed-context row): the caller's
    choice, else the contract's (exports before the field: 0). Needs the artifact's exact method (exact_tail > 0)."""
    if exact_decode is None:
        return int(contract.get("exact_decode") or 0)
    _refuse_for_full(contract, "--exact-decode", exact_decode)
    if type(exact_decode) is not int or exact_decode < 0:
        raise SqueezeError(f"--exact-decode must be a whole number of tokens >= 0; got {exact_decode!r}")
    if exact_decode:
        _needs_exact_method(contract, f"--exact-decode {exact_decode}", "runs the answer's first tokens")
    return exact_decode if contract.get("attention") == "squeezed" else 0


def _needs_exact_method(contract: dict, option: str, does: str) -> None:
    """An option that sends decode steps through the artifact's exact method (``option``: the flag and its value;
    ``does``: what it runs there) refused in one line where the artifact has no exact method or holds the prefill's
    selection for the whole answer."""
    if contract.get("attention") == "squeezed" and not contract.get("exact_tail"):
        flag = option.split()[0]
        raise SqueezeError(f"{option} {does} through the artifact's exact method, which this artifact lacks (exported "
                           f"with --exact-tail 0); re-export it with --exact-tail N or pass {flag} 0")
    if contract.get("decode_selection") == "question":
        raise SqueezeError(f"{option.split()[0]} needs an artifact with per-step decode selection (this one holds the "
                           "prefill's selection for the whole answer)")


def exact_below_of(contract: dict, exact_below: float | None = None) -> float:
    """The top-token probability below which a selecting decode step runs again through the exact method: the
    caller's choice, else the contract's (exports before the field: 0, never). Needs the artifact's exact method."""
    if exact_below is None:
        return float(contract.get("exact_below") or 0.0) if contract.get("attention") == "squeezed" else 0.0
    _refuse_for_full(contract, "--exact-below", exact_below)
    exact_below = check_exact_below(exact_below)
    if exact_below:
        _needs_exact_method(contract, f"--exact-below {exact_below:g}", "runs unsure decode steps again")
    return exact_below if contract.get("attention") == "squeezed" else 0.0


def token_range(methods: dict, method: str):
    """(min, max) tokens of a method whose ``tokens`` input the manifest gives a dynamic axis, else None."""
    entry = next((i for i in (methods.get(method) or {}).get("inputs", ()) if i["name"] == "tokens"), None)
    lo_hi = (entry or {}).get("dynamic", {}).get("0")
    if lo_hi is not None and not (isinstance(lo_hi, list) and len(lo_hi) == 2
                                  and all(isinstance(v, int) and not isinstance(v, bool) for v in lo_hi)
                                  and 1 <= lo_hi[0] <= lo_hi[1]):
        raise SqueezeError(f"the manifest's {method} method gives its tokens input a malformed dynamic axis "
                           f"({str(lo_hi)[:60]}; expected [min, max]); re-export the decoder")
    return (int(lo_hi[0]), int(lo_hi[1])) if lo_hi else None


def token_width(methods: dict, method: str, n: int, static: int) -> int:
    """How many token slots a call of ``method`` with ``n`` real tokens feeds: n where the manifest gives the
    method's ``tokens`` input a dynamic axis (raised to its minimum), else the static width (the rest padded)."""
    lo_hi = token_range(methods, method)
    return max(n, lo_hi[0]) if lo_hi and n <= lo_hi[1] else static


def piece_width(methods: dict, method: str, static: int) -> int:
    """The most tokens one call of ``method`` takes: its dynamic axis's max where the manifest gives one (in-graph
    prefill_exact: max_prompt), else its static width (the split plan's stages: exact_tail)."""
    lo_hi = token_range(methods, method)
    return lo_hi[1] if lo_hi else static


def decoder_dir(path) -> Path:
    """The export directory a user named: the directory, or its manifest.json (as `squeeze verify` takes it)."""
    from squeeze_mobile.errors import user_path

    path = user_path(path, "the decoder export folder")
    return path.parent if path.name == MANIFEST and path.is_file() else path


def read_decoder_manifest(directory) -> dict:
    """The manifest.json of a `squeeze export decoder` folder (``directory`` or the manifest itself), checked: it
    exists, is JSON, describes a decoder export of this version's schema (another schema is refused: re-export)
    and names only plain file names inside its folder. Raises SqueezeError with one line otherwise."""
    directory = decoder_dir(directory)
    path = directory / MANIFEST
    if not directory.exists():
        raise SqueezeError(f"{directory} does not exist; pass the folder `squeeze export decoder --out DIR` wrote")
    if directory.exists() and not directory.is_dir():
        raise SqueezeError(f"{directory} is a file, not a decoder export folder; pass the folder `squeeze export "
                           "decoder --out DIR` wrote (or its manifest.json)")
    if not path.is_file():
        raise SqueezeError(f"{directory} has no {MANIFEST}; export a decoder with `squeeze export decoder --out DIR`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8-sig"))   # a byte-order mark is not JSON
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SqueezeError(f"{path} is not valid JSON ({exc}); re-export the decoder") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict) \
            or manifest["model"].get("kind") != "decoder" \
            or not isinstance(manifest.get("artifacts"), list):
        raise SqueezeError(f"{path} does not describe an exported decoder; export one with `squeeze export decoder`")
    if manifest.get("schema") != SCHEMA:
        raise SqueezeError(f"{path} was written by another version of squeeze-mobile (schema {manifest.get('schema')!r}, "
                           f"this version reads {SCHEMA!r}); re-export the decoder into a fresh directory")
    # every file the manifest names is opened inside its directory: a name with a path in it is refused
    names = [a.get("file") for a in manifest["artifacts"] if isinstance(a, dict) and a.get("file") is not None]
    tokenizer = manifest.get("tokenizer")
    if isinstance(tokenizer, dict) and tokenizer.get("file") is not None:
        names.append(tokenizer["file"])
    bad = next((n for n in names if not is_plain_file_name(n)), None)
    if bad is not None:
        raise SqueezeError(f"{path} names a file outside its folder ({str(bad)[:80]!r}); only plain file names are "
                           "read; re-export the decoder")
    for art in manifest["artifacts"]:
        problem = contract_problem(art)
        if problem:
            raise SqueezeError(f"{path} is damaged: {problem}; re-export the decoder")
    return manifest


SHAPE_FIELDS = ("max_context", "max_prompt", "max_new", "sink_tokens", "window", "max_clusters", "max_keep")


def contract_problem(art) -> str | None:
    """What a decoder artifact's manifest record lacks for a loop to run it (the fields every loop reads without a
    default: format, file, decoder.attention / state / shapes / methods), or None. A hand-edited or cut manifest
    was a KeyError traceback in generate, bench and verify."""
    if not isinstance(art, dict):
        return f"an artifact record is a {type(art).__name__}, not an object"
    if "decoder" not in art:
        return None   # a record of no decoder artifact: nothing runs it
    name = art.get("file")
    if not isinstance(name, str) or not isinstance(art.get("format"), str):
        return f"the artifact record {str(name)[:60]!r} has no valid file or format"
    d = art["decoder"]
    if not isinstance(d, dict):
        return f"the record of {name} has no valid decoder section"
    if d.get("attention") not in ("squeezed", "full") or not isinstance(d.get("state"), str):
        return f"the record of {name} has no valid decoder.attention or decoder.state"
    if d["attention"] == "squeezed" and (type(d.get("kv_budget")) not in (int, float) or not 0 < d["kv_budget"] <= 1):
        return f"the record of {name} has no valid decoder.kv_budget"
    shapes = d.get("shapes")
    if not isinstance(shapes, dict):
        return f"the record of {name} has no decoder.shapes"
    bad = [k for k in SHAPE_FIELDS if k in shapes and (type(shapes[k]) is not int or shapes[k] < 0)]
    missing = [k for k in SHAPE_FIELDS[:3] if k not in shapes]
    if bad or missing:
        return f"the record of {name} has no valid decoder.shapes.{(missing + bad)[0]}"
    methods = d.get("methods")
    if not isinstance(methods, dict) or not methods or not all(
            isinstance(m, dict) and isinstance(m.get("inputs"), list) for m in methods.values()):
        return f"the record of {name} has no valid decoder.methods"
    return None


def load_decoder_tokenizer(directory, manifest: dict, check_sha256: bool = True):
    """The ``tokenizers.Tokenizer`` an export wrote beside its artifacts (every loop over them encodes with it), or a
    one-line SqueezeError saying that it is missing, unreadable or (``check_sha256``) not the file the export wrote."""
    from tokenizers import Tokenizer

    directory = decoder_dir(directory)
    section = manifest.get("tokenizer")
    chat = section.get("chat") if isinstance(section, dict) else None
    stops = section.get("stop_token_ids") if isinstance(section, dict) else None
    if not isinstance(section, dict) or not isinstance(section.get("file"), str) or not isinstance(chat, dict) \
            or not all(isinstance(chat.get(k), str) for k in ("prefix", "join", "suffix")) \
            or not isinstance(stops, list) or not all(type(t) is int and t >= 0 for t in stops):
        # (a stop id written as a string never matched a token: the answer ran past its end; the app cores refuse it)
        raise SqueezeError(f"{directory / MANIFEST} has no valid tokenizer section (file, chat prefix / join / suffix "
                           "strings, whole-number stop_token_ids); re-export the decoder")
    path = directory / section["file"]
    if not path.is_file():
        raise SqueezeError(f"the tokenizer {path} is missing; re-export the decoder")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises its own exception types
        raise SqueezeError(f"the tokenizer {path} cannot be read ({reason_of(exc, 160)}); re-export the decoder "
                           f"or check it with `squeeze verify {directory}`") from None
    digest = section.get("sha256")   # recorded since 2026-12-06: an edited vocabulary decodes other digits silently
    if check_sha256 and isinstance(digest, str):
        import hashlib

        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise SqueezeError(f"the tokenizer {path} is not the one the export wrote (its sha256 differs from the "
                               "manifest's); restore it or re-export the decoder")
    return tokenizer


def pick_artifact(manifest: dict, fmt: str | None, attention: str | None, directory, plan: str | None = None,
                  file: str | None = None) -> dict:
    """The manifest record of the decoder artifact to run: the first in the manifest's order that matches the
    given format, attention ('squeezed' / 'full'), lookup plan and file name (None = any), artifacts this machine's
    runtime runs first (a .pte for the Core ML delegate only on Apple platforms). Raises SqueezeError naming the
    formats the folder has when none matches."""
    usable = [a for a in manifest["artifacts"] if isinstance(a, dict) and a.get("file") and "decoder" in a]
    if file:
        usable = [a for a in usable if a["file"] == file]
    if fmt:
        usable = [a for a in usable if a.get("format") == fmt]
    if attention:
        usable = [a for a in usable if a["decoder"].get("attention") == attention]
    if plan:
        usable = [a for a in usable if a["decoder"].get("lookup_plan", "in-graph") == plan]
    # artifacts this machine's runtime runs first (a .pte for the Core ML delegate runs on Apple platforms only)
    usable.sort(key=lambda a: a.get("pte_backend") == "coreml" and sys.platform != "darwin")
    if not usable:
        have = sorted({" ".join((a.get("format"), a["decoder"].get("attention") or "?",
                                 a["decoder"].get("lookup_plan", "in-graph") + "-plan"))
                       for a in manifest["artifacts"] if isinstance(a, dict) and a.get("file") and "decoder" in a
                       and isinstance(a.get("format"), str) and isinstance(a["decoder"], dict)})
        what = " ".join(w for w in (fmt, attention, plan and f"{plan}-plan", file) if w)
        raise SqueezeError(f"{directory} holds no {what + ' ' if what else ''}decoder artifact (it has: "
                           f"{', '.join(have) or 'none'}); pick one of those with --format, --artifact-attention and "
                           "--lookup-plan, or export it")
    return usable[0]


def prompt_token_ids(tokenizer, chat: dict, framing: str, prompt: str, raw: bool | None = None) -> list:
    """The ids an exported decoder's loop prefills for ``prompt`` after a pack of ``framing`` ("chat" / "raw"):
    the user's text encoded literally (a written <|im_end|> stays text), in chat framing after the manifest's
    ``join`` and before its ``suffix`` (the assistant cue, whose markers are special tokens)."""
    raw = prompt_is_raw(framing, raw)
    check_question(prompt, raw)
    if raw:
        return encode_literal(tokenizer, prompt)
    return encode_literal(tokenizer, chat["join"] + prompt) + tokenizer.encode(chat["suffix"], add_special_tokens=False).ids


class GenerationLoop:
    """The call sequence of the runtime contract over any runner with ``run(method, feed)``: the exported
    artifact in its runtime, or (for reference logits) the same graph in PyTorch."""

    def __init__(self, runner, contract: dict, pack, context_inputs: dict, prefill_rows: int | None = None,
                 prefill_tail: int | None = None, exact_tail: int | None = None, exact_decode: int | None = None,
                 exact_below: float | None = None, exact_head: int | None = None):
        self.runner, self.contract, self.pack, self.context = runner, contract, pack, context_inputs
        self.shapes, self.attention, self.state = contract["shapes"], contract["attention"], contract["state"]
        self.prefill_rows, self.prefill_tail = prompt_selection(contract, prefill_rows, prefill_tail)
        self.exact_tail = exact_tail_of(contract, exact_tail)
        self.exact_head = exact_head_of(contract, exact_head)
        # the answer's first exact_decode decode steps attend every fixed-context row: a 1-token prefill_exact call
        # (in-graph: its token axis is dynamic), or the split plan's one-token stages decode_exact_<s> where exported
        self.exact_decode = exact_decode_of(contract, exact_decode)
        self.exact_method = exact_method_of(contract.get("lookup_plan"), contract.get("methods"))
        # a selecting decode step whose top token is less likely than exact_below runs again through the exact method
        # (the same cache slot: its rows are overwritten); the exact step's logits and pointer are kept
        self.exact_below = exact_below_of(contract, exact_below)
        self.rerun_at = []          # the decode steps (0-based) of the last answer that ran again
        self.keep_keys = None
        self.lookup_seconds = 0.0   # the split plan's CPU lookup (0 in-graph: the runtime's profiler has it)
        # decode_selection "question": the prefill returns its selection; decode steps take the rows it selects
        self.question = contract.get("decode_selection") == "question"
        self.held = None
        self.hold_seconds = 0.0     # building the held inputs once per question (question-level selection)
        self._reshape = {}          # per method: context inputs it declares in another shape (views: _shaped)
        if self.attention == "squeezed":
            self.keep_keys = artifact_keep_keys(pack, self.shapes, contract["kv_budget"])
            self.kept_fraction = self.keep_keys / int(pack.arrays["lookup.labels"].shape[-1])
        # follow_keys F: every call returns the rows its last token points the next step to (in-graph: follow_out;
        # split: the stages' follow_weights ranked on the CPU); decode feeds them back (follow_rows) and selects F
        # keys fewer (SelectionSpec.follow_keys). The graph's F is the artifact's; it is used where the pack's
        # keep_keys reaches follow_min_keep (settings.default_follow_keys), else the loop follows none (follow_rows
        # -1, keep_keys as is: the F = 0 rule in the same graph).
        self.graph_follow = int(contract.get("follow_keys") or 0) if self.attention == "squeezed" else 0
        self.follow = self.graph_follow if self.graph_follow and self.keep_keys >= int(
            contract.get("follow_min_keep") or 0) else 0
        if self.follow and self.follow >= self.keep_keys:   # the host's rule (generation.make_context refuses it)
            raise SqueezeError(f"this artifact follows {self.follow} keys per decode step but the pack keeps only "
                               f"{self.keep_keys} keys per head at its KV budget, so none would be selected; use a "
                               "pack of a longer context or an artifact exported with fewer --follow-keys")
        self.pointer = None
        self.selected = False       # whether a call of the last question selected (its kept_fraction means something)
        self.prompting = False      # the prompt's calls (a 1-token chunk runs as decode) never follow: the host's
        if self.graph_follow:       # prompt is its first call per layer
            from .pack_arrays import next_rows

            self.context = {**self.context, **next_rows(pack, self.shapes)}

    def new_cache(self):
        if self.state != "io":
            return None
        L, H, _, D = self.pack.arrays["kv.keys"].shape
        shape = (L, H, self.shapes["max_prompt"] + self.shapes["max_new"], D)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    @property
    def split(self) -> bool:
        return self.contract.get("lookup_plan") == "split"

    def step(self, method: str, tokens: list, cache_len: int, cache):
        """One call of ``method`` over ``tokens`` at ``cache_len``: the logits of its last token (the cache written).
        Logits that are not finite are one line: a damaged artifact computes NaN, and argmax(NaN) is token 0, which
        is a stop token (an empty answer, exit 0)."""
        logits = self._step(method, tokens, cache_len, cache)
        if not np.isfinite(logits).all():
            raise SqueezeError(f"the artifact computed logits that are not finite (NaN or infinite) in its {method} "
                               "call: the file is probably damaged or changed since the export; check the folder with "
                               "`squeeze verify`")
        return logits

    def _step(self, method: str, tokens: list, cache_len: int, cache):
        if self.attention == "squeezed" and method not in EXACT_METHODS:
            self.selected = True   # this call selects kept keys (prefill_exact / decode_exact attend every row)
        if self.split:
            return self._split_step(method, tokens, cache_len, cache)
        width = token_width(self.contract.get("methods") or {}, method, len(tokens), self.static_width(method))
        feed = {"tokens": np.zeros(width, dtype=np.int64), "n_tokens": np.array([len(tokens)], dtype=np.int64),
                "cache_len": np.array([cache_len], dtype=np.int64),
                "context_len": np.array([self.pack.num_tokens], dtype=np.int64)}
        feed["tokens"][:len(tokens)] = tokens
        if self.attention == "squeezed":
            follows = self.follow and method == "decode" and not self.prompting
            feed["keep_keys"] = np.array([self.keep_keys - (self.follow if follows else 0)], dtype=np.int64)
            if self.graph_follow:  # every method's inputs take them
                for li, rows in enumerate(self._fed_pointer(follows, self.graph_follow)):
                    feed[f"follow_rows_{li}"] = rows
        if self.state == "io":
            for li in range(cache[0].shape[0]):  # one input per layer: views of the loop's [L, ...] cache
                feed[f"past_keys_{li}"], feed[f"past_values_{li}"] = cache[0][li], cache[1][li]
        if self.question and method == "decode":
            if self.held is None:
                raise SqueezeError("a question-level decoder decodes after its prefill (the prefill selects the rows)")
            feed.update(self.held)
        else:
            feed.update(self.context)
        out = self.runner.run(method, self._shaped(method, feed))
        if self.follow:
            self.pointer = np.asarray(out["follow_out"], dtype=np.int64)
        if self.question and method == "prefill":
            t0 = time.perf_counter()
            self.held = held_inputs(out["selection_rows"], out["selection_bias"], self.context, self.shapes)
            self.hold_seconds = time.perf_counter() - t0
        if self.state == "io":
            n = len(tokens)
            cache[0][:, :, cache_len:cache_len + n] = out["new_keys"][:, :, :n]
            cache[1][:, :, cache_len:cache_len + n] = out["new_values"][:, :, :n]
        return np.asarray(out["logits"]).reshape(-1)

    def _fed_pointer(self, follows: bool, width: int):
        """The followed rows a call feeds, [L, Hkv, width] flat clustered rows: the previous call's pointer on a
        decode step that follows, else -1 (none)."""
        if follows and self.pointer is not None:
            return self.pointer
        L, hkv = self.pack.arrays["kv.keys"].shape[:2]
        return np.full((L, hkv, width), -1, dtype=np.int64)

    def static_width(self, method: str) -> int:
        """Token slots of a method's static shape: prefill max_prompt, prefill_exact exact_tail, decode (and
        decode_exact) 1."""
        return {"prefill": self.shapes["max_prompt"], "prefill_exact": self.contract.get("exact_tail") or 0}.get(method, 1)

    def _shaped(self, method: str, feed: dict) -> dict:
        """The feed with every input a method declares in another shape of the same size given as a view in that
        shape (prefill_exact reads the flat clustered tables per KV head: [Hkv, Nc, D] views of the same rows)."""
        if method not in self._reshape:
            declared = (self.contract.get("methods") or {}).get(method, {}).get("inputs", ())
            self._reshape[method] = {i["name"]: tuple(i["shape"]) for i in declared
                                     if isinstance(i, dict) and "dynamic" not in i and i.get("name") in self.context
                                     and tuple(i.get("shape", ())) != np.shape(self.context[i["name"]])}
        for name, shape in self._reshape[method].items():
            value = feed[name]
            if int(np.prod(shape)) != int(np.size(value)):
                raise SqueezeError(f"the pack's {name} has shape {tuple(np.shape(value))} but method {method} takes "
                                   f"{list(shape)}; re-export the decoder with this project's version")
            feed[name] = value.reshape(shape)
        return feed

    def _split_step(self, method: str, tokens: list, cache_len: int, cache):
        """The split plan: graphs ``<method>_0 .. <method>_L`` with the CPU lookup (lookup_numpy.kept_rows)
        between them; each stage's new keys/values are written into the cache at cache_len. ``prefill_exact``'s
        stages take every clustered row instead ([Hkv, max_clustered, D] views of the pack's tables): no lookup.
        Followed keys: decode's lookup keeps F fewer and writes the previous call's pointer rows into free slots;
        every stage after a layer returns follow_weights, ranked here into that layer's next pointer."""
        from .lookup_numpy import follow_pointer, kept_rows

        exact = method in EXACT_METHODS
        F = self.follow
        follows = F and method == "decode" and not self.prompting
        keep = self.keep_keys - (F if follows else 0)
        slot_rows = [None] * cache[0].shape[0]
        fed = self._fed_pointer(follows, F) if F else None        # the followed rows this step attends
        pointer = np.full_like(fed, -1) if F else None             # the rows the next step follows, layer by layer
        width = self.static_width(method)
        n = len(tokens)
        padded = np.zeros(width, dtype=np.int64)
        padded[:n] = tokens
        base = {"n_tokens": np.array([n], dtype=np.int64), "cache_len": np.array([cache_len], dtype=np.int64),
                "context_len": np.array([self.pack.num_tokens], dtype=np.int64)}
        ctx, layers = self.context, cache[0].shape[0]
        first = {"tokens": padded} if exact else {"tokens": padded, "next_centroids": ctx["centroids_0"],
                                                   "next_counts": ctx["counts_0"]}
        out = self.runner.run(f"{method}_0", {**base, **first})
        for stage in range(1, layers + 1):
            li = stage - 1
            cache[0][li, :, cache_len:cache_len + n] = out["key"][:, :n]
            cache[1][li, :, cache_len:cache_len + n] = out["value"][:, :n]
            feed = {**base, "hidden": out["hidden"], "query": out["query"], "key": out["key"], "value": out["value"],
                    "past_keys": cache[0][li], "past_values": cache[1][li], "sink_kv": ctx[f"sink_kv_{li}"],
                    "window_kv": ctx[f"window_kv_{li}"], "counts": ctx[f"counts_{li}"]}
            if exact:
                hkv = cache[0].shape[1]
                feed["clustered_keys"] = ctx[f"clustered_keys_{li}"].reshape(hkv, -1, cache[0].shape[-1])
                feed["clustered_values"] = ctx[f"clustered_values_{li}"].reshape(hkv, -1, cache[0].shape[-1])
                if F:
                    width = feed["clustered_keys"].shape[1]
                    slot_rows[li] = np.arange(hkv * width, dtype=np.int64).reshape(hkv, width)
            else:
                t0 = time.perf_counter()
                looked = kept_rows(out["scores"], ctx[f"counts_{li}"], ctx[f"cluster_start_{li}"],
                                   ctx[f"clustered_keys_{li}"], ctx[f"clustered_values_{li}"], keep,
                                   self.shapes["max_keep"],
                                   follow_rows=fed[li] if F else None)
                feed["kept_keys"], feed["kept_values"], feed["kept_bias"] = looked[:3]
                if F:
                    slot_rows[li] = looked[3]
                self.lookup_seconds += time.perf_counter() - t0
                feed["centroids"], feed["value_centroids"] = ctx[f"centroids_{li}"], ctx[f"value_centroids_{li}"]
                if stage < layers:
                    feed["next_centroids"], feed["next_counts"] = ctx[f"centroids_{stage}"], ctx[f"counts_{stage}"]
            out = self.runner.run(f"{method}_{stage}", feed)
            if F:
                t0 = time.perf_counter()
                pointer[li] = follow_pointer(out["follow_weights"], slot_rows[li], ctx[f"next_rows_{li}"], F)
                self.lookup_seconds += time.perf_counter() - t0
        if F:
            self.pointer = pointer
        return np.asarray(out["logits"]).reshape(-1)

    def prompt(self, ids: list, cache):
        """Run the question's tokens (cache_len 0) with the contract's prompt selection; the last token's logits. The
        first ``exact_head`` tokens are ``prefill_exact`` calls (every fixed-context row; pieces of the method's width)
        before the others, the last ``exact_tail`` one ``prefill_exact`` call after them (settings.exact_span)."""
        head, start = exact_span(len(ids), self.exact_head, self.exact_tail)
        if start == head:   # no row selects: the whole prompt is one exact run (as few calls as the width allows)
            head = start = len(ids)
        chunks = [(head + a, head + b) for a, b in prefill_chunks(start - head, self.prefill_rows, self.prefill_tail)]
        # the most tokens one prefill_exact call takes (exact_head_of: the method exists where head > 0)
        width = piece_width(self.contract.get("methods") or {}, "prefill_exact", self.static_width("prefill_exact"))
        logits = None
        self.prompting = True
        try:
            for a in range(0, head, width or 1):
                logits = self.step("prefill_exact", ids[a:min(head, a + width)], a, cache)
            for a, b in chunks:
                # a 1-token chunk is a decode step (its one selection is that token's), except where decode needs
                # the prefill's held selection (question-level)
                method = "decode" if b - a == 1 and len(chunks) > 1 and not self.question else "prefill"
                logits = self.step(method, ids[a:b], a, cache)
            if start < len(ids):
                logits = self.step("prefill_exact", ids[start:], start, cache)
        finally:
            self.prompting = False
        return logits

    def check_request(self, prompt_tokens: int, max_new_tokens) -> int:
        """``max_new_tokens`` as an int, once it is a whole number and the prompt and answer fit the exported cache
        (greedy checks it; DecoderSession also before a deferred runtime load)."""
        if not isinstance(max_new_tokens, numbers.Integral) or isinstance(max_new_tokens, bool):
            raise SqueezeError(f"--max-new-tokens (max_new_tokens) must be a whole number >= 1; got {max_new_tokens!r}")
        self.check_lengths(prompt_tokens, int(max_new_tokens))
        return int(max_new_tokens)

    def check_lengths(self, prompt_tokens: int, max_new_tokens: int) -> None:
        s = self.shapes
        if not prompt_tokens:
            raise SqueezeError("the prompt is empty; pass --prompt TEXT")
        if prompt_tokens > s["max_prompt"]:
            raise SqueezeError(f"the prompt is {prompt_tokens} tokens but this decoder was exported for at most "
                               f"{s['max_prompt']}; shorten it or re-export with --max-prompt {prompt_tokens}")
        room = s["max_prompt"] + s["max_new"] - prompt_tokens
        if not 1 <= max_new_tokens <= room:
            raise SqueezeError(f"--max-new-tokens (max_new_tokens) must be between 1 and {room} for this prompt (the exported decoder's "
                               f"cache holds {s['max_prompt'] + s['max_new']} tokens)")

    def unsure(self, logits) -> bool:
        """Whether a selecting decode step's ``logits`` leave its top token less likely than exact_below: the step
        then runs again through the exact method (greedy; the bench times both calls)."""
        return bool(self.attention == "squeezed" and self.exact_below and top_probability(logits) < self.exact_below)

    def greedy(self, ids: list, max_new_tokens: int, forced: list | None = None, stop_ids=(), on_token=None,
               rerun_at=None):
        """Prefill ``ids`` then decode greedily (or along ``forced`` tokens). Returns (tokens, logits per step).
        ``rerun_at``: the decode steps to run again exactly, in place of the exact_below rule (verification replays
        another loop's decisions, so both compare the same calls)."""
        max_new_tokens = self.check_request(len(ids), max_new_tokens)
        cache = self.new_cache()
        self.lookup_seconds = 0.0
        self.selected = False
        t0 = time.perf_counter()
        logits = self.prompt(list(ids), cache)
        self.prefill_seconds = time.perf_counter() - t0
        tokens, all_logits = [], []
        t1 = time.perf_counter()
        self.decode_steps = 0
        self.rerun_at = []
        for i in range(max_new_tokens):
            all_logits.append(logits)
            token = int(np.argmax(logits)) if forced is None else int(forced[i])
            if token in stop_ids:
                break
            tokens.append(token)
            if on_token is not None:
                on_token(tokens)
            if len(tokens) == max_new_tokens or (forced is not None and len(tokens) == len(forced)):
                break
            # the answer's opening (exact_decode): its first steps attend every fixed-context row, then steps select
            method = self.exact_method if self.decode_steps < self.exact_decode else "decode"
            logits = self.step(method, [token], len(ids) + len(tokens) - 1, cache)
            if method == "decode" and (self.decode_steps in rerun_at if rerun_at is not None else self.unsure(logits)):
                logits = self.step(self.exact_method, [token], len(ids) + len(tokens) - 1, cache)
                self.rerun_at.append(self.decode_steps)
            self.decode_steps += 1
        self.decode_seconds = time.perf_counter() - t1
        return tokens, all_logits


class DecoderSession:
    """An exported decoder loaded in its runtime, plus the tokenizer and (after ``attach``) one context pack."""

    def __init__(self, directory, fmt: str | None = None, threads: int | None = None, attention: str | None = None,
                 plan: str | None = None, prefill_rows: int | None = None, prefill_tail: int | None = None,
                 exact_tail: int | None = None, file: str | None = None, exact_decode: int | None = None,
                 exact_below: float | None = None, load: bool = True, exact_head: int | None = None):
        """``load=False`` checks everything that needs no runtime (manifest, artifact, tokenizer, options) and loads
        the runtime at the first ``generate``, after the pack and the prompt are checked: a wrong pack or a prompt
        too long is refused without the runtime's load (10-20 s for a real model); the load is never timed."""
        from export.backends import get_backend

        if threads is not None and (not isinstance(threads, numbers.Integral) or isinstance(threads, bool)
                                    or not 1 <= threads <= 256):
            raise SqueezeError(f"threads must be a whole number from 1 to 256 (or None: the runtime's choice); "
                               f"got {threads!r}")
        threads = None if threads is None else int(threads)
        self.directory = decoder_dir(directory)
        self.manifest = read_decoder_manifest(self.directory)
        self.artifact = pick_artifact(self.manifest, fmt, attention, self.directory, plan, file)
        self.contract = self.artifact["decoder"]
        self.tokenizer = load_decoder_tokenizer(self.directory, self.manifest)
        self.chat = self.manifest["tokenizer"]["chat"]
        self.stop_ids = set(self.manifest["tokenizer"]["stop_token_ids"])
        path = self.directory / self.artifact["file"]
        if not path.exists():
            raise SqueezeError(f"the artifact {path} is missing; re-export the decoder")
        expected = self.artifact.get("bytes")
        if path.is_file() and isinstance(expected, int) and path.stat().st_size != expected:
            raise SqueezeError(f"the artifact {path} holds {path.stat().st_size} bytes, not the {expected} its manifest "
                               f"records (damaged or replaced); re-export the decoder or run `squeeze verify "
                               f"{self.directory}`")
        self.backend = get_backend(self.artifact["format"])
        reason = self.backend.cannot_run_here(self.artifact)
        if reason:
            raise SqueezeError(f"{self.artifact['file']} cannot run here: {reason}; pick another artifact with --format")
        self.prefill_rows, self.prefill_tail = prompt_selection(self.contract, prefill_rows, prefill_tail)  # checked now
        self.exact_tail = exact_tail_of(self.contract, exact_tail)
        self.exact_head = exact_head_of(self.contract, exact_head)
        self.exact_decode = exact_decode_of(self.contract, exact_decode)
        self.exact_below = exact_below_of(self.contract, exact_below)
        self.loop = None
        self.runner, self._threads = None, threads
        if load:
            self.load()

    def load(self) -> None:
        """Load the artifact into its runtime (done by the constructor unless ``load=False``; then by the first
        ``generate``)."""
        self._check_open()
        if self.runner is not None:
            return
        from export.quiet import quiet

        path = self.directory / self.artifact["file"]
        try:
            with quiet():  # the runtimes' import and load chatter (ExecuTorch: cpuinfo, torchao, pytree notes)
                self.runner = self.backend.load_program(path, self.contract["methods"], self._threads)
        except SqueezeError:
            raise
        except Exception as exc:  # noqa: BLE001 - runtimes raise their own types for unreadable files
            raise SqueezeError(f"{self.backend.runtime} cannot load {path} ({reason_of(exc, 160)}); re-export the decoder "
                               f"or check it with `squeeze verify {self.directory}`") from None
        if self.loop is not None:
            self.loop.runner = self.runner

    def attach(self, pack_path, context_text: str | None = None) -> None:
        """Load a context pack for the next questions (checked against the artifact's model and shapes, and with
        ``context_text`` against the text it was built from)."""
        self._check_open()
        pack = read_pack_arrays(pack_path)
        if context_text is not None:
            pack.check_context(context_text)
        model = self.manifest["model"]
        pack.check_model(model.get("weights_sha256"), model.get("tokenizer_sha256"))
        context = decoder_context_inputs(pack, self.contract["shapes"], self.contract["attention"])
        self.loop = GenerationLoop(self.runner, self.contract, pack, context, self.prefill_rows, self.prefill_tail,
                                   self.exact_tail, self.exact_decode, self.exact_below, self.exact_head)

    def prompt_ids(self, prompt: str, raw: bool | None = None) -> list:
        if self.loop is None:
            raise SqueezeError("no context pack attached; call attach(PACK) (CLI: --context-pack PACK)")
        return prompt_token_ids(self.tokenizer, self.chat, self.loop.pack.settings.get("framing", "chat"), prompt, raw)

    def generate(self, prompt: str, max_new_tokens: int = 64, raw: bool | None = None, on_text=None,
                 stop_at_eos: bool = True) -> GenerationResult:
        self._check_open()
        if self.loop is None:
            raise SqueezeError("no context pack attached; call attach(PACK) (CLI: --context-pack PACK)")
        ids = self.prompt_ids(prompt, raw)
        if self.runner is None:   # deferred load: the prompt's length and the answer's room are checked first
            self.loop.check_request(len(ids), max_new_tokens)
            self.load()
        streamed = TextStream(lambda tokens: self.tokenizer.decode(tokens, skip_special_tokens=True), on_text)
        tokens, _ = self.loop.greedy(ids, max_new_tokens, stop_ids=self.stop_ids if stop_at_eos else (),
                                     on_token=streamed.update if on_text else None)
        loop = self.loop
        label = "full" if loop.attention == "full" else f"squeezed top-k, KV budget {self.contract['kv_budget']:g}" + (
            exact_decode_label(loop.exact_decode) + exact_below_label(loop.exact_below))
        return GenerationResult(
            text=streamed.finish(tokens), token_ids=tokens,
            prompt_tokens=len(ids),
            context_tokens=loop.pack.num_tokens, prefill_seconds=loop.prefill_seconds,
            decode_seconds=loop.decode_seconds, decode_tokens=loop.decode_steps, attention=label,
            # no call selected (the prompt's exact tail attends every context key, no decode step ran): no kept
            # fraction or KV budget to report, as on the host
            runtime=self.backend.runtime, kept_fraction=getattr(loop, "kept_fraction", None) if loop.selected else None,
            kv_budget=self._kv_budget_kept() if loop.selected else None, lookup=(("split: numpy between the graphs" if loop.split else "in-graph")
                                                                 if loop.attention == "squeezed" else None),
            follow_keys=int(loop.follow) if loop.attention == "squeezed" else None,
            exact_decode=int(loop.exact_decode) if loop.attention == "squeezed" else None,
            exact_below=loop.exact_below if loop.attention == "squeezed" else None,
            rerun_steps=len(loop.rerun_at) if loop.attention == "squeezed" else None)

    def _kv_budget_kept(self) -> float:
        """The KV budget the artifact's selecting calls kept on this pack, as the host counts it: its kept-key count
        per head (the budget less the pack's centroid bytes, rounded to whole keys) over the clustered keys, plus the
        centroids' bytes. Every selecting call keeps that many, so it is what ran, not the manifest's nominal value."""
        from .pack_arrays import centroid_cost

        if getattr(self.loop, "kept_fraction", None) is None:
            return self.contract.get("kv_budget")
        settings, keys = self.loop.pack.settings, self.loop.pack.arrays["kv.keys"]
        return float(self.loop.kept_fraction + centroid_cost(float(settings["centroid_fraction"]), int(keys.shape[-1])))

    def close(self) -> None:
        """Release the runtime's session; the object answers nothing after it (a SqueezeError says so)."""
        if not getattr(self, "closed", False) and getattr(self, "runner", None) is not None:
            self.runner.close()
        self.closed = True   # (the loop's record of the last answer stays readable)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def _check_open(self) -> None:
        if getattr(self, "closed", False):
            raise SqueezeError("this DecoderSession is closed; open a new one (DecoderSession(DIR))")


__all__ = ["DecoderSession", "GenerationLoop", "load_decoder_tokenizer", "prompt_token_ids", "read_decoder_manifest"]
