"""Exact resumption: a tiny 3-epoch run SIGKILLed (in a subprocess) and resumed ends byte-identical."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_train import make_params  # noqa: E402

from tsrec.model.runs import resolve_run
from tsrec.model.sft import SeededLengthGroupedSampler, drop_incomplete_checkpoints, train_run

REPO = Path(__file__).resolve().parents[1]
KILLER = Path(__file__).parent / "kill_train.py"
# 205 examples / batch 32 = 7 steps per epoch, 21 steps; a checkpoint every 2 steps
RUN = {"max_steps": -1, "epochs": 3.0, "batch_size": 32, "eval_steps": 2}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_backbone):
    from tsrec.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("resume")
    params = make_params(root, make_dataset(root / "data" / "tiny"), tiny_backbone, **RUN)
    meta = train_run(resolve_run(params, "tiny", "tsrec", out=root / "full"))
    assert meta["train"]["steps"] == 21 and meta["train"]["examples"] == 205
    return root, params, meta


def _killed_then_resumed(root: Path, params: dict, where: str, name: str) -> tuple[Path, dict]:
    out = root / name
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(KILLER), params["_path"], "tiny", "tsrec", str(out), where],
                          env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]  # SIGKILL
    assert not (out / "final").exists()
    return out, train_run(resolve_run(params, "tiny", "tsrec", out=out))


def _assert_identical(root: Path, out: Path, full: dict, resumed: dict) -> None:
    """final/ (the DVC output later stages hash) byte for byte, meta included, and every logged loss."""
    files = sorted(p.name for p in (root / "full/final").iterdir())
    assert "model.safetensors" in files and "tsrec_meta.json" in files
    assert sorted(p.name for p in (out / "final").iterdir()) == files
    for name in files:
        assert (out / "final" / name).read_bytes() == (root / "full/final" / name).read_bytes(), name
    for name in ("train.csv", "valid.csv"):  # every logged train loss and valid loss
        assert (out / "plots" / name).read_text() == (root / "full/plots" / name).read_text()
    for k in ("steps", "best_eval_loss", "best_checkpoint", "stopped_early"):
        assert resumed["train"][k] == full["train"][k], k


@pytest.mark.parametrize("where,resumed_from", [("step:3", "checkpoint-2"),     # inside epoch 0
                                                ("step:17", "checkpoint-16")])  # after epoch 1 (in epoch 2)
def test_killed_run_resumes_byte_identical(reference, where, resumed_from):
    root, params, full = reference
    out, resumed = _killed_then_resumed(root, params, where, where.replace(":", "-"))
    assert resumed["train"]["resumed_from"] == resumed_from
    _assert_identical(root, out, full, resumed)


def test_kill_inside_checkpoint_save_resumes_from_previous(reference):
    root, params, full = reference
    out, resumed = _killed_then_resumed(root, params, "save:10", "save-10")
    assert resumed["train"]["resumed_from"] == "checkpoint-8"  # the half-written checkpoint-10 was dropped
    _assert_identical(root, out, full, resumed)


def test_incomplete_checkpoints_dropped(tmp_path):
    ck = tmp_path / "checkpoints"
    good = ck / "checkpoint-2"
    good.mkdir(parents=True)
    for f in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (good / f).write_bytes(b"x")
    (good / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    for step, state in ((4, None), (6, '{"global_st'), (8, json.dumps({"global_step": 6}))):
        bad = ck / f"checkpoint-{step}"
        bad.mkdir()
        (bad / "model.safetensors").write_bytes(b"x")
        if state is not None:
            (bad / "trainer_state.json").write_text(state)
    assert drop_incomplete_checkpoints(ck) == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint-2"]


def test_sampler_order_depends_on_seed_and_epoch_only():
    import torch

    lengths = [(i * 7) % 13 + 1 for i in range(50)]
    a = SeededLengthGroupedSampler(lengths, 4, seed=3)
    epoch0 = list(a)
    a.set_epoch(1)
    epoch1 = list(a)
    torch.manual_seed(123)  # the global RNG plays no part
    b = SeededLengthGroupedSampler(lengths, 4, seed=3)
    b.set_epoch(1)
    assert list(b) == epoch1 and epoch0 != epoch1 and sorted(epoch1) == list(range(50))


def test_changed_keyword_cache_forces_fresh_run(tmp_path, tiny_dataset, tiny_backbone):
    params = make_params(tmp_path, tiny_dataset, tiny_backbone, keep_checkpoints=True)
    params["train"]["max_steps"] = 2
    first = train_run(resolve_run(params, "tiny", "tsrec", out=tmp_path / "run"))
    assert first["inputs_sha256"]["keywords"]
    params["train"]["max_steps"] = 4  # would resume from checkpoint-2 ...
    cache = tmp_path / "artifacts" / "tiny" / "keywords" / "authors.json"
    recs = json.loads(cache.read_text())
    for r in recs:
        r["keywords"], r["description"] = ["pump", "valve"], "Other words for " + r["token"]
    cache.write_text(json.dumps(recs))
    again = train_run(resolve_run(params, "tiny", "tsrec", out=tmp_path / "run"))
    assert again["train"]["resumed_from"] is None  # ... but the keywords changed
    assert again["inputs_sha256"]["keywords"] != first["inputs_sha256"]["keywords"]
