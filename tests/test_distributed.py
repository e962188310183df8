"""Data parallelism that is data-parallel: 2 CPU processes (torchrun, gloo, DDP) x micro batch B/2 train the
same model as 1 process x B with the same global batch, step for step, and a killed 2-process run resumes."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_train import make_params  # noqa: E402

from tsrec.model.runs import resolve_run
from tsrec.model.sft import train_run

REPO = Path(__file__).resolve().parents[1]
KILLER = Path(__file__).parent / "kill_train.py"
STEPS = 4
# global batch 16 = 8 x accumulation 2 (1 process) = 4 x 2 x 2 processes; a checkpoint every 2 steps. LoRA dropout
# 0: dropout masks are drawn per process, so with dropout the runs agree in distribution only (docs/gpu.md)
# valid ranking on 24 rows at every evaluation: under 2 processes each searches half the batches (gathered)
RUN = {"max_steps": STEPS, "batch_size": 8, "global_batch": 16, "eval_steps": 2, "keep_checkpoints": True,
       "rank_rows": 24, "rank_batch": 4}


def torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_CPU", None)  # tsrec must turn multi-CPU on itself
    return subprocess.run([exe, "--standalone", "--nproc_per_node", str(nproc), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def losses(run: Path) -> list[tuple[int, float]]:
    with open(run / "plots" / "train.csv", newline="") as fh:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh)]


def weights(run: Path, step: int = STEPS) -> dict:
    return load_file(next((run / "checkpoints" / f"checkpoint-{step}").glob("*.safetensors")))


def assert_same_training(a: Path, b: Path, loss_tol: float, weight_tol: float) -> None:
    la, lb = losses(a), losses(b)
    assert [s for s, _ in la] == [s for s, _ in lb] == list(range(1, STEPS + 1))
    for (step, x), (_, y) in zip(la, lb):
        assert abs(x - y) <= loss_tol, f"step {step}: loss {x} vs {y}"
    for step in (2, STEPS):
        wa, wb = weights(a, step), weights(b, step)
        assert wa.keys() == wb.keys() and wa
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=weight_tol, msg=f"checkpoint-{step} {k}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_backbone):
    from tsrec.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("ddp")
    params = make_params(root, make_dataset(root / "data" / "tiny", n_items=120, n_users=200), tiny_backbone, **RUN)
    params["backbone"]["lora"]["dropout"] = 0.0
    two = {k: v for k, v in params.items() if k != "_path"}
    two["train"] = {**two["train"], "batch_size": 4}  # per process: 2 x 4 x accumulation 2 = 16
    (root / "params2.yaml").write_text(yaml.safe_dump(two))
    one = train_run(resolve_run(params, "tiny", "sft", out=root / "one"))  # the 1-process reference, in this process
    assert one["train"]["world_size"] == 1 and one["train"]["ddp"] is False
    # more examples than one length-grouping megabatch (50 x 8) of a sampler that groups by the per-process
    # batch: such a sampler orders the 2-process run differently (the pre-fix code)
    assert one["train"]["examples"] > 50 * 8, one["train"]["examples"]
    proc = torchrun("-m", "tsrec", "--params", str(root / "params2.yaml"), "train", "--dataset", "tiny",
                    "--variant", "sft", "--out", str(root / "two"), "--results", str(root / "results"), cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root / "two.log").write_text(proc.stderr)
    return root, one


def test_two_cpu_processes_train_what_one_process_trains(setup):
    root, one = setup
    meta = json.loads((root / "two" / "final" / "tsrec_meta.json").read_text())
    summary = json.loads((root / "results" / "tiny" / "sft" / "seed0" / "train_summary.json").read_text())
    # the records say what ran: 2 processes, DDP over gloo
    assert meta["train"]["world_size"] == 2 and meta["train"]["steps"] == STEPS
    assert summary["train"]["world_size"] == 2 and summary["train"]["ddp"] is True
    assert summary["train"]["distributed_type"] == "MULTI_CPU"
    assert "train --dataset tiny --variant sft" in summary["command"]
    assert summary["train"]["tokens_total"] == one["train"]["tokens_total"]  # every example, counted once
    assert_same_training(root / "one", root / "two", loss_tol=1e-5, weight_tol=1e-6)


def test_two_process_valid_ranking_covers_every_row_once(setup):
    """The in-training valid ranking under DDP: each process ranks its share, rank 0 writes all rows once per
    evaluation, and the curve's metrics are those of the gathered ranks."""
    from tsrec.eval import metrics

    root, _ = setup
    with open(root / "two" / "plots" / "valid_rank_rows.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(root / "two" / "plots" / "valid_rank.csv", newline="") as fh:
        curve = {int(r["step"]): r for r in csv.DictReader(fh)}
    assert sorted(curve) == [2, STEPS]
    for step, point in curve.items():
        mine = [r for r in rows if int(r["step"]) == step]
        assert sorted(int(r["row"]) for r in mine) == sorted({int(r["row"]) for r in mine}) and len(mine) == 24
        m = metrics.from_ranks([int(r["rank"]) for r in mine])
        assert abs(float(point["NDCG@10"]) - m["NDCG@10"]) < 1e-12 and int(point["rows"]) == 24
    log = (root / "two.log").read_text()
    for rank in (0, 1):  # 6 batches of 4 rows dealt round-robin: 12 rows each
        assert f"(24 rows, 12 searched by process {rank} of 2," in log, log[-3000:]


def test_killed_two_process_run_resumes(setup):
    root, _ = setup
    out = root / "killed"
    proc = torchrun(str(KILLER), str(root / "params2.yaml"), "tiny", "sft", str(out), "step:3", cwd=root)
    assert proc.returncode != 0 and not (out / "final").exists(), proc.stderr[-3000:]
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "checkpoints" / "checkpoint-4").exists()
    proc = torchrun("-m", "tsrec", "--params", str(root / "params2.yaml"), "train", "--dataset", "tiny",
                    "--variant", "sft", "--out", str(out), "--results", str(root / "results_k"), cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((root / "results_k" / "tiny" / "sft" / "seed0" / "train_summary.json").read_text())
    assert summary["train"]["resumed_from"] == "checkpoint-2" and summary["train"]["ddp"] is True
    assert_same_training(root / "two", out, loss_tol=1e-6, weight_tol=1e-7)


# ---------------------------------------------------------------- evaluate over 2 processes
def test_shard_batches_deal_the_one_process_batches():
    from tsrec.lm.decoding import shard_batches

    lengths = [5, 3, 9, 3, 7, 1, 4, 4, 8, 2, 6]
    one = shard_batches(lengths, 3)
    assert [lengths[i] for b in one for i in b] == sorted(lengths) and all(len(b) == 3 for b in one[:-1])
    for world in (2, 3, 5):
        shards = [shard_batches(lengths, 3, r, world) for r in range(world)]
        assert sorted(b for s in shards for b in s) == sorted(one)  # the same batches, each searched once
        assert shards[1] == one[1::world]


def test_two_process_evaluate_writes_what_one_process_writes(setup):
    """``torchrun -m tsrec evaluate``: each process searches every 2nd batch, rank 0 gathers and writes; on
    the same threads per process the ranks (SIDs and scores) are bit-identical to one process's."""
    import pandas as pd

    root, _ = setup
    common = ["-m", "tsrec", "--params", str(root / "params2.yaml"), "evaluate", "--dataset", "tiny", "--variant",
              "sft", "--run-dir", str(root / "one"), "--split", "valid", "--beams", "20", "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    one = subprocess.run([sys.executable, *common, "--results", str(root / "ev1"), "--artifacts", str(root / "eva1")],
                         env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(*common, "--results", str(root / "ev2"), "--artifacts", str(root / "eva2"), cwd=root)
    assert two.returncode == 0, two.stderr[-3000:]
    ranks = [pd.read_parquet(r / "tiny" / "eval" / "sft" / "seed0" / "ranks_valid.parquet")
             for r in (root / "eva1", root / "eva2")]
    assert len(ranks[0]) > 4 and (ranks[0]["rank"] >= -1).all()  # several batches, so both processes searched
    pd.testing.assert_frame_equal(ranks[0], ranks[1])
    m1, m2 = (json.loads((r / "tiny" / "sft" / "seed0" / "metrics_valid.json").read_text())
              for r in (root / "ev1", root / "ev2"))
    timing = ("wall_time_s", "rows_per_s")
    assert {k: v for k, v in m1.items() if k not in timing} == {k: v for k, v in m2.items() if k not in timing}
    run1, run2 = (json.loads((r / "tiny" / "sft" / "seed0" / "run_valid.json").read_text())
                  for r in (root / "ev1", root / "ev2"))
    assert run1["processes"] == 1 and run2["processes"] == 2 and run1["torch_threads"] == run2["torch_threads"]


# ---------------------------------------------------------------- RL (GRPO) over 2 processes
RL = {"variants": ["sft"], "train_prompts": 24, "max_steps": 4, "batch_size": 4, "num_generations": 16,
      "eval_steps": 2, "valid_rows": 8, "valid_beams": 10, "ref_sync_steps": 2, "lr": 1e-3, "threads": 1,
      "precision": "fp32", "device": "cpu"}


def rl_rows(run: Path) -> list[dict]:
    with open(run / "plots" / "rl.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_rl_two_cpu_processes_step_as_one(setup):
    """Each process takes half of every step's 4 prompts; gradients summed over the processes: the logged
    rows (loss, KL, rewards) and the final policy equal the 1-process run's; process 0 alone writes."""
    from tsrec.commands.rl import rl_run

    root, _ = setup
    params = {**yaml.safe_load((root / "params2.yaml").read_text()), "rl": RL}
    (root / "params_rl.yaml").write_text(yaml.safe_dump(params))
    one = rl_run({**params, "_path": str(root / "params_rl.yaml")}, "tiny", "sft", base=root / "one",
                 out=root / "rl_one")
    assert one["rl"]["processes"] == 1 and one["rl"]["device"] == "cpu"
    proc = torchrun("-m", "tsrec", "--params", str(root / "params_rl.yaml"), "rl", "--dataset", "tiny", "--variant",
                    "sft", "--base-dir", str(root / "one"), "--out", str(root / "rl_two"), "--results",
                    str(root / "rl_results"), cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((root / "rl_results" / "tiny" / "sft_rl" / "seed0" / "rl_summary.json").read_text())
    assert summary["rl"]["processes"] == 2 and summary["rl"]["steps"] == 4 and summary["rl"]["device"] == "cpu"
    a, b = rl_rows(root / "rl_one"), rl_rows(root / "rl_two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["1", "2", "3", "4"]  # one row per step, not two
    for ra, rb in zip(a, b):
        for k in ("loss", "kl", "reward", "reward_rule", "reward_ranking", "reward_std", "target_in_group"):
            assert abs(float(ra[k]) - float(rb[k])) <= 1e-5, (ra["step"], k, ra[k], rb[k])
    va, vb = ((r / "plots" / "rl_valid.csv").read_text() for r in (root / "rl_one", root / "rl_two"))
    assert va == vb and len(va.splitlines()) == 4  # process 0 validates at steps 0, 2, 4
    wa, wb = (load_file(r / "final" / "model.safetensors") for r in (root / "rl_one", root / "rl_two"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)
    assert any(not torch.equal(wa[k], load_file(root / "one" / "final" / "model.safetensors")[k]) for k in wa)


def test_rl_device_is_checked(setup):
    from tsrec.core.config import section
    from tsrec.core.errors import ParamError
    from tsrec.commands.rl import rl_run
    from tsrec.model.grpo import RLConfig

    with pytest.raises(ParamError, match="device must be auto, cpu, cuda or cuda:N"):
        section({"rl": {"device": "tpu"}, "_path": "p.yaml"}, "rl", RLConfig)
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: rl.device cuda is valid here")
    root, _ = setup
    params = {**yaml.safe_load((root / "params2.yaml").read_text()), "rl": {**RL, "device": "cuda"}, "_path": "p.yaml"}
    with pytest.raises(ParamError, match="no CUDA device") as exc:
        rl_run(params, "tiny", "sft", base=root / "one", out=root / "rl_nogpu")
    assert exc.value.field == "rl.device" and not (root / "rl_nogpu").exists()
