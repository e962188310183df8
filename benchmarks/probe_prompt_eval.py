"""Evaluate cost of the authors' test prompt vs the cpu one: rows/s of the constrained beam search (B=20,
batch 8, 1 thread) on the same seeded test rows, UNTRAINED backbone (first backbone.keep_layers layers) + SID
tokens (the search's cost does not depend on the weights). Prompts from `tsrec.commands.profiles.resolve(params, P)`.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/probe_prompt_eval.py [--rows 48] [--out FILE]

Run in the repo (or a folder with its data/ and artifacts/); needs `tsrec data` and `tsrec backbone`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tsrec.commands import profiles
from tsrec.core.config import load_params
from tsrec.data.datasets import load_index, load_split
from tsrec.lm.decoding import SidTrie
from tsrec.lm.llm import add_sid_tokens, backbone_config, load_backbone
from tsrec.model.scoring import evaluate_rows, select_rows
from tsrec.data.sids import index_tokens
from tsrec.model.tasks import encode_prompt, seqrec_prompt, tasks_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="Industrial_and_Scientific")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = load_params()
    ds = Path(params["data"].get("out", "data")) / args.dataset
    index = load_index(ds / "sid_index.json")
    model, tok = load_backbone(backbone_config(params).path, backbone_config(params).keep_layers)
    add_sid_tokens(model, tok, index_tokens(index))
    test = load_split(ds, "test")
    rows = test.iloc[select_rows(len(test), args.rows, 42)]
    out = {}
    for name, kind in (("cpu", "seqrec"), ("authors", "paraphrase")):
        p = tasks_config(profiles.resolve(params, name)).prompts
        trie = SidTrie.from_index(index, tok, suffix=p.eos_suffix)
        _, s = evaluate_rows(model, tok, trie, index, rows, lambda h, p=p, kind=kind: seqrec_prompt(h, p, kind),
                             encode_prompt, beams=20, batch_size=8)
        out[name] = {k: s[k] for k in ("prompt_tokens_mean", "wall_time_s", "rows_per_s")}
    out["authors_over_cpu_rows_per_s"] = round(out["authors"]["rows_per_s"] / out["cpu"]["rows_per_s"], 3)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
