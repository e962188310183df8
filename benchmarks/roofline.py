"""Roofline of the CPU profile: what the GEMMs can do at the model's own shapes vs what training and beam search get.

One command, one JSON (default ``results/benchmarks/roofline.json``)::

    python benchmarks/roofline.py                      # 4-layer full FT + evaluate, 1 and 2 threads GEMMs
    python benchmarks/roofline.py --lora30             # + the 30-layer LoRA step (keep_layers null, finetune lora)
                                                       #   and beam search on the merged 30-layer model

In ONE process and ONE interleaved loop (rep 1: every case once, GEMMs included, rep 2: every case once, ...),
so a shared, drifting box slows all cases alike and the ratios stay comparable; medians and min/max over the
reps are reported. (The 30-layer LoRA model repeats the train-shape GEMMs in its own loop.)

* ``gemm``: fp32 ``F.linear`` rate at the model's shapes (hidden 576, MLP 1536, q/k/v/o, the LM head over the
  whole vocabulary) at the batch's row count (a train micro-batch's tokens; the decode rows = prompts x beams),
  on 1 and 2 threads. This is the attainable rate the others are judged by.
* ``train``: one optimizer step as the train stage does it (``tsrec.model.sft.label_position_loss``, the Trainer's
  default fused AdamW, grad-norm clipping at 1.0, ``zero_grad``) on synthetic batches with the default
  profile's length mix (``results/profiles/dryrun/tsrec.md``: seqrec-like, mid, TS-Align-like rows), each case a
  code path (``default`` = today's). Rate = analytic FLOPs (stated in the file) / measured time.
* ``evaluate``: ``tsrec.lm.decoding.beam_search`` (B = 20) over synthetic seqrec prompts (~22 tokens, the CPU
  prompt's mean) with a random 3 x 256 SID trie of Industrial's size; cases differ in prompts per batch.
  Cases that must rank identically are checked (``identical_rankings``).

The backbone is the converted one (``tsrec backbone``; ``--backbone`` or ``$TSREC_BACKBONE``), with 768 SID
tokens added; weights are untrained (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _pin_as_the_stages() -> None:
    """As the CLI (tsrec/cli.py) before torch loads: idle OpenMP threads sleep instead of spinning, and the
    kernel set of params.yaml's ``repro.cpu_capability`` (tsrec.core.pinning; ``$TSREC_PARAMS`` picks the file)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:
        return
    from tsrec.core import pinning
    from tsrec.core.config import load_params

    cfg = pinning.config(load_params(os.environ.get("TSREC_PARAMS", str(REPO / "params.yaml"))))
    os.environ.setdefault(pinning.ENV, cfg.cpu_capability if cfg.cpu_capability != "native" else "")
    if not os.environ[pinning.ENV]:
        del os.environ[pinning.ENV]


_pin_as_the_stages()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

log = logging.getLogger("roofline")

SID_TOKENS = [f"<{lv}_{c}>" for lv in "abc" for c in range(256)]
# (name, examples per epoch, mean tokens, label tokens per example): results/profiles/dryrun/tsrec.md (default
# profile, tsrec variant); "mid" pools item2sid, sid2item, sid_hist2title and title_hist2sid
MIX = [("short", 10393, 21.4, 4.0), ("mid", 3552, 44.5, 13.8), ("long", 1120, 109.2, 49.6)]
BATCH = 16          # train.batch_size
EVAL_PROMPT = 22    # mean evaluation prompt tokens, CPU prompt (results/profiles/dryrun/eval_probe.json)
N_SIDS = 3686       # distinct SIDs of the order of Industrial's index
GEMM_CALLS = 3      # F.linear calls per timed GEMM case


# ---------------------------------------------------------------- machine
def machine() -> dict:
    flags, model = [], ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    simd = [f for f in flags if f.startswith(("avx", "fma", "amx", "sse4"))]
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "simd_flags": sorted(simd),
            "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": torch.backends.mkldnn.is_available(), "loadavg_start": list(os.getloadavg()),
            "python": platform.python_version()}


