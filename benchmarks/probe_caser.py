"""Why Caser stays at the Pop level on Industrial (issue 14): the production Caser beside variants that each
change one thing, same data, seed, optimiser and stopping rule (params.yaml ``baselines.train``).

Variants: ``caser`` (the production net, ``baselines.caser`` config); ``no_final_relu``; ``vertical_only``
(horizontal filters zeroed); ``untied_output`` (a separate output embedding + per-item bias, as the original
Caser code's W2/b2); ``input_x_sqrt_d`` (input embeddings x sqrt(d), as SASRec/HSTU); ``window_5`` (L = 5, the
Caser paper's default); and two one-layer probes that are not Caser: ``last_item_linear`` (user vector = a
Linear of the last item's embedding) and ``last_item_linear_x_sqrt_d``.
Run: flock /tmp/tsrec-cpu.lock python benchmarks/probe_caser.py [--dataset DS] [--variants a,b]
Writes results/probes/caser_<DS>.md and .json (valid NDCG@10 SID level, best epoch, stop, curve).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
import yaml
from torch import nn

from tsrec.baselines import sequential as seq
from tsrec.baselines.trainer import FitConfig, SeqData
from tsrec.core.config import from_dict
from tsrec.core.io import atomic_file
from tsrec.data.layout import resolve_index

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("caser", "no_final_relu", "vertical_only", "untied_output", "input_x_sqrt_d", "window_5",
            "last_item_linear", "last_item_linear_x_sqrt_d")


def caser_variant(variant: str) -> type[seq.Caser]:
    class Variant(seq.Caser):
        def __init__(self, n_items, max_len, cfg):
            super().__init__(n_items, max_len, cfg)
            self.out_emb = nn.Embedding(n_items, cfg.hidden)  # used by untied_output only
            nn.init.normal_(self.out_emb.weight, std=1.0 / cfg.hidden)  # Caser code: W2 ~ N(0, 1/d), b2 = 0
            self.out_bias = nn.Parameter(torch.zeros(n_items))
            self.last_linear = nn.Linear(cfg.hidden, cfg.hidden)  # the last_item probes only

        def encode(self, s, lengths):
            L = s.size(1)
            shift = (torch.arange(L).unsqueeze(0) - (L - lengths).unsqueeze(1)) % L
            e = self.item_emb(torch.gather(s, 1, shift))
            if variant.endswith("x_sqrt_d"):
                e = e * self.cfg.hidden ** 0.5
            if variant.startswith("last_item_linear"):
                return self.last_linear(e[:, -1])
            out_v = self.conv_v(e.transpose(1, 2)).flatten(1)
            out_h = []
            for h, lin in enumerate(self.conv_h, start=1):
                windows = e.unfold(1, h, 1).transpose(2, 3).flatten(2)
                pooled = torch.relu(lin(windows)).max(dim=1).values
                out_h.append(torch.zeros_like(pooled) if variant == "vertical_only" else pooled)
            z = self.fc(self.drop(torch.cat([out_v, *out_h], dim=1)))
            return z if variant == "no_final_relu" else torch.relu(z)

        def scores(self, s, lengths):
            if variant == "untied_output":
                return self.encode(s, lengths) @ self.out_emb.weight.T + self.out_bias
            return super().scores(s, lengths)

    return Variant


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="Industrial_and_Scientific")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    args = ap.parse_args(argv)
    params = yaml.safe_load(Path(args.params).read_text(encoding="utf-8"))
    base = params["baselines"]
    torch.set_num_threads(base["threads"])
    fit = from_dict(FitConfig, base["train"], "baselines.train", args.params)
    net_cfg = from_dict(seq.CaserConfig, base["caser"], "baselines.caser", args.params)
    seed = params["seed"]
    rows, datas = [], {}
    for variant in args.variants.split(","):
        max_len = 5 if variant == "window_5" else base["max_len"]
        if max_len not in datas:
            datas[max_len] = SeqData(Path(base["data"]) / args.dataset, max_len,
                                     index_file=resolve_index(params, args.dataset))
        seq.NETS["caser_probe"] = caser_variant(variant)
        rec = seq.IDRecommender(datas[max_len], seed, "caser_probe", net_cfg, fit)
        result = rec.fit()
        rows.append({"variant": variant, "valid_NDCG@10": round(result.best_valid, 4),
                     "best_epoch": result.best_epoch, "epochs": result.epochs, "stopped": result.stopped,
                     "train_loss_at_best": round(result.curve[result.best_epoch - 1]["train_loss"], 3),
                     "train_time_s": round(result.train_time_s, 1), "curve": result.curve})
        print(f"{variant}: valid NDCG@10 {result.best_valid:.4f} (epoch {result.best_epoch}/{result.epochs})",
              flush=True)
    out = REPO / "results" / "probes" / f"caser_{args.dataset}"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"dataset": args.dataset, "seed": seed, "fit": dataclasses.asdict(fit),
              "caser": dataclasses.asdict(net_cfg), "command": "python benchmarks/probe_caser.py "
              + f"--dataset {args.dataset} --variants {args.variants}", "rows": rows}
    with atomic_file(out.with_suffix(".json")) as fh:
        fh.write(json.dumps(record, indent=1))
    lines = [f"# Caser probe, {args.dataset} (valid NDCG@10, SID level; seed {seed})", "",
             f"Command: `{record['command']}`. Fit: `{record['fit']}`; net: `{record['caser']}`.", "",
             "| variant | valid NDCG@10 | best epoch | epochs | stopped | train loss at best |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['valid_NDCG@10']:.4f} | {r['best_epoch']} | {r['epochs']} | {r['stopped']} | "
              f"{r['train_loss_at_best']} |" for r in rows]
    with atomic_file(out.with_suffix(".md")) as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
