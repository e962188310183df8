"""The ONE task/prompt registry: every SFT task is a small spec, examples are tokenized here.

A task draws units from a pool (train rows, items or SID tokens) and turns each unit into one or more
(prompt, response) pairs. The text comes from params (``tasks.prompts``): a per-task template
(prompt, response, instruction), an optional header tokenized on its own before the prompt (the
authors' Alpaca header holds the task's instruction), a wrapper around every prompt (Alpaca:
``### User Input:`` / ``### Response:``) and a suffix between the response and EOS (the authors' "\n").
The defaults are the short CPU prompts. The loss covers response tokens (+ suffix + EOS) only.

A prompt is a list of segments, each tokenized on its own (the first with the tokenizer's default
special tokens) and concatenated, as the authors' code does; the response is tokenized on its own too.
The evaluation feeds ``seqrec_prompt(history_sids, prompts)`` through ``encode_prompt``, so the training
prefix equals the evaluation prompt (or, with ``kind="paraphrase"``, the authors' test-time paraphrase).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import string
import zlib
from pathlib import Path
from typing import Callable, Literal, Sequence

from tsrec.core.config import section
from tsrec.data.datasets import load_index, load_items, load_split
from tsrec.core.errors import TsrecError
from tsrec.data.sids import index_tokens, sid_str

log = logging.getLogger(__name__)

IGNORE = -100


# ---------------------------------------------------------------- params
@dataclasses.dataclass
class TaskParams:
    enabled: bool = True
    share: float = 1.0   # fraction of the task's pool drawn (>1 repeats the pool)
    weight: float = 1.0  # loss weight of its samples (TS-Align: lambda, 1.0 = the authors)

    def validate(self) -> None:
        if not 0 < self.share <= 10:
            raise ValueError(f"share must be in (0, 10], got {self.share}")
        if not 0 <= self.weight <= 100:
            raise ValueError(f"weight must be in [0, 100], got {self.weight}")


@dataclasses.dataclass
class PromptText:
    prompt: str = ""
    response: str = ""
    instruction: str = ""  # fills {instruction} of tasks.prompts.header (ignored when there is no header)


def _text(prompt: str, response: str) -> Callable[[], PromptText]:
    return lambda: PromptText(prompt, response)


# template -> fields its prompt and response may use (str.format names)
FIELDS = {"seqrec": {"history", "sid"}, "paraphrase": {"history", "sid"}, "item2sid": {"title", "sid"},
          "sid2item": {"sid", "title"}, "sid_hist2title": {"history", "title"}, "title_hist2sid": {"titles", "sid"},
          "tsalign_t2d": {"token", "description"}, "tsalign_d2t": {"description", "token"}}


def template_fields(text: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise ValueError(f"bad template {text!r}: {exc}") from exc


@dataclasses.dataclass
class PromptsConfig:
    """Prompt text of every task (defaults: the short CPU prompts); profiles/authors.yaml: the authors'."""
    header: str = ""              # tokenized on its own before the prompt; {instruction}; "" = none
    wrap: str = "{prompt}"        # around every prompt (authors: Alpaca ### User Input: / ### Response:)
    eos_suffix: str = ""          # between the response and EOS (authors: "\n")
    history_sep: str = ""         # between the SIDs of a history (authors: ", ")
    title_sep: str = "; "         # between the titles of a title history
    seqrec: PromptText = dataclasses.field(default_factory=_text("User history: {history}\nNext item:", "{sid}"))
    paraphrase: PromptText = dataclasses.field(default_factory=_text(  # test-time prompt of evaluate.prompt
        "Can you predict the next possible item the user may expect, given the following chronological "
        "interaction history: {history}", "{sid}"))
    item2sid: PromptText = dataclasses.field(default_factory=_text("Item: {title}\nSID:", "{sid}"))
    sid2item: PromptText = dataclasses.field(default_factory=_text("SID: {sid}\nItem:", " {title}"))
    sid_hist2title: PromptText = dataclasses.field(
        default_factory=_text("User history: {history}\nNext item title:", " {title}"))
    title_hist2sid: PromptText = dataclasses.field(default_factory=_text("User history: {titles}\nNext item:", "{sid}"))
    tsalign_t2d: PromptText = dataclasses.field(
        default_factory=_text("What do items with the token {token} share?", " {description}"))
    tsalign_d2t: PromptText = dataclasses.field(default_factory=_text(
        "Which token do items share that are described as: {description}\nToken:", "{token}"))

    def validate(self) -> None:
        checks = [("header", self.header, {"instruction"}), ("wrap", self.wrap, {"prompt"})]
        for name, allowed in FIELDS.items():
            t: PromptText = getattr(self, name)
            checks += [(f"{name}.prompt", t.prompt, allowed), (f"{name}.response", t.response, allowed)]
        for where, text, allowed in checks:
            bad = template_fields(text) - allowed
            if bad:
                raise ValueError(f"prompts.{where}: unknown field(s) {sorted(bad)}; allowed {sorted(allowed)}")
        if "{prompt}" not in self.wrap:
            raise ValueError("prompts.wrap must contain {prompt}")

    def render(self, name: str | PromptText, **fields: str) -> tuple[list[str], str]:
        """(prompt segments, response + eos_suffix) of template ``name`` (or of a template given as such, e.g.
        ``llm_baselines.prompt``), inside this header / wrap / suffix."""
        t: PromptText = name if isinstance(name, PromptText) else getattr(self, name)
        segments = [self.header.format(instruction=t.instruction)] if self.header else []
        segments.append(self.wrap.format(prompt=t.prompt.format(**fields)))
        return segments, t.response.format(**fields) + self.eos_suffix