# ---------------------------------------------------------------- timing
def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def summary(times: list[float], work: float) -> dict:
    """Median / min / max seconds and the rate ``work / seconds`` (median, and best = from the fastest rep)."""
    med = statistics.median(times)
    return {"reps": len(times), "s_median": round(med, 4), "s_min": round(min(times), 4),
            "s_max": round(max(times), 4), "rate_median": round(work / med, 2), "rate_best": round(work / min(times), 2)}


def interleave(cases: dict, reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every case once per rep, A B C A B C ..., after ``warmup`` untimed rounds; seconds per case."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(reps):
        for name, fn in cases.items():
            out[name].append(timed(fn))
        log.info("rep %d/%d: %s", r + 1, reps, {k: round(v[-1], 3) for k, v in out.items()})
    return out


# ---------------------------------------------------------------- model
def load(backbone: Path, keep_layers: int | None, finetune: str):
    from tsrec.lm.llm import LoraParams, add_sid_tokens, load_backbone, prepare_for_finetune

    torch.manual_seed(0)
    model, tok = load_backbone(backbone, keep_layers=keep_layers)
    new = add_sid_tokens(model, tok, SID_TOKENS)
    model = prepare_for_finetune(model, finetune, LoraParams() if finetune == "lora" else None, new)
    return model, tok


def shapes(model) -> dict:
    cfg = model.config.get_text_config(decoder=True)
    h, inter, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    linears = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]  # q k v o gate up down
    return {"hidden": h, "mlp": inter, "kv_dim": kv, "layers": L, "heads": cfg.num_attention_heads,
            "vocab": model.get_input_embeddings().weight.shape[0], "linears": linears,
            "layer_params": L * sum(a * b for a, b in linears)}


# ---------------------------------------------------------------- GEMM
def gemm_cases(sh: dict, rows: dict[str, int], threads: list[int]) -> tuple[dict, dict]:
    """``F.linear`` on every layer shape in turn ("layers") and the full-vocabulary head ("head")."""
    cases, flops = {}, {}
    g = torch.Generator().manual_seed(0)
    for label, m in rows.items():
        xs = {k: torch.randn(m, k, generator=g) for k in {a for a, _ in sh["linears"]}}
        ws = [torch.randn(n, k, generator=g) * 0.02 for k, n in sh["linears"]]
        head = torch.randn(sh["vocab"], sh["hidden"], generator=g) * 0.02
        for t in threads:
            def layer_mix(xs=xs, ws=ws, t=t):
                torch.set_num_threads(t)
                for _ in range(GEMM_CALLS):
                    for w in ws:
                        F.linear(xs[w.shape[1]], w)

            def head_gemm(x=xs[sh["hidden"]], head=head, t=t):
                torch.set_num_threads(t)
                for _ in range(GEMM_CALLS):
                    F.linear(x, head)

            cases[f"gemm_layers_{label}_M{m}_t{t}"] = layer_mix
            flops[f"gemm_layers_{label}_M{m}_t{t}"] = GEMM_CALLS * 2 * m * sum(a * b for a, b in sh["linears"])
            cases[f"gemm_head_{label}_M{m}_t{t}"] = head_gemm
            flops[f"gemm_head_{label}_M{m}_t{t}"] = GEMM_CALLS * 2 * m * sh["hidden"] * sh["vocab"]
    return cases, flops


# ---------------------------------------------------------------- train step
def train_batches(tok, seed: int = 0) -> list[dict]:
    """One micro-batch per MIX group: BATCH rows of mean length +-10% (group_by_length keeps them close)."""
    from tsrec.model.sft import Collator

    rng = random.Random(seed)
    out = []
    for name, _, mean, n_lab in MIX:
        rows = []
        for i in range(BATCH):
            n = max(int(round(mean * (0.9 + 0.2 * i / (BATCH - 1)))), int(n_lab) + 2)
            ids = [rng.randrange(len(tok)) for _ in range(n)]
            k = int(round(n_lab))
            rows.append({"input_ids": ids, "labels": [-100] * (n - k) + ids[n - k:], "weight": 1.0})
        out.append(Collator(tok.pad_token_id)(rows))
    return out


