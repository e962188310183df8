"""The CUDA path of the LLM stages: skipped where torch sees no GPU (CI), run on a GPU machine.

The `paper` profile (bf16_pure, Qwen2.5-1.5B) is meant for GPUs; these check, on tiny models, that the trainer
resolves bf16 there, trains in the authors' pure bf16 (bf16 weights and AdamW state on the GPU), and that
scoring on the GPU ranks exactly as on the CPU.
"""

import pytest
import torch
from test_decoding import encode, random_index, random_prompts, sid_model
from tiny_train import make_params

from tsrec.lm.decoding import SidTrie, beam_search, left_pad
from tsrec.core.precision import resolve, resolve_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_device_and_precision_pick_the_gpu():
    assert resolve_device("auto") == "cuda"
    assert resolve("auto", "cuda") == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_beam_search_on_cuda_ranks_as_on_cpu(tiny_backbone, shared_prefix):
    model, tok = sid_model(tiny_backbone, codes=8)
    trie = SidTrie.from_index(random_index(150, codes=8, seed=0), tok)
    ids, mask = left_pad(encode(tok, random_prompts(tok, 6, 0)), tok.pad_token_id)
    on_cpu = beam_search(model, ids, mask, trie, num_beams=20, shared_prefix=shared_prefix)
    model.to("cuda")
    on_gpu = beam_search(model, ids.cuda(), mask.cuda(), trie, num_beams=20, shared_prefix=shared_prefix)
    assert on_gpu.sid_ids.device.type == "cuda"
    assert torch.equal(on_gpu.sid_ids.cpu(), on_cpu.sid_ids)
    torch.testing.assert_close(on_gpu.scores.cpu(), on_cpu.scores, rtol=0, atol=1e-4)


def test_train_and_evaluate_on_cuda(tmp_path, tiny_dataset, tiny_backbone):
    """The production trainer trains on the GPU in bf16 (auto) and evaluate scores there (evaluate.device auto)."""
    import json

    from tsrec.cli import main
    from tsrec.model.runs import load_trained
    from tsrec.model.runs import resolve_run
    from tsrec.model.sft import train_run

    # precision auto explicitly: the code default is fp32 (pinned for the cpu profile)
    params = make_params(tmp_path, tiny_dataset, tiny_backbone, max_steps=6, precision="auto")
    meta = train_run(resolve_run(params, "tiny", "tsrec", seed=5))
    assert meta["train"]["precision"] == {"requested": "auto", "resolved": "bf16"}
    assert meta["train"]["steps"] == 6
    run = tmp_path / "artifacts/tiny/runs/tsrec/seed5"
    model, _, _ = load_trained(run, device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    rc = main(["--params", params["_path"], "evaluate", "--dataset", "tiny", "--variant", "tsrec", "--seed", "5",
               "--results", str(tmp_path / "results"), "--artifacts", str(tmp_path / "artifacts")])
    assert rc == 0
    m = json.loads((tmp_path / "results/tiny/tsrec/seed5/metrics.json").read_text())
    r = json.loads((tmp_path / "results/tiny/tsrec/seed5/run.json").read_text())
    assert r["device"] == "cuda" and r["precision"] == "bf16"
    assert m["n_rows"] == 40 and m["invalid_outputs"] == 0 and m["duplicate_outputs"] == 0


def test_rl_rollouts_and_update_on_cuda(tmp_path, tiny_dataset, tiny_backbone):
    """rl.device cuda: the policy, the reference, rollouts and the update on the GPU; the run is recorded there
    and its final model (saved from the GPU) moved away from the SFT model and is finite."""
    import csv

    from safetensors.torch import load_file

    from tsrec.commands.rl import rl_run
    from tsrec.model.runs import resolve_run
    from tsrec.model.sft import train_run

    params = make_params(tmp_path, tiny_dataset, tiny_backbone, max_steps=2)
    train_run(resolve_run(params, "tiny", "sft", out=tmp_path / "sft"))
    params["rl"] = {"variants": ["sft"], "train_prompts": 16, "max_steps": 3, "batch_size": 4, "num_generations": 16,
                    "eval_steps": 2, "valid_rows": 8, "valid_beams": 10, "lr": 1e-3, "precision": "fp32",
                    "device": "cuda"}
    meta = rl_run(params, "tiny", "sft", base=tmp_path / "sft", out=tmp_path / "rl")
    assert meta["rl"]["device"].startswith("cuda") and meta["rl"]["steps"] == 3
    with open(tmp_path / "rl" / "plots" / "rl.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and all(float(r["kl"]) >= 0 and abs(float(r["loss"])) < 1e3 for r in rows)
    a, b = (load_file(d / "final" / "model.safetensors") for d in (tmp_path / "sft", tmp_path / "rl"))
    assert all(torch.isfinite(b[k]).all() for k in b) and any(not torch.equal(a[k], b[k]) for k in a)


def test_bf16_pure_trains_bf16_weights_and_optimizer_on_cuda(tmp_path, tiny_dataset, tiny_backbone):
    """`paper`'s train.precision bf16_pure on the GPU (full fine-tune, as the authors): weights and AdamW moments
    bf16 on cuda, no fp32 copy, finite loss; the saved model is bf16 and evaluate scores it on the GPU."""
    import json

    from transformers import TrainerCallback

    from tsrec.cli import main
    from tsrec.model.runs import resolve_run
    from tsrec.model.sft import train_run

    seen = {}

    class Dtypes(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
            seen["weights"] = {(p.dtype, p.device.type) for p in model.parameters()}
            seen["moments"] = {(t.dtype, t.device.type) for st in optimizer.state.values() for k, t in st.items()
                               if k in ("exp_avg", "exp_avg_sq")}

    params = make_params(tmp_path, tiny_dataset, tiny_backbone, max_steps=6, precision="bf16_pure")
    params["backbone"]["finetune"] = "full"
    meta = train_run(resolve_run(params, "tiny", "tsrec", seed=5), callbacks=[Dtypes()])
    assert meta["train"]["precision"] == {"requested": "bf16_pure", "resolved": "bf16_pure"}
    assert seen == {"weights": {(torch.bfloat16, "cuda")}, "moments": {(torch.bfloat16, "cuda")}}
    assert torch.isfinite(torch.tensor(meta["train"]["train_loss"]))
    final = tmp_path / "artifacts/tiny/runs/tsrec/seed5/final"
    assert json.loads((final / "config.json").read_text()).get("dtype") == "bfloat16"
    rc = main(["--params", params["_path"], "evaluate", "--dataset", "tiny", "--variant", "tsrec", "--seed", "5",
               "--results", str(tmp_path / "results"), "--artifacts", str(tmp_path / "artifacts")])
    assert rc == 0
    m = json.loads((tmp_path / "results/tiny/tsrec/seed5/metrics.json").read_text())
    assert m["n_rows"] == 40 and m["invalid_outputs"] == 0
