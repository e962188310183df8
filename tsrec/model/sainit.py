"""SA-Init: initialise new SID token rows from the backbone's own embeddings of the token's keywords.

Authors' recipe (REFERENCE.md section 2): tokenize the keywords joined with spaces, look up the INPUT
embedding rows (static table), average over all sub-word pieces, rescale to the mean L2 norm of the
(pre-resize) table, write into the token's row. (The authors' code rescales to the mean norm of the
CURRENT table, new rows included, row after row: ``rescale_target: current_table``.) Tied embeddings stay tied, so the output-head row changes too.

Variants (params section ``sainit``): ``source`` keywords | description | both (keywords, then the
description, in one text); ``pooling`` mean | idf (idf-weighted mean, smooth idf of each sub-word piece
over the cache's texts) | max (element-wise) | contextual (mean of the backbone's last hidden states over
the text); ``rescale`` on/off; ``levels`` any subset of a/b/c; ``random`` keeps the framework's default
init (HF mean-resizing) for the ablation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from typing import Any, Literal

from tsrec.core.config import from_dict, section
from tsrec.core.errors import TsrecError
from tsrec.semantics.keyword_cache import check_cache

log = logging.getLogger(__name__)

LEVELS = ("a", "b", "c")


@dataclasses.dataclass
class SAInitConfig:
    random: bool = False                                      # True: framework default init (ablation)
    source: Literal["keywords", "description", "both"] = "keywords"
    pooling: Literal["mean", "idf", "max", "contextual"] = "mean"
    rescale: bool = True                                      # to the mean L2 norm of rescale_target
    # old_rows: the pre-resize table (fixed); current_table: the authors' code, the mean over the whole
    # table at the time each row is written (new rows included, so it drifts as rows fill; cache order)
    rescale_target: Literal["old_rows", "current_table"] = "old_rows"
    levels: list[str] = dataclasses.field(default_factory=lambda: list(LEVELS))
    batch_size: int = 16                                      # contextual pooling: texts per forward pass

    def validate(self) -> None:
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad:
            raise ValueError(f"levels must be a subset of {list(LEVELS)}, got {self.levels}")
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels has duplicates: {self.levels}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def config(params: dict[str, Any]) -> SAInitConfig:
    return section(params, "sainit", SAInitConfig)



def token_text(record: dict[str, Any], source: str) -> str:
    """The text pooled for one token: keywords joined with spaces, the description, or both."""
    parts = []
    if source in ("keywords", "both"):
        parts.append(" ".join(str(k).strip() for k in record.get("keywords") or [] if str(k).strip()))
    if source in ("description", "both"):
        parts.append(str(record.get("description") or "").strip())
    return " ".join(p for p in parts if p)


def _select(token_ids_by_token: dict[str, int], levels: list[str]) -> dict[str, int]:
    from tsrec.data.sids import sid_sort_key

    chosen = {t: i for t, i in token_ids_by_token.items() if sid_sort_key(t)[0] in levels}
    return dict(sorted(chosen.items(), key=lambda kv: sid_sort_key(kv[0])))


def idf_weights(texts: list[list[int]]) -> dict[int, float]:
    """Smooth idf per sub-word piece over documents ``texts``: log((1 + N) / (1 + df)) + 1 (always > 0)."""
    n = len(texts)
    df = Counter(i for ids in texts for i in set(ids))
    return {i: math.log((1 + n) / (1 + d)) + 1.0 for i, d in df.items()}


def pool(vectors, ids: list[int], pooling: str, idf: dict[int, float] | None = None):
    """Pool rows ``vectors`` [n, d] (one per piece id in ``ids``) into one [d] vector."""
    import torch

    if pooling in ("mean", "contextual"):
        return vectors.mean(0)
    if pooling == "max":
        return vectors.max(0).values
    if pooling == "idf":
        w = torch.tensor([idf[i] for i in ids], dtype=vectors.dtype)
        return (w[:, None] * vectors).sum(0) / w.sum()
    raise ValueError(pooling)


def _contextual(model, tokenizer, id_lists: list[list[int]], batch_size: int) -> list:
    """Mean of the backbone's last hidden states over each text's pieces (no special tokens added)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for s in range(0, len(id_lists), batch_size):
                chunk = id_lists[s:s + batch_size]
                width = max(len(x) for x in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for j, x in enumerate(chunk):  # right padding: causal states of real pieces are unaffected
                    ids[j, :len(x)] = torch.tensor(x)
                    mask[j, :len(x)] = 1
                base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
                h = base(input_ids=ids, attention_mask=mask).last_hidden_state
                for j, x in enumerate(chunk):
                    out.append(h[j, :len(x)].float())
    finally:
        model.train(was_training)
    return out


def _piece_ids(tokenizer, chosen: dict[str, int], records: dict[str, dict], source: str,
               new_ids: set[int]) -> list[list[int]]:
    """Per chosen token, the vocabulary pieces of its text (never the random rows of SID tokens it names)."""
    id_lists = []
    for t in chosen:
        ids = [i for i in tokenizer(token_text(records[t], source), add_special_tokens=False)["input_ids"]
               if i not in new_ids]
        if not ids:
            raise TsrecError("text has no pieces after tokenization", field=t)
        id_lists.append(ids)
    return id_lists


def _pooled_vectors(table, id_lists: list[list[int]], row_ids: list[int], states, target: float,
                    cfg: SAInitConfig) -> tuple[list, list[float]]:
    """The pooled vector of each token (``cfg.pooling``), rescaled to ``target`` (``old_vocab``) or to the mean
    row norm of the live table as each row is written (``current_table``: the targets are returned)."""
    import torch

    idf = idf_weights(id_lists) if cfg.pooling == "idf" else None
    vectors, targets = [], []
    running = cfg.rescale and cfg.rescale_target == "current_table"
    if running:  # sum of the row norms of the live table, updated as each row is written
        norms = table.norm(dim=1).double()
        norm_sum = norms.sum().item()
    for k, ids in enumerate(id_lists):
        rows = states[k] if cfg.pooling == "contextual" else table[torch.tensor(ids)]
        v = pool(rows, ids, cfg.pooling, idf)
        if cfg.rescale:
            t = norm_sum / len(norms) if running else target
            v = v * (t / v.norm().clamp_min(1e-12))
            if running:
                norm_sum += v.norm().item() - norms[row_ids[k]].item()
                norms[row_ids[k]] = v.norm().item()
                targets.append(t)
        vectors.append(v)
    return vectors, targets


def sa_init(model, tokenizer, token_ids_by_token: dict[str, int], cache_records: list[dict[str, Any]],
            cfg: SAInitConfig | dict | None = None) -> dict[str, Any]:
    """Write SA-Init vectors into the rows of the SID tokens of ``cfg.levels``; returns a small report.

    ``token_ids_by_token``: every SID token added to the model (all levels) -> its id; rows outside the
    selected levels and all old-vocabulary rows are left unchanged. Call before LoRA wrapping.
    """
    import torch

    from tsrec.lm.llm import is_tied

    if cfg is None:
        cfg = SAInitConfig()
    elif isinstance(cfg, dict):
        cfg = from_dict(SAInitConfig, cfg, "sainit")
    else:
        cfg.validate()
    if hasattr(model, "peft_config"):
        raise TsrecError("sa_init must run on the base model, before prepare_for_finetune wraps it")
    report: dict[str, Any] = {"random": cfg.random, "source": cfg.source, "pooling": cfg.pooling,
                              "rescale": cfg.rescale, "levels": list(cfg.levels), "initialised": 0}
    if cfg.random:
        log.info("SA-Init off: new rows keep the framework default init")
        return report
    chosen = _select(token_ids_by_token, cfg.levels)
    if not chosen:
        log.warning("SA-Init: no SID tokens at levels %s", cfg.levels)
        return report
    records = check_cache(cache_records, list(chosen), cfg.source, known=list(token_ids_by_token))
    if cfg.rescale and cfg.rescale_target == "current_table":  # rows are written in the cache's order
        order = [r["token"] for r in cache_records if r["token"] in chosen]
        chosen = {t: chosen[t] for t in order}

    emb = model.get_input_embeddings().weight
    tied = is_tied(model)
    new_ids = set(int(i) for i in token_ids_by_token.values())
    old_rows = torch.tensor([i for i in range(emb.shape[0]) if i not in new_ids], dtype=torch.long)
    with torch.no_grad():
        table = emb.detach().float()
        target = table[old_rows].norm(dim=1).mean().item()

    id_lists = _piece_ids(tokenizer, chosen, records, cfg.source, new_ids)
    states = _contextual(model, tokenizer, id_lists, cfg.batch_size) if cfg.pooling == "contextual" else None
    vectors, targets = _pooled_vectors(table, id_lists, list(chosen.values()), states, target, cfg)
    running = cfg.rescale and cfg.rescale_target == "current_table"
    with torch.no_grad():
        idx = torch.tensor(list(chosen.values()), dtype=torch.long)
        emb[idx] = torch.stack(vectors).to(emb.dtype)
        out = model.get_output_embeddings()
        if out is not None and not tied and out.weight.shape[0] == emb.shape[0]:
            log.info("untied output head: SA-Init sets input rows only (authors' recipe)")
    if tied and not is_tied(model):
        raise TsrecError("SA-Init broke the embedding tie (internal error)")
    if running:
        report.update(rescale_target=cfg.rescale_target, target_norm_first_last=[targets[0], targets[-1]])
    report.update(initialised=len(chosen), target_norm=target,
                  mean_pieces=sum(len(x) for x in id_lists) / len(id_lists),
                  per_level={lv: sum(1 for t in chosen if t[1] == lv) for lv in cfg.levels})
    log.info("SA-Init: %d rows (%s, %s pooling, rescale=%s, levels=%s, %.1f pieces/token)", len(chosen),
             cfg.source, cfg.pooling, cfg.rescale, "".join(cfg.levels), report["mean_pieces"])
    return report