@dataclasses.dataclass
class TasksConfig:
    seqrec: TaskParams = dataclasses.field(default_factory=TaskParams)
    item2sid: TaskParams = dataclasses.field(default_factory=lambda: TaskParams(share=0.2))
    sid2item: TaskParams = dataclasses.field(default_factory=lambda: TaskParams(share=0.2))
    sid_hist2title: TaskParams = dataclasses.field(default_factory=lambda: TaskParams(share=0.1))
    title_hist2sid: TaskParams = dataclasses.field(default_factory=lambda: TaskParams(share=0.1))
    tsalign: TaskParams = dataclasses.field(default_factory=TaskParams)
    max_len: int = 256          # tokens per example; longer prompts are cut from the left
    title_words: int = 10       # titles are cut to this many words in prompts and responses (0 = whole title)
    title_history: int = 3      # title_hist2sid shows the last N titles
    desc_words: int = 0         # TS-Align descriptions cut to N words (0 = whole description)
    item_pool: Literal["items", "distinct"] = "items"  # distinct: the authors' dicts (below)
    prompts: PromptsConfig = dataclasses.field(default_factory=PromptsConfig)

    def validate(self) -> None:
        if self.max_len < 16:
            raise ValueError(f"max_len must be >= 16, got {self.max_len}")
        if self.title_words < 0 or self.title_history < 1 or self.desc_words < 0:
            raise ValueError("title_history must be >= 1, title_words and desc_words >= 0")
        if not self.seqrec.enabled:
            raise ValueError("seqrec (the evaluated task) cannot be switched off")


def tasks_config(params: dict) -> TasksConfig:
    return section(params, "tasks", TasksConfig)


def seqrec_prompt(history_sids: list[str], prompts: PromptsConfig | None = None,
                  kind: Literal["seqrec", "paraphrase"] = "seqrec") -> list[str]:
    """The evaluation prompt (segments): SID history (oldest first, 3-token SID strings) -> next SID;
    ``kind="paraphrase"``: the test-time paraphrase (``evaluate.prompt``)."""
    p = prompts or PromptsConfig()
    return p.render(kind, history=p.history_sep.join(history_sids), sid="")[0]


