"""An evaluation suite nobody tuned to: RULER-style needle cases generated locally from real text.

Text: every licence in /usr/share/common-licenses and the documentation of Python's standard library (module,
class and function docstrings read with ``ast`` from the interpreter's own source files: nothing is imported or
executed), each document a sequence of paragraphs. Nothing third-party is committed: the text is read here at
run time.

Split: a document belongs to ``dev`` or ``heldout`` by a hash of its name (about 30% held out), and so does
every phrasing template (fact and question wordings) and every filler word list entry: a held-out case is
held-out text with held-out wordings. Tune on ``dev``; report ``heldout``.

Case kinds (each case draws its length, depth, framing and wordings at random from a seed):
- ``number``: one key with a 7-digit value; ``word``: one key with a word; ``uuid``: one key with a
  UUID-like code; ``multikey``: the asked fact plus 3 distractor facts of the same form under other keys;
  ``multivalue``: 3 values for one key at different depths, all must be in the answer; ``multiquestion``:
  two facts, both asked in one turn, both must be in the answer.
- depths 0.05..0.95, lengths from the caller (2k/4k/8k), chat or raw framing.
"""

from __future__ import annotations

import ast
import hashlib
import random
import sysconfig
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .corpus import _paragraphs as corpus_paragraphs
from .errors import SqueezeError
from .settings import DEFAULT_EXACT_HEAD, DEFAULT_EXACT_TAIL, DEFAULT_PREFILL_ROWS, DEFAULT_PREFILL_TAIL

SPLITS = ("dev", "heldout")
KINDS = ("number", "word", "uuid", "multikey", "multivalue", "multiquestion")
HELDOUT_SHARE = 0.3
LICENSES = Path("/usr/share/common-licenses")
# stdlib modules whose docstrings are long-form documentation (read as text with ast; never imported)
STDLIB_DOC_MODULES = ("argparse", "asyncio/events", "collections/__init__", "configparser", "csv", "dataclasses",
                      "datetime", "decimal", "difflib", "email/message", "enum", "fractions", "functools",
                      "http/client", "http/server", "inspect", "logging/__init__", "mailbox", "optparse",
                      "pathlib", "pickle", "pydoc", "random", "shutil", "smtplib", "statistics", "string",
                      "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest/case", "urllib/parse",
                      "zipfile/__init__", "zipfile", "imaplib", "ftplib", "calendar", "locale", "gettext",
                      "heapq", "bisect", "contextlib", "doctest", "tempfile", "uuid", "weakref", "abc")

FACTS = {  # (fact template, question templates); {key} names the subject, {value} the answer
    "number": [
        ("The special magic number for {key} is {value}.", ["What is the special magic number for {key}?",
                                                             "Which number is the special magic number for {key}?"]),
        ("Remember this: the access number of {key} is {value}.", ["What is the access number of {key}?"]),
        ("For the record, {key} was assigned the number {value}.", ["Which number was {key} assigned?",
                                                                   "What number was assigned to {key}?"]),
        ("Note that the reference number for {key} reads {value}.", ["What does the reference number for {key} read?"]),
        ("{key} has the registration number {value}.", ["What is the registration number of {key}?"]),
        ("The combination that opens {key} is {value}.", ["What combination opens {key}?"]),
    ],
    "word": [
        ("The secret word for {key} is {value}.", ["What is the secret word for {key}?"]),
        ("Keep in mind that {key} is nicknamed {value}.", ["What is {key} nicknamed?", "Which nickname does {key} have?"]),
        ("The password protecting {key} is {value}.", ["What password protects {key}?"]),
        ("Everyone calls {key} by the name {value}.", ["By which name does everyone call {key}?"]),
        ("The codeword chosen for {key} was {value}.", ["Which codeword was chosen for {key}?"]),
        ("{key} is marked with the word {value}.", ["Which word is {key} marked with?"]),
    ],
    "uuid": [
        ("The identifier of {key} is {value}.", ["What is the identifier of {key}?"]),
        ("{key} is stored under the code {value}.", ["Under which code is {key} stored?"]),
        ("Write down the token for {key}: {value}.", ["What is the token for {key}?"]),
        ("The serial code printed on {key} is {value}.", ["What serial code is printed on {key}?"]),
        ("Use the code {value} whenever you need {key}.", ["Which code is used for {key}?"]),
        ("The label on {key} shows {value}.", ["What does the label on {key} show?"]),
        ("Records list {key} with the key {value}.", ["Which key do records list for {key}?"]),
    ],
}
KEYS = ["the harbour office", "the blue warehouse", "Project Juniper", "the north gate", "the night train",
        "the old observatory", "the river ferry", "the mountain hut", "the copper mine", "the village bakery",
        "the east tower", "the garden shed", "the science fair", "the chess club", "the orchard cellar",
        "the west archive", "the silver locker", "the paper mill", "the lighthouse", "the clock shop",
        "the boat house", "the tram depot", "the music room", "the glass studio", "the apple barn",
        "the marble hall", "the fire station", "the post office", "the rose garden", "the salt works"]
