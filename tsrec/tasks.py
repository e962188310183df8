"""The ONE task/prompt registry: every SFT task is a small spec, examples are tokenized here.

A task draws units from a pool (train rows, items or SID tokens) and turns each unit into one or more
(prompt, response) pairs. Prompts are short fixed-format text (cheap on a CPU); the response is
followed by EOS, and the loss covers response tokens (+ EOS) only.

The evaluation feeds ``seqrec_prompt(history_sids)`` tokenized with ``encode_prompt`` (the same as
``tokenizer(text)["input_ids"]``); the model then generates the 3 target SID tokens and EOS. Prompt and
response are tokenized separately and concatenated, so the training prefix equals the evaluation prompt.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import zlib
from pathlib import Path
from typing import Callable, Sequence

from tsrec.backbone import index_tokens
from tsrec.config import section
from tsrec.data import load_index, load_items, load_split
from tsrec.errors import TsrecError

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
class TasksConfig:
    seqrec: TaskParams = dataclasses.field(default_factory=TaskParams)
    item2sid: TaskParams = dataclasses.field(default_factory=TaskParams)
    sid2item: TaskParams = dataclasses.field(default_factory=TaskParams)
    sid_hist2title: TaskParams = dataclasses.field(default_factory=TaskParams)
    title_hist2sid: TaskParams = dataclasses.field(default_factory=TaskParams)
    tsalign: TaskParams = dataclasses.field(default_factory=TaskParams)
    max_len: int = 256          # tokens per example; longer prompts are cut from the left
    title_words: int = 12       # titles are cut to this many words in prompts and responses
    title_history: int = 5      # title_hist2sid shows the last N titles
    desc_words: int = 0         # TS-Align descriptions cut to N words (0 = whole description)

    def validate(self) -> None:
        if self.max_len < 16:
            raise ValueError(f"max_len must be >= 16, got {self.max_len}")
        if self.title_words < 1 or self.title_history < 1 or self.desc_words < 0:
            raise ValueError("title_words and title_history must be >= 1, desc_words >= 0")
        if not self.seqrec.enabled:
            raise ValueError("seqrec (the evaluated task) cannot be switched off")


def tasks_config(params: dict) -> TasksConfig:
    return section(params, "tasks", TasksConfig)


# ---------------------------------------------------------------- prompts
def sid_str(tokens: Sequence[str]) -> str:
    return "".join(tokens)


def seqrec_prompt(history_sids: list[str]) -> str:
    """The evaluation prompt: SID history (oldest first, each a 3-token SID string) -> next SID."""
    return f"User history: {''.join(history_sids)}\nNext item:"


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt exactly as training saw them (the tokenizer's default special tokens)."""
    return list(tokenizer(text)["input_ids"])


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
        return " ".join(self.titles[item].split()[: self.cfg.title_words])

    def desc(self, token: str) -> str:
        d = self.descriptions[token]
        return " ".join(d.split()[: self.cfg.desc_words]) if self.cfg.desc_words else d


Pair = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    pool: Callable[[Corpus], Sequence]          # units to draw from
    make: Callable[[Corpus, object], list[Pair]]  # (prompt, response) pairs of one unit


def _hist(c: Corpus, hist: list[int]) -> list[str]:
    return [c.sids[i] for i in hist]


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("seqrec", lambda c: c.rows,
         lambda c, r: [(seqrec_prompt(_hist(c, r[0])), c.sids[r[1]])]),
    Task("item2sid", lambda c: sorted(c.sids),
         lambda c, i: [(f"Item: {c.title(i)}\nSID:", c.sids[i])]),
    Task("sid2item", lambda c: sorted(c.sids),
         lambda c, i: [(f"SID: {c.sids[i]}\nItem:", " " + c.title(i))]),
    Task("sid_hist2title", lambda c: c.rows,
         lambda c, r: [(f"User history: {''.join(_hist(c, r[0]))}\nNext item title:", " " + c.title(r[1]))]),
    Task("title_hist2sid", lambda c: c.rows,
         lambda c, r: [("User history: " + "; ".join(c.title(i) for i in r[0][-c.cfg.title_history:])
                        + "\nNext item:", c.sids[r[1]])]),
    # TS-Align: exactly two samples per SID token (token -> description, description -> token)
    Task("tsalign", lambda c: sorted(c.descriptions),
         lambda c, t: [(f"What do items with the token {t} share?", " " + c.desc(t)),
                       (f"Which token do items share that are described as: {c.desc(t)}\nToken:", t)]),
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
    from tsrec.sainit import check_cache, load_cache

    records = check_cache(load_cache(path), tokens, "description")
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


def encode_pair(tokenizer, prompt: str, response: str, max_len: int) -> tuple[list[int], list[int]]:
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
                    rows: int, seed: int) -> list[dict]:
    """A fixed subsample of ``rows`` seqrec examples of a split (0 = all), e.g. for early stopping."""
    df = load_split(Path(data_dir), split)
    idx = list(range(len(df)))
    if 0 < rows < len(idx):
        idx = sorted(random.Random(seed).sample(idx, rows))
    out = []
    for i in idx:
        hist, target = df["history"].iloc[i], int(df["target"].iloc[i])
        ids, labels = encode_pair(tokenizer, seqrec_prompt([sids[int(h)] for h in hist]), sids[target], max_len)
        out.append({"input_ids": ids, "labels": labels, "weight": 1.0, "task": "seqrec"})
    return out