def train_flops(sh: dict, batch: dict, finetune: str) -> dict:
    """Analytic FLOPs of one step. Full FT: 6 x layer params per token (fwd 2, bwd dX 2, dW 2) + attention
    scores/values (fwd+bwd 3 x 4 x L^2 x hidden per row and layer) + the head at label positions only (6 x V x
    hidden per label token). LoRA: frozen base weights get no dW: 4 x per token (the adapters' r=16 terms are
    ignored, < 3%). Padding positions are computed but not counted as useful (``useful`` vs ``padded``)."""
    mask, labels = batch["attention_mask"], batch["labels"][:, 1:]
    tokens = int(mask.sum())
    padded = mask.numel()
    label_tokens = int((labels != -100).sum())
    per_tok = 6 if finetune == "full" else 4
    lens = mask.sum(1).double()
    attn = 3 * 4 * float((lens ** 2).sum()) * sh["hidden"] * sh["layers"] * (1 if finetune == "full" else 2 / 3)
    head = per_tok * sh["vocab"] * sh["hidden"] * label_tokens
    useful = per_tok * sh["layer_params"] * tokens + attn + head
    return {"tokens": tokens, "padded_tokens": padded, "label_tokens": label_tokens,
            "flops_useful": useful, "flops_head": head, "flops_per_token": round(useful / tokens),
            "flops_padded_extra": per_tok * sh["layer_params"] * (padded - tokens)}


def trainer_optimizer(model, lr: float = 1e-3):
    """The Trainer's default optimizer (fused AdamW in transformers 5) over the trainable parameters."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir="/tmp/tsrec-roofline", report_to="none", learning_rate=lr)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    opt = cls([p for p in model.parameters() if p.requires_grad], **kwargs)
    return opt, {"optimizer": cls.__name__, **{k: v for k, v in kwargs.items() if k in ("fused", "foreach")}}


def legacy_loss(model, head, inputs: dict):
    """``tsrec.model.sft.label_position_loss`` before issue 38: the model also computed the (unused) logits of the
    last position (``logits_to_keep=1``). Kept here only as the benchmark's "before" case."""
    labels = inputs["labels"][:, 1:]
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                output_hidden_states=True, logits_to_keep=1, use_cache=False)
    keep = labels != -100
    ce = F.cross_entropy(head(out.hidden_states[-1][:, :-1][keep]).float(), labels[keep], reduction="none")
    return (ce * inputs["weight"].to(ce.dtype)[:, None].expand_as(labels)[keep]).sum(), keep.sum()


def make_step(model, batch: dict, opt, threads: int, loss_fn=None, *, max_grad_norm: float = 1.0):
    """The Trainer's step: loss (default ``tsrec.model.sft.label_position_loss``), backward, clip, optimizer step,
    zero_grad, on ``threads`` torch threads."""
    from tsrec.model.sft import label_position_loss

    loss_fn = loss_fn or label_position_loss
    head = model.get_output_embeddings()
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        torch.set_num_threads(threads)
        model.train()
        total, count = loss_fn(model, head, batch)
        (total / count).backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        model.zero_grad()

    return step