def encode_prompt(tokenizer, prompt: str | Sequence[str]) -> list[int]:
    """Token ids of a prompt exactly as training saw them: each segment tokenized on its own, the first
    with the tokenizer's default special tokens (a plain string is one segment)."""
    segments = [prompt] if isinstance(prompt, str) else list(prompt)
    ids = list(tokenizer(segments[0])["input_ids"])
    for seg in segments[1:]:
        ids += tokenizer(seg, add_special_tokens=False)["input_ids"]
    return ids


# ---------------------------------------------------------------- corpus + registry
@dataclasses.dataclass
class Corpus:
    """Everything tasks draw from: titles, SIDs, train rows, token descriptions."""
    titles: dict[int, str]
    sids: dict[int, str]
    rows: list[tuple[list[int], int]]
    descriptions: dict[str, str]
    cfg: TasksConfig

    def title(self, item: int) -> str:
        words = self.cfg.title_words
        return " ".join(self.titles[item].split()[:words]) if words else self.titles[item]

    def desc(self, token: str) -> str:
        d = self.descriptions[token]
        return " ".join(d.split()[: self.cfg.desc_words]) if self.cfg.desc_words else d

    def history(self, hist: list[int]) -> str:
        return self.cfg.prompts.history_sep.join(self.sids[i] for i in hist)

    def render(self, name: str, **fields: str) -> "Pair":
        return self.cfg.prompts.render(name, **fields)

    # item_pool "distinct": the authors build {SID: title} and {title: SID} dicts over the items in id
    # order, so the last item wins: one sid2item example per distinct SID, one item2sid per distinct title,
    # and a target's title is that of the last item on its SID.
    @functools.cached_property
    def last_on_sid(self) -> dict[str, int]:
        return {self.sids[i]: i for i in sorted(self.sids)}

    def sid_items(self) -> list[int]:
        return sorted(self.sids) if self.cfg.item_pool == "items" else sorted(self.last_on_sid.values())

    def title_items(self) -> list[int]:
        if self.cfg.item_pool == "items":
            return sorted(self.sids)
        return sorted({self.title(i): i for i in sorted(self.sids)}.values())

    def target_title(self, item: int) -> str:
        return self.title(item if self.cfg.item_pool == "items" else self.last_on_sid[self.sids[item]])


Pair = tuple[list[str], str]  # (prompt segments, response)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    pool: Callable[[Corpus], Sequence]          # units to draw from
    make: Callable[[Corpus, object], list[Pair]]  # (prompt, response) pairs of one unit


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("seqrec", lambda c: c.rows,
         lambda c, r: [c.render("seqrec", history=c.history(r[0]), sid=c.sids[r[1]])]),
    Task("item2sid", lambda c: c.title_items(),
         lambda c, i: [c.render("item2sid", title=c.title(i), sid=c.sids[i])]),
    Task("sid2item", lambda c: c.sid_items(),
         lambda c, i: [c.render("sid2item", sid=c.sids[i], title=c.title(i))]),
    Task("sid_hist2title", lambda c: c.rows,
         lambda c, r: [c.render("sid_hist2title", history=c.history(r[0]), title=c.target_title(r[1]))]),
    Task("title_hist2sid", lambda c: c.rows,
         lambda c, r: [c.render("title_hist2sid", sid=c.sids[r[1]], titles=c.cfg.prompts.title_sep.join(
             c.title(i) for i in r[0][-c.cfg.title_history:]))]),
    # TS-Align: exactly two samples per SID token (token -> description, description -> token)
    Task("tsalign", lambda c: sorted(c.descriptions),
         lambda c, t: [c.render("tsalign_t2d", token=t, description=c.desc(t)),
                       c.render("tsalign_d2t", token=t, description=c.desc(t))]),
]}


