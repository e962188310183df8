"""Process layouts on the 2 cores: one process on 2 threads vs two 1-thread processes, for one train step and
for beam search. One command, one JSON (default ``results/benchmarks/layout.json``)::

    python benchmarks/bench_layout.py            # quiet box wanted: other load changes the 2-thread cases most
    python benchmarks/bench_layout.py --lora30 --prompts 48 --out results/benchmarks/layout_30L.json
                                                 # the same layouts for the 30-layer LoRA profile (LoRA merged
                                                 # for evaluate, as tsrec evaluate loads a LoRA run)

Layouts, each a fresh set of worker processes (model load untimed), alternated ``--rounds`` times so a drifting
box slows all alike; every worker times ``--reps`` steps per case after one warmup:

* train (4 layers, full FT, the roofline's synthetic batches of the default length mix, fused AdamW, clip 1.0):
  ``1x2`` = one process, 2 threads, the micro-batch of 16 (the train stage today); ``1x1`` = the same on 1 thread;
  ``ddp2x1`` = ``DistributedDataParallel`` over gloo, 2 processes x 1 thread, 8 rows each (what
  ``torchrun --nproc_per_node 2 -m tsrec train`` does: an all-reduce of the 43 M gradients and the optimizer
  step on both ranks); ``lanes2x1`` = two independent 1-thread processes, 16 rows each, started together (two
  runs side by side, the matrix's two lanes): its rate is the two lanes' sum.
* evaluate (``tsrec.lm.decoding.search_batches``, B = 20, 8 prompts per batch, the roofline's synthetic prompts
  and trie): ``1x2``, ``1x1``, and ``dp2x1`` = 2 processes x 1 thread, whole length-sorted batches dealt
  round-robin (``tsrec.lm.decoding.shard_batches``, as ``torchrun -m tsrec evaluate``; the gather is not timed). Its rows must be bit-identical to
  ``1x1`` (same batches, same threads): checked (``identical_to_1x1``).

Rates: train tokens/s of an epoch (each group's median step weighted by its micro-batches per epoch, as the
roofline), evaluate rows/s (the slowest worker's time for ``dp2x1``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline as R  # noqa: E402  (pins OMP_WAIT_POLICY and the CPU capability like the CLI, then imports torch)
import torch  # noqa: E402

log = logging.getLogger("bench_layout")
LAYOUTS = {"train": [("1x2", 1, 2), ("1x1", 1, 1), ("ddp2x1", 2, 1), ("lanes2x1", 2, 1)],
           "evaluate": [("1x2", 1, 2), ("1x1", 1, 1), ("dp2x1", 2, 1)]}


# ---------------------------------------------------------------- worker (one process of a layout)
def worker(a) -> None:
    import torch.distributed as dist

    torch.set_num_threads(a.threads)
    if a.lora30:  # all layers; LoRA for train, the plain model (= LoRA merged) for evaluate
        model, tok = R.load(Path(a.backbone), None, "lora" if a.kind == "train" else "full")
    else:
        model, tok = R.load(Path(a.backbone), a.keep_layers, "full")
    if a.world > 1:
        dist.init_process_group("gloo", rank=a.rank, world_size=a.world, init_method=f"tcp://127.0.0.1:{a.port}")
    out = train_worker(a, model, tok) if a.kind == "train" else eval_worker(a, model, tok)
    Path(a.out).write_text(json.dumps(out), encoding="utf-8")
    if a.world > 1:
        dist.destroy_process_group()


def _sync(a) -> None:
    if a.world > 1:
        torch.distributed.barrier()


def train_worker(a, model, tok) -> dict:
    from tsrec.model.sft import label_position_loss

    batches = R.train_batches(tok)
    if a.layout.startswith("ddp"):  # this rank's half of every micro-batch
        batches = [{k: v[a.rank::a.world] if torch.is_tensor(v) and v.ndim and v.shape[0] == R.BATCH else v
                    for k, v in b.items()} for b in batches]
        model = torch.nn.parallel.DistributedDataParallel(model)
    inner = model.module if a.layout.startswith("ddp") else model
    opt, _ = R.trainer_optimizer(inner)
    head, params = inner.get_output_embeddings(), [p for p in model.parameters() if p.requires_grad]

    def step(b) -> float:
        _sync(a)
        t = time.perf_counter()
        model.train()
        total, count = label_position_loss(model, head, b)
        (total / count).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        model.zero_grad()
        return time.perf_counter() - t

    for b in batches:
        step(b)  # warmup
    return {name: [step(b) for _ in range(a.reps)] for (name, *_), b in zip(R.MIX, batches)}


def eval_worker(a, model, tok) -> dict:
    from tsrec.lm.decoding import search_batches, shard_batches

    trie, seqs = R.eval_setup(tok, a.prompts)
    mine = [i for b in shard_batches([len(q) for q in seqs], 8, a.rank, a.world) for i in b]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.eval()

    def search():
        return search_batches(model, seqs, trie, pad_id=pad, num_beams=20, batch_size=8, shard=(a.rank, a.world))

    res = search()  # warmup
    times = []
    for _ in range(a.reps):
        _sync(a)
        t = time.perf_counter()
        res = search()
        times.append(time.perf_counter() - t)
    rows = {str(i): [res.sid_ids[i].tolist(), hashlib.sha256(res.scores[i].numpy().tobytes()).hexdigest()[:16]]
            for i in mine}
    return {"times": times, "rows": rows}


# ---------------------------------------------------------------- driver
def launch(a, kind: str, layout: str, world: int, threads: int, tmp: Path, port: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs, files = [], []
    for rank in range(world):
        f = tmp / f"{kind}-{layout}-{rank}.json"
        files.append(f)
        cmd = [sys.executable, __file__, "--worker", kind, "--layout", layout, "--rank", str(rank), "--world", str(world), "--threads",
               str(threads), "--port", str(port), "--reps", str(a.reps), "--prompts", str(a.prompts),
               "--keep-layers", str(a.keep_layers), "--backbone", a.backbone, "--out", str(f),
               *(["--lora30"] if a.lora30 else [])]
        procs.append(subprocess.Popen(cmd, env=env))
    if any(p.wait() for p in procs):
        raise SystemExit(f"a {kind} worker of layout {layout} failed")
    return [json.loads(f.read_text()) for f in files]


def summarize_train(times: dict[str, list[float]], lanes: int = 1) -> dict:
    """Per group median s; tokens/s of an epoch at the roofline's mix (tokens per micro-batch of 16 rows), times
    ``lanes`` independent runs stepping side by side."""
    model_tokens = {name: round(mean * R.BATCH) for name, _, mean, _ in R.MIX}
    med = {name: statistics.median(times[name]) for name, *_ in R.MIX}
    batches = {name: n_ex / R.BATCH for name, n_ex, *_ in R.MIX}
    tokens = sum(batches[n] * model_tokens[n] for n in med)
    seconds = sum(batches[n] * med[n] for n in med)
    return {"s_median": {n: round(v, 4) for n, v in med.items()},
            "s_min_max": {n: [round(min(times[n]), 4), round(max(times[n]), 4)] for n in med},
            "epoch_tokens_per_s": round(lanes * tokens / seconds, 1), "lanes": lanes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default=os.environ.get("TSREC_BACKBONE",
                                                        str(R.REPO / "artifacts/backbone/smollm2-135m-instruct")))
    p.add_argument("--out", default=str(R.REPO / "results/benchmarks/layout.json"))
    p.add_argument("--rounds", type=int, default=2, help="times every layout is launched, alternating")
    p.add_argument("--reps", type=int, default=2, help="timed steps / searches per case and launch")
    p.add_argument("--prompts", type=int, default=160)
    p.add_argument("--keep-layers", type=int, default=4, help="layers of the model (CPU profile: 4)")
    p.add_argument("--lora30", action="store_true", help="the 30-layer LoRA model instead (train_30L_lora, "
                   "evaluate_30L); --keep-layers is then ignored")
    p.add_argument("--skip", nargs="*", default=[], choices=list(LAYOUTS))
    p.add_argument("--worker", choices=list(LAYOUTS), help=argparse.SUPPRESS)
    p.add_argument("--layout", default="", help=argparse.SUPPRESS)
    for flag in ("--rank", "--world", "--threads", "--port"):
        p.add_argument(flag, type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.kind = a.worker
        worker(a)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not (Path(a.backbone) / "config.json").is_file():
        raise SystemExit(f"converted backbone not found at {a.backbone} (run `tsrec backbone`)")
    t0 = time.time()
    result = {"command": "python " + " ".join([os.path.relpath(__file__, R.REPO), *(argv or sys.argv[1:])]),
              "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "ATEN_CPU_CAPABILITY")},
              "machine": R.machine(), "method": __doc__.split("\n\n")[1].replace("\n", " ")}
    raw: dict = {kind: {name: [] for name, *_ in LAYOUTS[kind]} for kind in LAYOUTS if kind not in a.skip}
    port = 29600
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(a.rounds):
            for kind in raw:
                for name, world, threads in LAYOUTS[kind]:
                    port += 1
                    raw[kind][name].append(launch(a, kind, name, world, threads, Path(tmp), port))
                    log.info("round %d %s %s done", rnd + 1, kind, name)
    train_key, eval_key = ("train_30L_lora", "evaluate_30L") if a.lora30 else ("train_4L_full", "evaluate_4L")
    if "train" in raw:
        result[train_key] = {name: summarize_train(
            {g: [t for launch_ in runs for w in launch_ for t in w[g]] for g, *_ in R.MIX},
            lanes=2 if name.startswith("lanes") else 1) for name, runs in raw["train"].items()}
    if "evaluate" in raw:
        result[eval_key] = evaluate_summary(raw["evaluate"], a.prompts)
    result["ratios"] = ratios(result)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = round(time.time() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result["ratios"], indent=1))
    return 0


def evaluate_summary(raw: dict, prompts: int) -> dict:
    """rows/s per layout (a launch's time per rep = its slowest worker's), and bit-identity of each layout's rows
    with 1x1's (sid ids and a digest of the scores)."""
    out = {}
    ref = {k: v for w in raw["1x1"][0] for k, v in w["rows"].items()}
    for name, launches in raw.items():
        secs = [max(w["times"][r] for w in launch_) for launch_ in launches for r in range(len(launch_[0]["times"]))]
        rows = {k: v for w in launches[0] for k, v in w["rows"].items()}
        out[name] = {"rows_per_s_median": round(prompts / statistics.median(secs), 2),
                     "s_min_max": [round(min(secs), 3), round(max(secs), 3)],
                     "identical_to_1x1": rows == ref,
                     "rows_ranked_differently_from_1x1": sum(rows[k][0] != ref[k][0] for k in ref)}
    return out


def ratios(r: dict) -> dict:
    out = {}
    train = next((k for k in ("train_4L_full", "train_30L_lora") if k in r), None)
    evaluate = next((k for k in ("evaluate_4L", "evaluate_30L") if k in r), None)
    if train:
        t = {k: v["epoch_tokens_per_s"] for k, v in r[train].items()}
        out |= {f"train_{k}_tokens_per_s": v for k, v in t.items()}
        out |= {"train_1x2_over_1x1": round(t["1x2"] / t["1x1"], 3),
                "train_ddp2x1_over_1x2": round(t["ddp2x1"] / t["1x2"], 3),
                "train_lanes2x1_over_1x2": round(t["lanes2x1"] / t["1x2"], 3)}
    if evaluate:
        e = {k: v["rows_per_s_median"] for k, v in r[evaluate].items()}
        out |= {f"evaluate_{k}_rows_per_s": v for k, v in e.items()}
        out |= {"evaluate_dp2x1_over_1x2": round(e["dp2x1"] / e["1x2"], 3),
                "evaluate_dp2x1_identical_to_1x1": r[evaluate]["dp2x1"]["identical_to_1x1"]}
    return out


if __name__ == "__main__":
    sys.exit(main())
