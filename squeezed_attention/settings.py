"""Settings and constants of context packs and attention choices, importable without PyTorch (the CLI's parser
and the torch-free answer path read them)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from .errors import SqueezeError

DEFAULT_KV_BUDGET = 0.125  # the paper's accounting; with 10% int8 key + value centroids it keeps 0.073 of the keys
MODES = ("full", "top-k", "threshold")
# How a question's prompt attends the fixed context in its prefill (squeezed_attention/RESULTS.md 3h): its last
# DEFAULT_EXACT_TAIL tokens attend EVERY context key (no lookup: the question's own words, whose keys and values every
# later layer and every answer token read); the tokens before them select their keys, in one selection
# (prefill_rows = 0) or one per chunk of prefill_rows tokens, the last prefill_tail of them one token at a time.
# Held-out split at 2k, KV budget 0.125 (13 pass-key cases full attention answers): the previous default (the last
# 16 tokens selecting per token) answered 7, an exact tail of 16 answered 9, 32 answered 10 (as many as a fully exact
# prefill); decode steps select, except the answer's first DEFAULT_EXACT_DECODE (below). The exact rows do full
# attention's per-token work, which on the host costs
# ~150 ms of an 8k host prefill (8k, 128-token prompt, 2 threads: 461 ms vs 311 ms for one selection, full attention
# 601 ms; RESULTS.md 3m corrects 3h's timing); the tail is bounded so a long prompt pays for 32 tokens only.
DEFAULT_PREFILL_ROWS = 0
DEFAULT_PREFILL_TAIL = 0
DEFAULT_EXACT_TAIL = 32
# The prompt's first DEFAULT_EXACT_HEAD tokens attend every context key as well (RESULTS.md 3za, 3zb). A question
# written before a long instruction has its words before the exact tail (3z: 4 of 8 lost at both budgets with the
# tail alone); a question between a preamble and an instruction has them in the middle (3zb: with a 16-token head,
# 5 of the 9 such dev cases full attention answered; a selection keeping half the keys answered no more, an exact
# prompt all 9). The question's own keys and values, written in the prefill, are what every answer token reads, so
# the prompt attends exactly: DEFAULT_EXACT_HEAD is the exported decoders' default --max-prompt, and with the tail
# every prompt of up to 160 tokens attends every context key (the rows of a longer host prompt between head and tail
# select once). The lookup then serves the answer's decode steps; `--exact-head 16` restores the faster prefill of
# 2026-12-07 (prompts of up to 48 tokens exact) for users who measure that their prompts allow it.
DEFAULT_EXACT_HEAD = 128
# The answer's first decode steps attend every context key too (RESULTS.md 3r): every held-out miss of the default
# lost the value at its first answer token, 1-10 tokens into the answer (it restates the question first). 16 was
# chosen from the divergence positions on seeds 2-3, then run once on seeds 4-5: 19/19 of full attention's answers
# at KV budgets 0.225 and 0.125 (19 and 17 without). Costs full attention's per-token work for those steps (host, 8k:
# 1.35x instead of 1.81x faster than full attention over a 64-token answer). Exported decoders record it
# (contract exact_decode) and the loops (Python, Kotlin, Swift) run those steps through the exact method.
DEFAULT_EXACT_DECODE = 16
# A selecting decode step whose most likely token has a probability below DEFAULT_EXACT_BELOW is run again attending
# every context key, and the exact step's logits (and cache rows) are the ones kept (RESULTS.md 3u). On the dev split
# at 4k, KV budget 0.125, every selecting step whose top token differed from full attention's was unsure (top
# probability 0.06-0.42: near-ties the dropped keys decide): in prose continuations 0.2 re-runs 16% of the steps and
# lifts top-1 agreement from 96.5% to ~98.6%; in answers it re-runs 4.5% (0.5 would re-run 24% of answer steps,
# which costs what the selection saves). 0 turns it off.
DEFAULT_EXACT_BELOW = 0.2
# Decode steps (RESULTS.md 3m): of each step's kept keys per selecting head, DEFAULT_FOLLOW_KEYS are the positions
# right after the clustered keys the previous row weighed most (an answer copied from the context is read in order;
# a cluster rule alone loses the next token of a copy). Held-out split, KV budget 0.125, 2k: 14 of the 15 cases full
# attention answers (12 without), continuation KL 0.041 -> 0.013 on one of the two seeds, no case lost. Applies to
# top-k selection per step when the budget keeps at least FOLLOW_MIN_KEYS_PER_FOLLOWED keys per followed key.
DEFAULT_FOLLOW_KEYS = 4
FOLLOW_MIN_KEYS_PER_FOLLOWED = 8


def exact_decode_label(n: int) -> str:
    """The attention label's note on the answer's exact opening steps: nothing for the default."""
    if n == DEFAULT_EXACT_DECODE:
        return ""
    return f", exact first {n} answer tokens" if n else ", every answer token selects"


def exact_below_label(p: float) -> str:
    """The attention label's note on the unsure steps' exact re-run: nothing for the default."""
    if p == DEFAULT_EXACT_BELOW:
        return ""
    return f", unsure steps (top token below {p:g}) re-run exactly" if p else ", unsure steps not re-run"


def check_exact_below(p) -> float:
    """A probability in [0, 1) (0: off), as a float; else one line saying what is expected."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise SqueezeError(f"--exact-below must be a probability from 0 (off) to below 1; got {p!r}")
    return float(p)