WORDS = ["heliotrope", "marmalade", "cardamom", "juniper", "quicksilver", "tamarind", "obsidian", "saffron",
         "lavender", "porcupine", "mandolin", "cinnabar", "tangerine", "wisteria", "pemmican", "sassafras",
         "zeppelin", "kumquat", "gossamer", "bergamot", "marzipan", "amaranth", "chinchilla", "verbena",
         "anchovy", "periwinkle", "galleon", "nutmeg", "tourmaline", "persimmon"]


def _split_of(name: str) -> str:
    h = int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:8], 16)
    return "heldout" if (h % 1000) / 1000 < HELDOUT_SHARE else "dev"


def _paragraphs(text: str) -> list:
    """corpus's paragraphs (runs of spaces collapsed) longer than a heading or a code fragment."""
    return [p for p in corpus_paragraphs(text) if len(p) > 40]


def _docstrings(path: Path) -> list:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    docs = [ast.get_docstring(tree)]
    docs += [ast.get_docstring(n) for n in ast.walk(tree)
             if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    return [p for d in docs if d for p in _paragraphs(d)]


def documents() -> dict:
    """name -> paragraphs, for every readable source (licences, stdlib documentation)."""
    docs = {}
    if LICENSES.is_dir():
        for path in sorted(LICENSES.iterdir()):
            if path.is_file() and not path.is_symlink():
                paras = _paragraphs(path.read_text(encoding="utf-8", errors="replace"))
                if paras:
                    docs[f"license:{path.name}"] = paras
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for mod in STDLIB_DOC_MODULES:
        paras = _docstrings(stdlib / f"{mod}.py")
        if len(paras) >= 5:
            docs[f"pydoc:{mod}"] = paras
    return docs


def split_items(items, split: str, key=str) -> list:
    return [x for x in items if _split_of(key(x)) == split]


@dataclass
class SuiteCase:
    case_id: str
    split: str
    kind: str
    length: int
    depths: list
    framing: str
    sources: list
    facts: list
    question: str
    answers: list                    # every one must appear in the answer (case-insensitive)
    text: str = field(repr=False, default="")

    def correct(self, answer: str) -> bool:
        low = answer.lower()
        return all(a.lower() in low for a in self.answers)

    def describe(self) -> dict:
        d = asdict(self)
        d.pop("text")
        return d


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def _value(kind: str, rng: random.Random, words: list) -> str:
    if kind == "number":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "word":
        return rng.choice(words)
    return "-".join("".join(rng.choice("0123456789abcdef") for _ in range(n)) for n in (8, 4, 4))


def _prose(tokenizer, docs: dict, names: list, tokens: int, rng: random.Random) -> tuple:
    """Paragraphs from the split's documents (a random start document, then the next ones) worth ``tokens``."""
    order = names[:]
    rng.shuffle(order)
    paras, used, total = [], [], 0
    for name in order:
        used.append(name)
        for para in docs[name]:
            paras.append(para)
            total += len(tokenizer.encode(para)) + 2
            if total >= tokens:
                return paras, used
    raise SqueezeError(f"the suite's text has only ~{total} tokens in this split; ask for shorter contexts")


def make_suite_case(tokenizer, docs: dict, split: str, kind: str, length: int, seed: int) -> SuiteCase:
    """One case of ``kind`` from ``split``'s documents and wordings, about ``length`` context tokens."""
    rng = random.Random(f"{split}:{kind}:{length}:{seed}")
    names = split_items(sorted(docs), split)
    base = "uuid" if kind == "uuid" else ("word" if kind == "word" else "number")
    if kind in ("multikey", "multivalue", "multiquestion"):
        base = rng.choice(["number", "word", "uuid"])
    templates = split_items(FACTS[base], split, key=lambda t: t[0])
    keys = split_items(KEYS, split)
    words = split_items(WORDS, split)
    fact_t, questions = rng.choice(templates)
    question_t = rng.choice(questions)
    n_facts = {"multikey": 4, "multivalue": 3, "multiquestion": 2}.get(kind, 1)
    chosen_keys = rng.sample(keys, n_facts)
    values = []
    while len(values) < n_facts:  # distinct values
        v = _value(base, rng, words)
        if v not in values:
            values.append(v)
    if kind == "multivalue":
        chosen_keys = [chosen_keys[0]] * n_facts
        facts = [fact_t.replace(" is {value}", " includes {value}").format(key=k, value=v)
                 if " is {value}" in fact_t else fact_t.format(key=k, value=v) for k, v in zip(chosen_keys, values)]
        question = f"List every value given for {chosen_keys[0]} in the text."
        answers = values
    elif kind == "multiquestion":
        facts = [fact_t.format(key=k, value=v) for k, v in zip(chosen_keys, values)]
        question = question_t.format(key=chosen_keys[0]) + " Also, " + question_t.format(key=chosen_keys[1])[0].lower() \
            + question_t.format(key=chosen_keys[1])[1:]
        answers = values
    else:
        facts = [fact_t.format(key=k, value=v) for k, v in zip(chosen_keys, values)]
        question = question_t.format(key=chosen_keys[0])
        answers = [values[0]]
    question += " Answer briefly."
    facts = [_sentence(f) for f in facts]
    paras, used = _prose(tokenizer, docs, names, length, rng)
    depths = sorted(round(rng.uniform(0.05, 0.95), 2) for _ in facts)
    if kind in ("multikey",):  # the asked fact at the drawn depth, distractors elsewhere
        depths = [round(rng.uniform(0.05, 0.95), 2) for _ in facts]
    while True:  # whole paragraphs overshoot: drop trailing ones until it fits
        body = paras[:]
        for depth, fact in sorted(zip(depths, facts), key=lambda x: -x[0]):
            at = min(len(body), round(depth * len(body)))
            body.insert(at, fact)
        text = "\n\n".join(body)
        if len(tokenizer.encode(text)) <= length or len(paras) <= 2:
            break
        paras = paras[:-1]
    framing = rng.choice(["chat", "raw"])
    return SuiteCase(f"{split}-{kind}-{length}-{seed}", split, kind, length, depths, framing, used, facts,
                     question, answers, text)


def suite_cases(tokenizer, split: str, lengths, cases_per_length: int, seed: int = 0, kinds=KINDS) -> list:
    """``cases_per_length`` cases per length, kinds in rotation, everything else drawn from the seed."""
    if split not in SPLITS:
        raise SqueezeError(f"--suite must be one of {', '.join(SPLITS)}; got {split!r}")
    docs = documents()
    if not split_items(sorted(docs), split):
        raise SqueezeError("no suite text found (/usr/share/common-licenses or Python's standard library sources)")
    out = []
    for length in lengths:
        for i in range(cases_per_length):
            out.append(make_suite_case(tokenizer, docs, split, kinds[i % len(kinds)], length, seed * 1000 + i))
    return out


def _median(xs):
    import statistics

    return statistics.median(xs) if xs else None


def run_suite(model, checkpoint, split: str = "dev", lengths=(2048, 4096, 8000), cases_per_length: int = 6,
              kv_budgets=(0.225, 0.125), seed: int = 0, continuation_tokens: int = 64, out_dir=None, log=print,
              kinds=KINDS, prefill_rows: int = DEFAULT_PREFILL_ROWS,
              prefill_tail: int = DEFAULT_PREFILL_TAIL, decode_selection: str = "step",
              exact_tail: int = DEFAULT_EXACT_TAIL, artifacts=(), follow_keys: int | None = None,
              continuation_cases: int = 4, exact_decode: int | None = None,
              exact_below: float | None = None, exact_head: int = DEFAULT_EXACT_HEAD) -> dict:
    """Every case: a pack of its text (its framing), full attention and top-k at each KV budget answer its
    question (greedy), and the attention-mass recall of each budget on the question tokens; per length
    ``continuation_cases`` continuations (teacher-forced prose from the split, each from its own random place)
    for top-1 agreement and KL, pooled over their tokens. Results are saved after every case when ``out_dir`` is
    given.

    ``artifacts``: (label, DecoderSession) pairs -- exported decoders, each answering every case through its own
    runtime from the case's pack saved as a file (as an app would); a case an artifact refuses (e.g. a pack longer
    than its --max-context) is recorded as skipped with the one-line reason."""
    import json
    import tempfile
    import time

    from .atomic import write_text_atomic
    from .evaluate import attention_recall, continuation_metrics, write_results
    from .generation import AttentionChoice, Generator
    from .pack import BuildSettings, build_context_pack, save_context_pack

    tok = checkpoint.tokenizer
    cases = suite_cases(tok, split, lengths, cases_per_length, seed, kinds)
    choices = {"full": AttentionChoice("full")}
    choices.update({f"top-k@{b:g}": AttentionChoice("top-k", kv_budget=b, prefill_rows=prefill_rows,
                                                          prefill_tail=prefill_tail, exact_tail=exact_tail,
                                                          exact_head=exact_head, decode_selection=decode_selection,
                                                          follow_keys=follow_keys, exact_decode=exact_decode,
                                                          exact_below=exact_below)
                    for b in kv_budgets})
    squeezed = {k: v for k, v in choices.items() if k != "full"}
    exact_decode = next(iter(squeezed.values())).exact_decode if squeezed else exact_decode   # None: resolved
    exact_below = next(iter(squeezed.values())).exact_below if squeezed else exact_below
    rows, recalls, continuation = [], [], []
    started = time.perf_counter()
    docs = documents()

    def save(final: bool = False):
        result = {"partial": not final, "split": split, "seed": seed, "lengths": list(lengths), "kv_budgets": list(kv_budgets),
                  "prefill_rows": prefill_rows, "prefill_tail": prefill_tail, "exact_tail": exact_tail,
                  "exact_head": exact_head, "decode_selection": decode_selection, "follow_keys": follow_keys, "exact_decode": exact_decode,
                  "exact_below": exact_below,
                  "continuation_cases": continuation_cases, "cases": rows, "recall": recalls,
                  "continuation": continuation,
                  "summary": summarize_suite(rows, recalls, continuation, kv_budgets),
                  "artifacts": [{"config": label, "file": session.artifact["file"],
                                 "format": session.artifact["format"], "weights": session.artifact.get("weights"),
                                 "attention": session.contract["attention"], "kv_budget": session.contract.get("kv_budget"),
                                 "exact_tail": session.exact_tail,
                                 "exact_head": session.exact_head, "exact_decode": session.exact_decode,
                                 "exact_below": session.exact_below,
                                 "runtime": session.backend.runtime}
                                for label, session in artifacts],
                  "seconds": time.perf_counter() - started}
        if out_dir is None:
            return result
        write_results(out_dir, "suite", {".json": json.dumps(result, indent=2) + "\n", ".md": suite_markdown(result)},
                      final)
        return result

    for case in cases:
        pack = build_context_pack(model, checkpoint, case.text, BuildSettings(framing=case.framing))
        gen = Generator(model, tok, pack)
        raw = case.framing == "raw"
        prompt = ("\n\nQuestion: " + case.question + "\nAnswer:") if raw else case.question
        answers = {}
        for name, choice in choices.items():
            r = gen.generate(prompt, choice, max_new_tokens=48 if len(case.answers) == 1 else 64, raw=raw,
                             stop_when=lambda text, c=case: c.correct(text))
            answers[name] = r.text
            rows.append({**case.describe(), "tokens": pack.num_tokens, "config": name, "correct": case.correct(r.text),
                         "answer_text": r.text, "kept_fraction": r.kept_fraction, "decode_steps": r.decode_tokens,
                         "rerun_steps": r.rerun_steps})
        if artifacts:
            with tempfile.TemporaryDirectory(prefix="squeeze-suite-") as tmp:
                save_context_pack(pack, Path(tmp) / "case.pack")
                for label, session in artifacts:
                    try:
                        session.attach(Path(tmp) / "case.pack")
                        r = session.generate(prompt, max_new_tokens=48 if len(case.answers) == 1 else 64, raw=raw)
                    except SqueezeError as exc:
                        rows.append({**case.describe(), "tokens": pack.num_tokens, "config": label, "correct": None,
                                     "skipped": str(exc)})
                        continue
                    answers[label] = r.text
                    rows.append({**case.describe(), "tokens": pack.num_tokens, "config": label,
                                 "correct": case.correct(r.text), "answer_text": r.text,
                                 "kept_fraction": r.kept_fraction, "decode_steps": r.decode_tokens,
                                 "rerun_steps": r.rerun_steps})
        rec = attention_recall(gen, gen.prompt_ids(prompt, raw), squeezed)
        for name, r in rec.items():
            recalls.append({"case_id": case.case_id, "config": name, "tokens": pack.num_tokens, **r})
        log(f"[{time.perf_counter() - started:6.0f}s] {case.case_id} ({case.framing}, depths {case.depths}): "
            + " ".join(f"{n}={'Y' if case.correct(a) else '.'}" for n, a in answers.items())
            + " recall " + " ".join(f"{n}={_median([x for row in r['clustered'] for x in row]):.2f}"
                                    f" (best {_median([x for row in r['ceiling'] for x in row]):.2f})"
                                    for n, r in rec.items()))
        save()
    import random as _random

    for length in lengths:
        starts = set()   # each case opens another document (the prose runs from a document's start) while any is left
        names = split_items(sorted(docs), split)
        for ci in range(continuation_cases if continuation_tokens > 0 else 0):
            # case 0 draws from the seed string of the suite's first versions (one case per length), so their
            # continuations stay comparable
            for retry in range(1000):
                rng = _random.Random(f"{split}:continuation:{length}:{seed}" + (f":{ci}" if ci else "")
                                     + (f":{retry}" if retry else ""))
                paras, used = _prose(tok, docs, names, length + continuation_tokens + 64, rng)
                if used[0] not in starts or len(starts) >= len(names):
                    break
            starts.add(used[0])
            ids = tok.encode("\n\n".join(paras))
            n_ctx = length - continuation_tokens
            pack = build_context_pack(model, checkpoint, tok.decode(ids[:n_ctx], skip_special=False),
                                      BuildSettings(framing="raw"))
            cont = tok.encode(tok.decode(ids[n_ctx:n_ctx + continuation_tokens + 8]))[:continuation_tokens]
            gen = Generator(model, tok, pack)
            reference, _ = continuation_metrics(gen, AttentionChoice("full"), cont)
            for name, choice in squeezed.items():
                _, m = continuation_metrics(gen, choice, cont, reference)
                continuation.append({"length": length, "case": ci, "source": used[0], "tokens": pack.num_tokens,
                                     "config": name, **m})
            log(f"[{time.perf_counter() - started:6.0f}s] continuation {ci + 1}/{continuation_cases}, "
                f"{pack.num_tokens} tokens of {used[0]}: " + " ".join(
                    f"{r['config']}: top-1 {r['top1_agreement']:.3f} KL {r['kl_mean']:.4f}"
                    for r in continuation[-len(squeezed):]))
            save()
    return save(final=True)


def summarize_suite(rows, recalls, continuation, kv_budgets) -> list:
    """Per configuration: answered, answered of full's, by kind and by depth of the (first) fact, recall."""
    full_ok = {r["case_id"] for r in rows if r["config"] == "full" and r["correct"]}
    out = []
    for name in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == name and r.get("correct") is not None]   # not skipped
        of_full = [r for r in mine if r["case_id"] in full_ok]
        entry = {"config": name, "cases": len(mine), "correct": sum(r["correct"] for r in mine),
                 "full_solved": len(of_full), "solved_of_full": sum(r["correct"] for r in of_full),
                 "skipped": sum(r["config"] == name and r.get("correct") is None for r in rows),
                 "by_kind": {}, "by_depth": {}}
        for r in of_full:
            k = entry["by_kind"].setdefault(r["kind"], [0, 0])
            k[0] += int(r["correct"])
            k[1] += 1
            bucket = "0-0.25" if min(r["depths"]) < 0.25 else ("0.25-0.6" if min(r["depths"]) < 0.6 else "0.6-1")
            d = entry["by_depth"].setdefault(bucket, [0, 0])
            d[0] += int(r["correct"])
            d[1] += 1
        rec = [x for r in recalls if r["config"] == name for row in r["clustered"] for x in row]
        ctx = [x for r in recalls if r["config"] == name for row in r["context"] for x in row]
        ceil = [x for r in recalls if r["config"] == name for row in r.get("ceiling", []) for x in row]
        entry["recall_clustered_median"] = _median(rec)
        entry["recall_context_median"] = _median(ctx)
        entry["recall_ceiling_median"] = _median(ceil) if ceil else None
        # pooled over the continuations' tokens (each case scores the same number, so this is also their mean)
        cont = [r for r in continuation if r["config"] == name]
        scored = sum(r["scored_tokens"] for r in cont)
        entry["continuation_tokens"] = scored
        entry["top1_agreement"] = sum(r["top1_agreement"] * r["scored_tokens"] for r in cont) / scored if scored else None
        entry["kl_mean"] = sum(r["kl_mean"] * r["scored_tokens"] for r in cont) / scored if scored else None
        # the same over the steps that select (after the exact tail's and the answer opening's exact steps)
        sel = [r for r in cont if r.get("selecting_tokens")]
        n_sel = sum(r["selecting_tokens"] for r in sel)
        entry["selecting_tokens"] = n_sel
        entry["selecting_top1_agreement"] = (sum(r["selecting_top1_agreement"] * r["selecting_tokens"] for r in sel)
                                             / n_sel if n_sel else None)
        entry["selecting_kl_mean"] = (sum(r["selecting_kl_mean"] * r["selecting_tokens"] for r in sel) / n_sel
                                      if n_sel else None)
        # decode steps an unsure top token ran again exactly (exact_below): of the answers' decode steps, and of the
        # continuations' selecting steps (the cost of the rule, on answers and on prose)
        ran = [r for r in mine if r.get("rerun_steps") is not None]
        steps = sum(r.get("decode_steps") or 0 for r in ran)
        entry["answer_rerun_share"] = sum(r["rerun_steps"] for r in ran) / steps if ran and steps else None
        entry["continuation_rerun_share"] = (sum(r.get("rerun_steps") or 0 for r in sel) / n_sel
                                             if n_sel and any("rerun_steps" in r for r in sel) else None)
        out.append(entry)
    return out