def draw(task: Task, corpus: Corpus, share: float, seed: int) -> list[Pair]:
    """round(share * |pool|) units, without replacement inside each full pass, fixed by seed + task name."""
    pool = list(task.pool(corpus))
    rng = random.Random(seed * 1_000_003 + zlib.crc32(task.name.encode()))
    n = round(share * len(pool))
    units = []
    while len(units) < n:
        units += rng.sample(pool, min(len(pool), n - len(units)))
    return [pair for u in units for pair in task.make(corpus, u)]


# ---------------------------------------------------------------- inputs
def load_descriptions(path: str | Path, tokens: list[str]) -> dict[str, str]:
    """token -> description from a keyword cache (authors' format); refuses missing tokens / empty descriptions."""
    from tsrec.semantics.keyword_cache import check_cache, read_records

    records = check_cache(read_records(path), tokens, "description")
    return {t: str(r["description"]).strip() for t, r in records.items()}


def load_corpus(data_dir: str | Path, index_path: str | Path, keywords_path: str | Path | None,
                cfg: TasksConfig) -> Corpus:
    data_dir = Path(data_dir)
    items = load_items(data_dir)
    index = load_index(Path(index_path))
    titles = dict(zip(items["item_id"].astype(int), items["title"].astype(str)))
    missing = sorted(set(titles) - set(index))
    if missing:
        raise TsrecError(f"{len(missing)} item(s) have no SID, e.g. {missing[:5]}", file=index_path)
    train = load_split(data_dir, "train")
    rows = [(list(map(int, h)), int(t)) for h, t in zip(train["history"], train["target"])]
    tokens = index_tokens(index)
    descriptions = load_descriptions(keywords_path, tokens) if cfg.tsalign.enabled else {}
    return Corpus(titles=titles, sids={i: sid_str(s) for i, s in index.items()}, rows=rows,
                  descriptions=descriptions, cfg=cfg)


def encode_pair(tokenizer, prompt: str | Sequence[str], response: str, max_len: int) -> tuple[list[int], list[int]]:
    """input_ids and labels (-100 on the prompt) for one example; EOS closes the response."""
    p = encode_prompt(tokenizer, prompt)
    r = list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    r = r[:max_len - 1]
    p = p[-(max_len - len(r)):]  # cut the prompt from the left
    return p + r, [IGNORE] * len(p) + r


def build_examples(corpus: Corpus, tokenizer, seed: int) -> list[dict]:
    """The training mixture: every enabled task drawn at its share, tokenized, with its loss weight."""
    cfg = corpus.cfg
    out = []
    for name, task in TASKS.items():
        tp: TaskParams = getattr(cfg, name)
        if not tp.enabled:
            continue
        pairs = draw(task, corpus, tp.share, seed)
        for prompt, response in pairs:
            ids, labels = encode_pair(tokenizer, prompt, response, cfg.max_len)
            out.append({"input_ids": ids, "labels": labels, "weight": tp.weight, "task": name})
        log.info("task %s: %d examples (share %.2f, weight %.2f)", name, len(pairs), tp.share, tp.weight)
    return out


def seqrec_examples(data_dir: str | Path, split: str, sids: dict[int, str], tokenizer, max_len: int,
                    rows: int, seed: int, prompts: PromptsConfig | None = None) -> list[dict]:
    """A fixed subsample of ``rows`` seqrec examples of a split (0 = all), e.g. for early stopping."""
    p = prompts or PromptsConfig()
    df = load_split(Path(data_dir), split)
    idx = list(range(len(df)))
    if 0 < rows < len(idx):
        idx = sorted(random.Random(seed).sample(idx, rows))
    out = []
    for i in idx:
        hist, target = df["history"].iloc[i], int(df["target"].iloc[i])
        prompt, response = p.render("seqrec", history=p.history_sep.join(sids[int(h)] for h in hist), sid=sids[target])
        ids, labels = encode_pair(tokenizer, prompt, response, max_len)
        out.append({"input_ids": ids, "labels": labels, "weight": 1.0, "task": "seqrec"})
    return out