def top_probability(logits) -> float:
    """The softmax probability of the most likely token of a logits vector (numpy or torch), in float64."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    return float(1.0 / np.exp(z - z.max()).sum())


def follow_min_keep(follow_keys: int) -> int:
    """The fewest kept keys per head at which the default rule follows ``follow_keys`` keys (exported decoders record
    it as follow_min_keep)."""
    return FOLLOW_MIN_KEYS_PER_FOLLOWED * follow_keys


def default_follow_keys(budget_keys: int) -> int:
    """follow_keys when not given: DEFAULT_FOLLOW_KEYS, or 0 where the budget keeps too few keys to spare them."""
    return DEFAULT_FOLLOW_KEYS if budget_keys >= follow_min_keep(DEFAULT_FOLLOW_KEYS) else 0


def exact_start(tokens: int, exact_tail: int) -> int:
    """Where the prompt's exactly attending tail starts (tokens before it select their keys)."""
    return max(0, tokens - exact_tail)


def exact_span(tokens: int, exact_head: int, exact_tail: int) -> tuple:
    """(head_end, tail_start) of a prompt of ``tokens`` tokens: its rows [0, head_end) and [tail_start, tokens) attend
    every context key, the rows between them select (none when the head and tail cover the prompt)."""
    head_end = min(tokens, max(0, exact_head))
    return head_end, max(head_end, exact_start(tokens, exact_tail))


def prefill_chunks(tokens: int, rows: int, tail: int = 0) -> list:
    """[(start, end)] of the prompt's selection chunks: the last ``tail`` tokens one chunk each (they select per
    token), the tokens before them in chunks of ``rows`` cut from the end (the first may be shorter; 0 = one chunk),
    so the tokens that produce the answer select on their own or together."""
    head = max(0, tokens - tail)
    if rows <= 0:
        chunks = [(0, head)] if head else []
    else:
        ends = list(range(head, 0, -rows))[::-1]
        chunks = [(max(0, e - rows), e) for e in ends]
    return chunks + [(i, i + 1) for i in range(head, tokens)]

PACK_FORMAT = "squeeze-context-pack/2"
KEEP_FRACTION_GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))
THRESHOLD_KEEP_RANGE = (KEEP_FRACTION_GRID[0], KEEP_FRACTION_GRID[-1])  # what threshold mode is calibrated for
MIN_CLUSTERED_TOKENS = 16