def suite_markdown(result) -> str:
    lines = [f"# Evaluation suite: split {result['split']} (seed {result['seed']}, lengths "
             f"{', '.join(map(str, result['lengths']))})", "",
             "| attention | answered | answered of full's | recall (clustered, median) | best possible (same key count) "
             "| recall (context, median) | top-1 agreement | mean KL | top-1 / KL of the selecting steps "
             "| steps run again (answers / continuations) | of full's by kind | of full's by depth |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for e in result["summary"]:
        kinds = ", ".join(f"{k} {a}/{b}" for k, (a, b) in sorted(e["by_kind"].items()))
        depths = ", ".join(f"{k} {a}/{b}" for k, (a, b) in sorted(e["by_depth"].items()))
        top1 = "-" if e["top1_agreement"] is None else (f"{100 * e['top1_agreement']:.1f}% "
                                                         f"({e.get('continuation_tokens', '?')} tokens)")
        kl = "-" if e["kl_mean"] is None else f"{e['kl_mean']:.4f}"
        selecting = "-" if e.get("selecting_top1_agreement") is None else (
            f"{100 * e['selecting_top1_agreement']:.1f}% / {e['selecting_kl_mean']:.4f} "
            f"({e['selecting_tokens']} tokens)")
        skipped = f" ({e['skipped']} skipped)" if e.get("skipped") else ""
        again = "-" if e.get("answer_rerun_share") is None and e.get("continuation_rerun_share") is None else (
            f"{pct(e.get('answer_rerun_share'))} / {pct(e.get('continuation_rerun_share'))}")
        lines.append(f"| {e['config']} | {e['correct']}/{e['cases']}{skipped} | {e['solved_of_full']}/{e['full_solved']} | "
                     f"{pct(e['recall_clustered_median'])} | {pct(e.get('recall_ceiling_median'))} | "
                     f"{pct(e['recall_context_median'])} | {top1} | "
                     f"{kl} | {selecting} | {again} | "
                     f"{kinds or '-'} | {depths or '-'} |")
    return "\n".join(lines) + "\n"


__all__ = ["KINDS", "SPLITS", "SuiteCase", "documents", "make_suite_case", "run_suite", "suite_cases",
           "summarize_suite"]