def op_shares(step) -> dict:
    """One profiled step: share of the self CPU time in GEMMs, the optimizer (fused AdamW + clip's norm),
    attention, and everything else (elementwise: norms, RoPE, SiLU, residuals, casts, fills, the embedding
    gradient). What is not a GEMM is what keeps the step below the GEMM rate."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    groups = {"gemm": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
              "optimizer": ("aten::_fused_adamw_", "aten::linalg_vector_norm", "aten::_foreach_norm",
                            "aten::_foreach_mul_"),
              "attention": ("aten::_scaled_dot_product", "aten::_flash_attention")}
    tot = {k: 0.0 for k in (*groups, "other")}
    for ev in prof.key_averages():
        key = next((k for k, names in groups.items() if ev.key.startswith(names)), "other")
        tot[key] += ev.self_cpu_time_total
    total = sum(tot.values()) or 1.0
    return {k: round(v / total, 3) for k, v in tot.items()} | {"profiled_step_s": round(total / 1e6, 3)}


# ---------------------------------------------------------------- beam search
def eval_setup(tok, prompts: int, seed: int = 0):
    from tsrec.lm.decoding import SidTrie

    rng = random.Random(seed)
    sids: set[tuple[str, ...]] = set()
    while len(sids) < N_SIDS:
        sids.add(tuple(f"<{lv}_{rng.randrange(256)}>" for lv in "abc"))
    index = {i: list(s) for i, s in enumerate(sorted(sids))}
    trie = SidTrie.from_index(index, tok)
    items = list(index.values())
    seqs = []
    for _ in range(prompts):  # "User history: <a><b><c>...\nNext item:" with 3-7 history items (~22 tokens)
        hist = "".join("".join(items[rng.randrange(len(items))]) for _ in range(rng.randint(3, 7)))
        seqs.append(tok(f"User history: {hist}\nNext item:", add_special_tokens=False)["input_ids"])
    return trie, seqs


def eval_flops(sh: dict, seqs: list[list[int]], trie, beams: int) -> dict:
    """Per row: prefill 2 x layer params per prompt token + the head once (the first step reads the prefill's
    last logits); then one B-row forward per later step (SID levels 2..D, then the forced end tokens), each 2 x
    (layer params + V x hidden) per beam row. Attention over the prompt: 4 x len x hidden per layer and beam."""
    steps = trie.depth + len(trie.end) - 1
    mean_len = sum(map(len, seqs)) / len(seqs)
    prefill = 2 * sh["layer_params"] * mean_len + 2 * sh["vocab"] * sh["hidden"]
    decode = steps * beams * (2 * (sh["layer_params"] + sh["vocab"] * sh["hidden"])
                              + 4 * (mean_len + trie.depth) * sh["hidden"] * sh["layers"])
    return {"prompt_tokens_mean": round(mean_len, 1), "decode_forwards": steps, "beams": beams,
            "flops_per_row": round(prefill + decode), "head_share": round(
                (2 * sh["vocab"] * sh["hidden"] * (1 + steps * beams)) / (prefill + decode), 3)}


def eval_result(times: dict, res: dict, sh: dict, seqs, trie, beams: int, threads: int, prefix: str) -> dict:
    """The evaluate cases ``prefix<case>`` of ``times``: rows/s, GFLOP/s and their rankings against ``default_b8``'s."""
    ef, ref = eval_flops(sh, seqs, trie, beams), res["default_b8"]
    return {"analytic": ef, "prompts": len(seqs), "threads": threads, "cases": {
        k[len(prefix):]: summary(v, len(seqs)) | {"unit": "rows/s", "gflops_median": round(
            len(seqs) * ef["flops_per_row"] / 1e9 / statistics.median(v), 2),
            "identical_rankings": bool(torch.equal(res[k[len(prefix):]].sid_ids, ref.sid_ids)),
            "identical_scores": bool(torch.equal(res[k[len(prefix):]].scores, ref.scores)),
            "rows_with_other_ranking": int((res[k[len(prefix):]].sid_ids != ref.sid_ids).any(1).sum())}
        for k, v in times.items() if k.startswith(prefix)}}


