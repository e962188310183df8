"""SA-Init on the real converted backbone with the authors' Industrial keyword cache (560 SID tokens).

Times ``sa_init`` per pooling (keep_layers 8, as in the CPU profile) and checks the result makes sense:
``hit@10`` = share of SID tokens whose 10 nearest old-vocabulary rows (cosine) include one of the
token's own keyword pieces (0 for the random init). Skips without the converted backbone or the mirror.
Run: flock /tmp/tsrec-cpu.lock python -m pytest -s benchmarks/bench_sainit.py --benchmark-enable
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BACKBONE = Path(os.environ.get("TSREC_BACKBONE", REPO / "artifacts" / "backbone" / "smollm2-135m-instruct"))
MIRROR = Path(os.environ.get("TSREC_MIRROR") or REPO.parent / "shared" / "datasets")
CACHE = MIRROR / "tsrec-authors" / "semantics" / "Industrial_and_Scientific.description_keywords.json"
KEEP_LAYERS = 8

pytestmark = [
    pytest.mark.skipif(not (BACKBONE / "config.json").is_file(), reason=f"no converted backbone at {BACKBONE}"),
    pytest.mark.skipif(not CACHE.is_file(), reason=f"authors' keyword cache not found at {CACHE}"),
]
_STATE: dict = {}


def _setup():
    if not _STATE:
        from tsrec.semantics.keyword_cache import read_records
        from tsrec.lm.llm import add_sid_tokens, load_backbone
        from tsrec.data.sids import sid_sort_key

        torch.manual_seed(0)
        model, tok = load_backbone(BACKBONE, keep_layers=KEEP_LAYERS)
        cache = read_records(CACHE)
        tokens = sorted((r["token"] for r in cache), key=sid_sort_key)
        n_old = len(tok)
        ids = dict(zip(tokens, add_sid_tokens(model, tok, tokens)))
        _STATE.update(model=model, tok=tok, cache=cache, ids=ids, n_old=n_old,
                      default=model.get_input_embeddings().weight[list(ids.values())].detach().clone())
    return _STATE


def _hit_at_10(s) -> float:
    """Share of SID rows whose 10 nearest old-vocabulary rows hold one of their own keyword pieces."""
    w = s["model"].get_input_embeddings().weight.detach()
    old = torch.nn.functional.normalize(w[: s["n_old"]], dim=1)
    hits = 0
    for r in s["cache"]:
        v = torch.nn.functional.normalize(w[s["ids"][r["token"]]], dim=0)
        top = set((old @ v).topk(10).indices.tolist())
        pieces = set(s["tok"](" ".join(r["keywords"]), add_special_tokens=False).input_ids)
        hits += bool(top & pieces)
    return hits / len(s["cache"])


@pytest.mark.parametrize("pooling", ["random", "mean", "idf", "max", "contextual"])
def test_sainit_real(benchmark, pooling):
    from tsrec.model.sainit import SAInitConfig, sa_init

    s = _setup()
    w = s["model"].get_input_embeddings().weight
    with torch.no_grad():  # start every variant from the framework default rows
        w[list(s["ids"].values())] = s["default"]
    cfg = SAInitConfig(random=pooling == "random", pooling="mean" if pooling == "random" else pooling)
    report = benchmark.pedantic(sa_init, args=(s["model"], s["tok"], s["ids"], s["cache"], cfg),
                                rounds=1, iterations=1)
    hit = _hit_at_10(s)
    if pooling == "random":
        assert report["initialised"] == 0
    else:
        assert report["initialised"] == 560
        norms = w[list(s["ids"].values())].norm(dim=1)
        torch.testing.assert_close(norms, torch.full_like(norms, report["target_norm"]))
    benchmark.extra_info.update(pooling=pooling, keep_layers=KEEP_LAYERS, hit_at_10=round(hit, 3),
                                mean_pieces=report.get("mean_pieces"), target_norm=report.get("target_norm"))
    print(f"\n{pooling}: hit@10={hit:.3f} pieces/token={report.get('mean_pieces')} "
          f"target_norm={report.get('target_norm')}")
