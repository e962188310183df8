"""SA-Init rescale target: ``old_rows`` (ours) vs ``current_table`` (the authors' code) on the real backbone.

    python benchmarks/probe_sainit_target.py [--dataset Industrial_and_Scientific] [--out FILE]

Input embeddings only (1 layer is loaded: SA-Init reads the static table). Prints the targets and how far the
two initialisations of the SID rows differ (cosine, relative norm). Needs `tsrec data`, `backbone`, `keywords`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tsrec.core.config import load_params
from tsrec.data.datasets import load_index
from tsrec.semantics.keyword_cache import cache_path, keywords_config, read_records
from tsrec.data.layout import resolve_index
from tsrec.lm.llm import add_sid_tokens, backbone_config, load_backbone
from tsrec.model.sainit import SAInitConfig, sa_init
from tsrec.data.sids import index_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="Industrial_and_Scientific")
    ap.add_argument("--out")
    args = ap.parse_args()
    params = load_params()
    tokens = index_tokens(load_index(resolve_index(params, args.dataset)))
    cache = read_records(cache_path(keywords_config(params), args.dataset))
    rows, reports = {}, {}
    for target in ("old_rows", "current_table"):
        torch.manual_seed(0)  # the same mean-resized new rows in both
        model, tok = load_backbone(backbone_config(params).path, 1)
        ids = add_sid_tokens(model, tok, tokens)
        reports[target] = sa_init(model, tok, dict(zip(tokens, ids)), cache, SAInitConfig(rescale_target=target))
        rows[target] = model.get_input_embeddings().weight[ids].detach().clone()
    a, b = rows["old_rows"], rows["current_table"]
    out = {"dataset": args.dataset, "tokens": len(tokens), "old_rows_target": reports["old_rows"]["target_norm"],
           "current_table_target_first_last": reports["current_table"]["target_norm_first_last"],
           "min_cosine": torch.nn.functional.cosine_similarity(a, b, dim=1).min().item(),
           "max_relative_norm_difference": ((a.norm(dim=1) - b.norm(dim=1)).abs() / a.norm(dim=1)).max().item()}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