def search_case(model, seqs, trie, beams: int, batch_size: int, pad_id: int, threads: int, out: dict, key: str):
    from tsrec.lm.decoding import search_batches

    def run():
        torch.set_num_threads(threads)
        model.eval()
        out[key] = search_batches(model, seqs, trie, pad_id=pad_id, num_beams=beams, batch_size=batch_size)
    return run


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default=os.environ.get("TSREC_BACKBONE",
                                                        str(REPO / "artifacts/backbone/smollm2-135m-instruct")))
    p.add_argument("--out", default=str(REPO / "results/benchmarks/roofline.json"))
    p.add_argument("--keep-layers", type=int, default=4, help="layers of the full-FT / evaluate model (CPU profile: 4)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="GEMM thread counts")
    p.add_argument("--stage-threads", type=int, default=2, help="threads of the train / evaluate cases")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--eval-prompts", type=int, default=32)
    p.add_argument("--beams", type=int, default=20)
    p.add_argument("--lora30", action="store_true", help="also the 30-layer LoRA step (slow)")
    p.add_argument("--skip", nargs="*", default=[], choices=["gemm", "train", "evaluate"])
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    backbone = Path(a.backbone)
    if not (backbone / "config.json").is_file():
        raise SystemExit(f"converted backbone not found at {backbone} (run `tsrec backbone`)")
    t_start = time.time()
    result: dict = {"command": "python " + " ".join([os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])]),
                    "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "ATEN_CPU_CAPABILITY",
                                                           "MALLOC_MMAP_MAX_", "LD_PRELOAD")},
                    "machine": machine(), "backbone": str(backbone), "method": "interleaved reps in one process "
                    "(every case once per rep); median and min/max seconds; rate = analytic FLOPs / seconds"}

    model, tok = load(backbone, a.keep_layers, "full")
    sh = shapes(model)
    result["model"] = {k: v for k, v in sh.items() if k != "linears"} | {"keep_layers": a.keep_layers, "finetune": "full"}
    batches = train_batches(tok)
    fl = [train_flops(sh, b, "full") for b in batches]
    train_rows = round(sum(f["padded_tokens"] for f in fl) / len(fl))
    eval_rows = 8 * a.beams
    label_rows = round(sum(f["label_tokens"] for f in fl) / len(fl))

    gcases, gflops = gemm_cases(sh, {"train_batch": train_rows, "train_labels": label_rows, "decode": eval_rows},
                                a.threads)
    cases: dict = {}  # every case of the 4-layer model, GEMMs included, in ONE interleaved loop
    if "gemm" not in a.skip:
        cases.update({k: v for k, v in gcases.items()
                      if not k.startswith(("gemm_head_train_batch", "gemm_layers_train_labels"))})
    info: dict = {}
    if "train" not in a.skip:  # 4 layers, full FT, weighted over the epoch's length mix
        opt, opt_info = trainer_optimizer(model)
        for (name, n_ex, _, _), b in zip(MIX, batches):
            info[name] = {"examples_per_epoch": n_ex, **train_flops(sh, b, "full")}
            cases[f"train:default_{name}"] = make_step(model, b, opt, a.stage_threads)
            cases[f"train:before-logits_{name}"] = make_step(model, b, opt, a.stage_threads, legacy_loss)
            cases[f"train:default-1thread_{name}"] = make_step(model, b, opt, 1)
    res: dict = {}
    if "evaluate" not in a.skip:  # the same prompts and trie for the 30-layer model (the same tokenizer)
        trie, seqs = eval_setup(tok, a.eval_prompts)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        for key, bs, t in (("default_b8", 8, a.stage_threads), ("batch16", 16, a.stage_threads), ("b8-1thread", 8, 1)):
            cases[f"eval:{key}"] = search_case(model, seqs, trie, a.beams, bs, pad, t, res, key)
    times = interleave(cases, a.reps)
    if "gemm" not in a.skip:
        result["gemm"] = {k: summary(v, gflops[k] / 1e9) | {"unit": "GFLOP/s"} for k, v in times.items()
                          if k.startswith("gemm_")}
    if "train" not in a.skip:
        result["train_4L_full"] = train_summary({k[6:]: v for k, v in times.items() if k.startswith("train:")},
                                                info, opt_info, a.stage_threads)
        result["train_4L_full"]["op_time_share"] = {name: op_shares(cases[f"train:default_{name}"])
                                                    for name, *_ in MIX}
        result["train_4L_full"]["case_notes"] = {
            "default": "this branch's train stage step (no unused logits)",
            "before-logits": "the step before issue 38 (logits of the last position computed, unused)",
            "default-1thread": "default on 1 torch thread"}
    if "evaluate" not in a.skip:
        result["evaluate_4L"] = eval_result(times, res, sh, seqs, trie, a.beams, a.stage_threads, "eval:")
    del model, cases
    if a.lora30:
        model, tok = load(backbone, None, "lora")
        sh30 = shapes(model)
        b = train_batches(tok)[1]
        opt, opt_info = trainer_optimizer(model)
        lcases = {k: v for k, v in gcases.items() if k.startswith(("gemm_layers_train_batch", "gemm_head_train_labels"))}
        lcases |= {"lora:default_mid": make_step(model, b, opt, a.stage_threads),
                   "lora:before-logits_mid": make_step(model, b, opt, a.stage_threads, legacy_loss)}
        times = interleave(lcases, max(2, a.reps // 2))
        result["train_30L_lora"] = train_summary({k[5:]: v for k, v in times.items() if k.startswith("lora:")},
                                                 {"mid": {"examples_per_epoch": 1, **train_flops(sh30, b, "lora")}},
                                                 opt_info, a.stage_threads)
        result["train_30L_lora"]["note"] = "the mid-length batch only (tokens/s of that batch, not an epoch mix)"
        result["train_30L_lora"]["gemm"] = {k: summary(v, gflops[k] / 1e9) | {"unit": "GFLOP/s"}
                                            for k, v in times.items() if k.startswith("gemm_")}
        if "evaluate" not in a.skip:  # beam search on the merged 30-layer model, as evaluate runs a LoRA run
            model, res = model.merge_and_unload(), {}
            ecases = {f"eval30:{key}": search_case(model, seqs, trie, a.beams, 8, pad, t, res, key)
                      for key, t in (("default_b8", a.stage_threads), ("b8-1thread", 1))}
            times = interleave(ecases, max(2, a.reps // 2))
            result["evaluate_30L"] = eval_result(times, res, sh30, seqs, trie, a.beams, a.stage_threads, "eval30:")
            result["evaluate_30L"]["note"] = ("LoRA merged into the base weights (as tsrec evaluate loads a LoRA "
                                              "run): a plain 30-layer model")
    result["roofline"] = ratios(result, a.stage_threads)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = round(time.time() - t_start, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    log.info("wrote %s", a.out)
    print(json.dumps(result["roofline"], indent=1))
    return 0


def train_summary(times: dict, info: dict, opt_info: dict, threads: int) -> dict:
    """Per case and group: seconds and GFLOP/s; per case the epoch-mix tokens/s (each group's step time
    weighted by its micro-batches per epoch)."""
    out: dict = {"threads": threads, "batch_size": BATCH, "optimizer": opt_info, "groups": info, "cases": {}}
    by_case: dict[str, dict] = {}
    for key, v in times.items():
        case, group = key.rsplit("_", 1)
        by_case.setdefault(case, {})[group] = v
    for case, groups in by_case.items():
        per = {g: summary(v, info[g]["flops_useful"] / 1e9) | {"unit": "GFLOP/s", "tokens_per_s_median": round(
            info[g]["tokens"] / statistics.median(v), 1)} for g, v in groups.items()}
        w = {g: info[g]["examples_per_epoch"] / BATCH for g in groups}
        secs = sum(w[g] * statistics.median(groups[g]) for g in groups)
        toks = sum(w[g] * info[g]["tokens"] for g in groups)
        fl = sum(w[g] * info[g]["flops_useful"] for g in groups)
        out["cases"][case] = {"groups": per, "epoch_mix_tokens_per_s": round(toks / secs, 1),
                              "epoch_mix_gflops": round(fl / secs / 1e9, 2),
                              "flops_per_token_mix": round(fl / toks)}
    return out


def ratios(r: dict, threads: int) -> dict:
    """Achieved / attainable. Attainable = the same FLOPs at the measured GEMM rates of their shapes (layer
    linears at the batch's rows, the head at its rows), i.e. what the step would take if it were only GEMMs
    running at the rate ``F.linear`` gets alone; cases on 1 thread use the 1-thread GEMM rates."""
    out: dict = {}
    g = r.get("gemm", {})

    def gemm(kind, label, t, rates=None):
        rates = g if rates is None else rates
        k = next((k for k in rates if k.startswith(f"gemm_{kind}_{label}_") and k.endswith(f"_t{t}")), None)
        return rates[k]["rate_median"] if k else None

    for t in sorted({int(k.rsplit("_t", 1)[1]) for k in g}):
        out[f"gemm_layers_train_batch_t{t}_gflops"] = gemm("layers", "train_batch", t)
        out[f"gemm_head_train_labels_t{t}_gflops"] = gemm("head", "train_labels", t)
        out[f"gemm_layers_decode_t{t}_gflops"] = gemm("layers", "decode", t)
        out[f"gemm_head_decode_t{t}_gflops"] = gemm("head", "decode", t)
    if gemm("layers", "train_batch", 1) and gemm("layers", "train_batch", threads):
        out[f"gemm_layers_{threads}_over_1_thread"] = round(gemm("layers", "train_batch", threads)
                                                            / gemm("layers", "train_batch", 1), 2)
    for key in ("train_4L_full", "train_30L_lora"):
        if key not in r:
            continue
        groups = r[key]["groups"]
        w = {n: gr["examples_per_epoch"] for n, gr in groups.items()}
        head_share = sum(w[n] * gr["flops_head"] for n, gr in groups.items()) / sum(
            w[n] * gr["flops_useful"] for n, gr in groups.items())
        out[f"{key}_head_flops_share"] = round(head_share, 3)
        for case, c in r[key]["cases"].items():
            t = 1 if "1thread" in case else threads
            rates = r[key].get("gemm")  # the LoRA model's own interleaved GEMM reps
            lay, head = gemm("layers", "train_batch", t, rates), gemm("head", "train_labels", t, rates)
            out[f"{key}_{case}_tokens_per_s"] = c["epoch_mix_tokens_per_s"]
            out[f"{key}_{case}_gflops"] = c["epoch_mix_gflops"]
            if lay and head:
                attainable = 1 / (head_share / head + (1 - head_share) / lay)
                out[f"{key}_{case}_over_gemm"] = round(c["epoch_mix_gflops"] / attainable, 3)
    if "evaluate_4L" in r:
        hs = r["evaluate_4L"]["analytic"]["head_share"]
        for case, c in r["evaluate_4L"]["cases"].items():
            t = 1 if "1thread" in case else threads
            lay, head = gemm("layers", "decode", t), gemm("head", "decode", t)
            out[f"evaluate_{case}_rows_per_s"] = c["rate_median"]
            out[f"evaluate_{case}_gflops"] = c["gflops_median"]
            out[f"evaluate_{case}_identical_rankings"] = c["identical_rankings"]
            if lay and head:
                out[f"evaluate_{case}_over_gemm"] = round(c["gflops_median"] / (1 / (hs / head + (1 - hs) / lay)), 3)
    for case, c in r.get("evaluate_30L", {}).get("cases", {}).items():
        out[f"evaluate_30L_{case}_rows_per_s"] = c["rate_median"]
        out[f"evaluate_30L_{case}_gflops"] = c["gflops_median"]
    for key, base, cases in (("train_4L_full", "default", ("before-logits", "default-1thread")),
                             ("train_30L_lora", "default", ("before-logits",))):
        if key in r:
            c = r[key]["cases"]
            for other in cases:
                if other in c:
                    out[f"{key}_{base}_over_{other}"] = round(c[base]["epoch_mix_tokens_per_s"]
                                                             / c[other]["epoch_mix_tokens_per_s"], 3)
    if "evaluate_4L" in r:
        c = r["evaluate_4L"]["cases"]
        for other in c:
            if other != "default_b8":
                out[f"evaluate_{other}_over_default_b8"] = round(c[other]["rate_median"] / c["default_b8"]["rate_median"], 3)
    return {k: v for k, v in out.items() if v is not None}


if __name__ == "__main__":
    sys.exit(main())
