"""The LLM baselines' decoders: BIGRec's generation + L2 grounding, the title trie's constrained beam search of D3
and S-DPO, and D3's text-free assistant (a SASRec of ``tsrec.baselines``) as a logits processor. The overview
and the official code each follows: ``tsrec.baselines.llm_titles``."""

from __future__ import annotations

from pathlib import Path

import torch

from tsrec.baselines.llm_config import AssistantConfig, LLMJob
from tsrec.baselines.llm_titles import TitleText
from tsrec.baselines.sequential import IDRecommender, SASRecConfig
from tsrec.baselines.trainer import FitConfig, SeqData
from tsrec.core.config import from_dict
from tsrec.data.layout import baseline_seed_file
from tsrec.eval.metrics import read_with_run


# ---------------------------------------------------------------- BIGRec: generation + grounding
@torch.inference_mode()
def last_hidden(model, tokenizer, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """[n, d]: the last layer's hidden state at each text's last token (left-padded batches, the tokenizer's
    default special tokens), as BIGRec's ``embedding.ipynb`` / ``evaluate.py``."""
    from tsrec.lm.decoding import left_pad

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dev = next(model.parameters()).device
    out = []
    for s in range(0, len(texts), batch_size):
        seqs = [list(tokenizer(t)["input_ids"]) or [pad] for t in texts[s:s + batch_size]]
        ids, mask = left_pad(seqs, pad, device=dev)
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1).hidden_states
        out.append(hs[-1][:, -1, :].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def ground(predicted: torch.Tensor, items: torch.Tensor, k: int) -> torch.Tensor:
    """[n, k] column indices of ``items`` nearest (L2) to each row of ``predicted``, nearest first (stable)."""
    dist = torch.cdist(predicted.float(), items.float(), p=2)
    return dist.argsort(dim=1, stable=True)[:, :k]


@torch.inference_mode()
def generate_texts(model, tokenizer, prompts: list[list[int]], beams: int, max_new_tokens: int,
                   batch_size: int) -> list[str]:
    """The top beam's text per prompt (unconstrained beam search, HF defaults otherwise: official BIGRec)."""
    from transformers import GenerationConfig

    from tsrec.lm.decoding import left_pad, library_generation_defaults

    eos = tokenizer.eos_token_id
    dev = next(model.parameters()).device
    config = GenerationConfig(num_beams=beams, num_return_sequences=1, do_sample=False, max_new_tokens=max_new_tokens,
                              eos_token_id=eos, pad_token_id=eos)
    texts = []
    for s in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[s:s + batch_size], eos, device=dev)
        with library_generation_defaults(model):
            gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        texts += tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
    return texts


def clean_title(text: str) -> str:
    """Official: strip spaces, newlines and quotes around a generated / catalogue title."""
    return text.strip(" \n").strip('"').strip(" ")