@dataclass
class BuildSettings:
    # Level-2 clusters per clustered key. The paper uses 5% fp16 centroids; 10% int8 centroids cost the same
    # bytes and, on SmolLM2-135M, kept pass keys that 5% lost at 4k and 8k tokens (squeezed_attention/RESULTS.md).
    centroid_fraction: float = 0.10
    hierarchical: bool = False
    level1_fraction: float = 0.01        # level-1 clusters per clustered key (paper: 1%)
    observation_window: int = 100        # last tokens: never clustered, always attended, used to calibrate
    sink_tokens: int = 4                 # first tokens: never clustered, always attended (attention sinks)
    seed: int = 0
    kmeans_iterations: int = 12
    framing: str = "chat"                # "chat": context is the start of one user turn; "raw": plain text
    prefill_chunk: int = 1024

    # field -> (CLI flag or None, lowest, highest): the accepted ranges, checked on construction
    INT_RANGES = {"observation_window": ("--observation-window", 1, 8192), "sink_tokens": (None, 0, 1024),
                  "seed": ("--seed", 0, 2**32 - 2), "kmeans_iterations": (None, 1, 1000),
                  "prefill_chunk": (None, 1, 1 << 16)}
    MAX_CENTROID_FRACTION = 0.5

    def __post_init__(self):
        plain_numbers(self, self.INT_RANGES, ("centroid_fraction", "level1_fraction"))

        def name(field, flag):
            return f"{flag} ({field})" if flag else field

        for field, (flag, lo, hi) in self.INT_RANGES.items():
            value = getattr(self, field)
            if type(value) is not int or not lo <= value <= hi:
                raise SqueezeError(f"{name(field, flag)} must be an integer in [{lo}, {hi}]; got {value!r}")
        c, l1 = self.centroid_fraction, self.level1_fraction
        if not _is_number(c) or not 0 < c <= self.MAX_CENTROID_FRACTION:
            raise SqueezeError(f"--centroids (centroid_fraction) must be a fraction in (0, {self.MAX_CENTROID_FRACTION}] "
                               f"of the clustered keys; got {c!r} (default 0.10)")
        if not _is_number(l1) or not 0 < l1 <= (c if self.hierarchical is True else self.MAX_CENTROID_FRACTION):
            raise SqueezeError(f"--level1 (level1_fraction) must be a fraction in (0, {c:g}] (at most --centroids); "
                               f"got {l1!r} (default 0.01)")
        if type(self.hierarchical) is not bool:
            raise SqueezeError(f"hierarchical must be true or false; got {self.hierarchical!r}")
        if self.framing not in ("chat", "raw"):
            raise SqueezeError(f"unknown framing {self.framing!r}; use 'chat' or 'raw'")

    def to_dict(self):
        return dict(self.__dict__)


def plain_numbers(obj, int_fields=(), float_fields=()) -> None:
    """Turn numpy scalars (np.int64, np.float32 from np.arange / np.linspace sweeps) in these dataclass fields into
    Python int / float, so the checks below accept them as the numbers they are and JSON takes them. bool, str and
    the like are left for the checks to refuse."""
    for name in (*int_fields, *float_fields):
        value = getattr(obj, name)
        if type(value) in (bool, int, float) or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        if isinstance(value, numbers.Integral):
            setattr(obj, name, int(value))
        elif name in float_fields:
            setattr(obj, name, float(value))


def _is_number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


@dataclass
class GenerationResult:
    """What one question produced, on the PyTorch path (``Generator.generate``) and through an exported artifact
    (``DecoderSession.generate``): the fields of ``squeeze generate --json``."""

    text: str
    token_ids: list
    prompt_tokens: int
    context_tokens: int
    prefill_seconds: float
    decode_seconds: float
    decode_tokens: int
    attention: str
    kept_fraction: float | None = None      # mean fraction of clustered keys attended (lookup stats)
    kv_budget: float | None = None          # the same in the paper's accounting (+ centroid bytes / KV bytes)
    centroids_scored: float | None = None
    lookup: str | None = None                # lookup backend that ran ("native", "torch", "numpy"), None = full
    runtime: str | None = None               # the runtime of an exported artifact (None: PyTorch)
    follow_keys: int | None = None           # keys each decode step followed (SelectionSpec.follow_keys) as run,
                                             # the default resolved; None: full attention
    exact_decode: int | None = None          # the answer's first decode steps that attend every context key (the
                                             # answer's opening) as run, the default resolved; None: full attention
    exact_below: float | None = None         # a selecting step less sure than this ran again exactly (as run, the
                                             # default resolved; 0: never; None: full attention)
    rerun_steps: int | None = None           # how many decode steps did (None: full attention)
    extra: dict = field(default_factory=dict)

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out["decode_tokens_per_second"] = self.decode_tokens_per_second
        return out


def yes_no(value, name: str, alternative: str = "") -> bool:
    """``value`` as a bool (numpy's bool too), or a one-line SqueezeError: a string such as "no" is not taken for
    True."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise SqueezeError(f"{name} must be True or False{alternative}; got {value!r}")


def prompt_is_raw(framing: str, raw) -> bool:
    """Whether prompts continue a pack of this ``framing`` ("chat" / "raw") as plain text: ``raw`` None follows the
    pack, True / False must match it (one-line SqueezeError otherwise; e.g. ``raw="yes"`` is not taken as True)."""
    raw = framing == "raw" if raw is None else yes_no(raw, "raw", " (or None: follow the pack)")
    if raw != (framing == "raw"):
        raise SqueezeError(f"this pack was built with {framing} framing; "
                           + ("drop --raw (raw=False)" if raw else "pass --raw (raw=True)") + " or rebuild the pack")
    return raw