# ---------------------------------------------------------------- D3: title trie + assistant
class AssistantProcessor:
    """D3's text-free assistant as an HF logits processor, after the trie mask, on the beams' log-probs.

    ``probs`` [n_prompts, n_leaves]: the assistant's probability of each trie leaf (the sum over its items of
    the softmax over all items). For a beam whose generated prefix is p and the allowed tokens A(p):
    ``a(t) = mass(p + t) / sum_{u in A(p)} mass(p + u)`` (mass: summed leaf probabilities under the prefix, +1e-20;
    the end token after a full title carries that title's own leaf), and the step's scores become
    ``gs * s + (1 - gs) * log a`` on A(p) (disallowed tokens stay -inf). |A(p)| = 1 (a ghost token): a = 1.
    """

    def __init__(self, trie, probs: torch.Tensor, num_beams: int, prompt_len: int, guidance_scale: float):
        self.trie, self.probs, self.B, self.L, self.gs = trie, probs.float(), num_beams, prompt_len, guidance_scale
        self.under: dict[tuple[int, ...], list[int]] = {}
        for leaf, seq in enumerate(trie.sids):
            for d in range(1, len(seq) + 1):
                self.under.setdefault(seq[:d], []).append(leaf)
            self.under[(*seq, trie.end[0])] = [leaf]
        self._segments: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def masses(self, row: int, prefix: tuple[int, ...], allowed: list[int]) -> torch.Tensor:
        """mass(prefix + t) for every allowed t, + 1e-20 (one index_add per step; segments cached per prefix)."""
        seg = self._segments.get(prefix)
        if seg is None:
            under = [self.under.get((*prefix, t), []) for t in allowed]
            seg = self._segments[prefix] = (torch.tensor([x for u in under for x in u], dtype=torch.long),
                                            torch.tensor([j for j, u in enumerate(under) for _ in u], dtype=torch.long))
        leaves, which = seg
        return torch.zeros(len(allowed)).index_add_(0, which, self.probs[row, leaves]) + 1e-20

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.gs == 1.0:
            return scores
        out = scores.clone()
        for r in range(input_ids.shape[0]):
            prefix = tuple(input_ids[r, self.L:].tolist())
            allowed = self.trie.allowed(prefix)
            if len(allowed) < 2:  # a ghost token (or a finished beam): no assistant term
                out[r] = self.gs * scores[r]
                continue
            m = self.masses(r // self.B, prefix, allowed)
            a = torch.log(m / m.sum()).to(scores.device, scores.dtype)
            idx = torch.tensor(allowed, device=scores.device)
            out[r] = self.gs * scores[r]
            out[r, idx] = self.gs * scores[r, idx] + (1 - self.gs) * a
        return out


class _Temperature:
    def __init__(self, t: float):
        self.t = t

    def __call__(self, input_ids, scores):
        return scores / self.t


def title_trie(tt: TitleText, tokenizer):
    from tsrec.lm.decoding import SidTrie

    return SidTrie.from_texts({i: tt.response(i) for i in sorted(tt.titles)}, tokenizer)


def constrained_titles(model, tokenizer, trie, prompts: list[list[int]], beams: int, batch_size: int,
                       leaf_probs: torch.Tensor | None = None, guidance_scale: float = 1.0,
                       temperature: float = 1.0) -> tuple[list[list[int]], list[list[float]]]:
    """Title-trie beam search per prompt (``reference_beam_search``, length_penalty 0): the leaf ids best first
    and their scores. ``leaf_probs`` [n_prompts, n_leaves]: D3's assistant (``AssistantProcessor``)."""
    from tsrec.lm.decoding import left_pad, reference_beam_search

    pad = tokenizer.eos_token_id
    dev = next(model.parameters()).device
    leaves, scores = [], []
    for s in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[s:s + batch_size], pad, device=dev)
        procs = [] if temperature == 1.0 else [_Temperature(temperature)]
        if leaf_probs is not None and guidance_scale < 1.0:
            procs.append(AssistantProcessor(trie, leaf_probs[s:s + batch_size], beams, ids.shape[1], guidance_scale))
        res = reference_beam_search(model, ids, mask, trie, beams, logits_processor=procs or None)
        for row, sc in zip(res.sid_ids.tolist(), res.scores.tolist()):
            keep = [(leaf, x) for leaf, x in zip(row, sc) if leaf >= 0]
            leaves.append([leaf for leaf, _ in keep])
            scores.append([round(x, 5) for _, x in keep])
    return leaves, scores



def assistant_model(job: LLMJob, acfg: AssistantConfig, index_file: Path):
    """D3's text-free assistant: a SASRec of this harness (``tsrec.baselines``: its net, trainer and the
    ``baselines`` section's settings ``acfg``), with the lr / dropout / width the baseline stage's tuning chose
    where its record exists (``baselines.out``), trained with ``job.seed``. Returns (recommender, chosen knobs)."""
    data = SeqData(job.data_dir, int(acfg.max_len), index_file=index_file)
    knobs: dict = {}
    for s in [job.seed, *acfg.seeds]:
        f = baseline_seed_file(acfg.out, job.ds, "sasrec", s)
        if f.is_file():
            knobs = read_with_run(f).get("config") or {}
            break
    sas, train = dict(acfg.sasrec), dict(acfg.train)
    sas.update({k: v for k, v in (("dropout", knobs.get("dropout")), ("hidden", knobs.get("width"))) if v is not None})
    if "lr" in knobs:
        train["lr"] = knobs["lr"]
    rec = IDRecommender(data, int(job.seed), "sasrec", from_dict(SASRecConfig, sas, "baselines.sasrec"),
                        from_dict(FitConfig, train, "baselines.train"))
    return rec, knobs


def assistant_probs(job: LLMJob, acfg: AssistantConfig, index_file: Path, histories: list[list[int]],
                    trie) -> tuple[torch.Tensor, dict]:
    """[rows, leaves]: the assistant's (``assistant_model``) softmax over all items, summed per trie leaf."""
    rec, knobs = assistant_model(job, acfg, index_file)
    fitted = rec.fit()
    probs = torch.cat([rec.scores(histories[s:s + 512]).softmax(-1) for s in range(0, len(histories), 512)])
    col = {item: c for c, item in enumerate(rec.data.item_ids)}
    member = torch.zeros(len(rec.data.item_ids), len(trie))
    for leaf, items in enumerate(trie.items):
        for i in items:
            member[col[i], leaf] = 1.0
    info = {"model": "sasrec", "config": knobs, "epochs": fitted.epochs, "best_epoch": fitted.best_epoch,
            "valid_NDCG@10": fitted.best_valid, "train_time_s": round(fitted.train_time_s, 1)}
    return probs @ member, info

