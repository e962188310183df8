import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from tiny_train import make_params  # noqa: E402
from transformers import AutoModelForCausalLM, TrainerCallback

from tsrec.core.config import section
from tsrec.core.errors import ParamError, TsrecError
from tsrec.model.runs import RUN_HISTORY, TrainConfig, load_trained, stable_meta, variant_params
from tsrec.model.runs import resolve_run
from tsrec.model.sft import Collator, label_position_loss, train_run
from tsrec.model.tasks import IGNORE


@pytest.fixture()
def params(tmp_path, tiny_dataset, tiny_backbone):
    return make_params(tmp_path, tiny_dataset, tiny_backbone)


def _batch(model, pad_id, n=3):
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        length = 6 + 3 * i
        ids = torch.randint(3, model.config.vocab_size, (length,), generator=g).tolist()
        prompt = length - 2 - i
        rows.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:], "weight": 1.0})
    return rows, Collator(pad_id)


def test_label_position_loss_equals_full_head_loss(tiny_backbone):
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone)
    rows, coll = _batch(model, model.config.pad_token_id)
    batch = coll(rows)
    total, count = label_position_loss(model, model.get_output_embeddings(), batch)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert count == sum(sum(x != IGNORE for x in r["labels"][1:]) for r in rows)
    torch.testing.assert_close(total / count, full, rtol=1e-5, atol=1e-6)


def test_label_position_loss_skips_unused_logits_bit_identically(tiny_backbone):
    """The model's own head sees no row (only label positions go through ``head``), and the loss and every
    gradient are bit-identical to the earlier call (``logits_to_keep=1``, logits of the last position unused)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone)
    model.train()
    rows, coll = _batch(model, model.config.pad_token_id)
    batch = coll(rows)
    head = model.get_output_embeddings()
    seen = []
    hook = head.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[:-1].numel()))
    total, count = label_position_loss(model, head, batch)
    hook.remove()
    assert [n for n in seen if n] == [int(count)], "the model's head computed logits nobody reads"
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    labels = batch["labels"][:, 1:]  # the earlier formulation, inline
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=True, logits_to_keep=1, use_cache=False)
    keep = labels != IGNORE
    ce = torch.nn.functional.cross_entropy(head(out.hidden_states[-1][:, :-1][keep]).float(), labels[keep],
                                           reduction="none")
    old = (ce * batch["weight"][:, None].expand_as(labels)[keep]).sum()
    old.backward()
    assert torch.equal(total, old)
    for n, p in model.named_parameters():
        assert torch.equal(grads[n], p.grad), n


def test_lambda_scales_tsalign_loss(tiny_backbone):
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone)
    rows, coll = _batch(model, model.config.pad_token_id)
    head = model.get_output_embeddings()
    per = [label_position_loss(model, head, coll([r]))[0] for r in rows]
    for lam in (0.0, 0.5, 3.0):
        rows[2]["weight"] = lam  # the "TS-Align" sample
        total, _ = label_position_loss(model, head, coll(rows))
        torch.testing.assert_close(total, per[0] + per[1] + lam * per[2], rtol=1e-5, atol=1e-5)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            control.should_training_stop = True


class CountSteps(TrainerCallback):
    def __init__(self):
        self.n = 0

    def on_step_end(self, args, state, control, **kw):
        self.n += 1


def _weights(run):
    return load_file(run / "final" / "model.safetensors")


def test_resumed_run_matches_uninterrupted(params, tmp_path):
    full = train_run(resolve_run(params, "tiny", "tsrec", out=tmp_path / "full"))
    assert full["train"]["steps"] == 4 and full["train"]["resumed_from"] is None
    params["train"]["keep_checkpoints"] = True
    half = train_run(resolve_run(params, "tiny", "tsrec", out=tmp_path / "half"), callbacks=[StopAt(2)])
    assert half["train"]["steps"] == 2
    assert list((tmp_path / "half" / "checkpoints" / "checkpoint-2").glob("*.safetensors"))
    assert not list((tmp_path / "half" / "checkpoints").rglob("pytorch_model*"))  # weights as safetensors only
    counter = CountSteps()
    resumed = train_run(resolve_run(params, "tiny", "tsrec", out=tmp_path / "half"), callbacks=[counter])
    assert resumed["train"]["resumed_from"] == "checkpoint-2" and resumed["train"]["steps"] == 4
    assert counter.n == 2  # only the remaining steps ran
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "half")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # the loss curves agree too (resume trims and re-logs rows after the checkpoint)
    assert (tmp_path / "full/plots/valid.csv").read_text() == (tmp_path / "half/plots/valid.csv").read_text()
    # a changed configuration does not resume from old checkpoints
    params["tasks"]["seqrec"] = {"share": 0.5}
    other = train_run(resolve_run(params, "tiny", "tsrec", out=tmp_path / "half"))
    assert other["train"]["resumed_from"] is None
    steps = [int(line.split(",")[0]) for line in (tmp_path / "half/plots/train.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]  # a fresh run starts a new curve


def test_final_model_meta_and_load_trained_refusals(params, tmp_path, tiny_dataset, tiny_backbone):
    meta = train_run(resolve_run(params, "tiny", "sft", out=tmp_path / "run"))
    run = tmp_path / "run"
    assert not (run / "checkpoints").exists()  # removed once final/ exists
    header = (run / "plots/train.csv").read_text().splitlines()[0]
    assert header == "step,epoch,learning_rate,loss"
    model, tok, m = load_trained(run, index_path=tiny_dataset / "sid_index.json", backbone=tiny_backbone)
    # final/ holds the meta less its run history (timings, resume point): reruns hash the same
    assert m == stable_meta(meta) and not RUN_HISTORY & set(m["train"]) and "wall_s" in meta["train"]
    assert m["variant"] == "sft" and m["params"]["tasks"]["tsalign"]["enabled"] is False
    assert "<a_0>" in tok.get_vocab() and model.get_input_embeddings().weight.shape[0] == len(tok)
    # LoRA + trainable SID rows were merged into a plain, still tied model
    base = AutoModelForCausalLM.from_pretrained(tiny_backbone)
    emb, old = model.get_input_embeddings().weight, base.get_input_embeddings().weight
    assert type(model).__name__ == "LlamaForCausalLM" and not hasattr(model, "peft_config")
    assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    torch.testing.assert_close(emb[: old.shape[0]], old)  # old rows untouched in LoRA mode
    q_new, q_old = (m.model.layers[0].self_attn.q_proj.weight for m in (model, base))
    assert not torch.allclose(q_new, q_old)  # LoRA delta merged
    other = tmp_path / "other_index.json"
    idx = json.loads((tiny_dataset / "sid_index.json").read_text())
    idx["0"], idx["1"] = idx["1"], idx["0"]
    other.write_text(json.dumps(idx))
    with pytest.raises(TsrecError, match="another SID index"):
        load_trained(run, index_path=other)
    other_bb = tmp_path / "bb2"
    shutil.copytree(tiny_backbone, other_bb)
    sd = load_file(other_bb / "model.safetensors")
    sd[next(iter(sd))] += 1
    from safetensors.torch import save_file
    save_file(sd, other_bb / "model.safetensors")
    with pytest.raises(TsrecError, match="another backbone"):
        load_trained(run, backbone=other_bb)


def test_bad_params_refused(params):
    with pytest.raises(ParamError, match="unknown variant"):
        variant_params(params, "nope")
    params["variants"]["weird"] = {"optimizer": {"lr": 1}}
    with pytest.raises(ParamError, match="overrides only"):
        variant_params(params, "weird")
    for bad in ({"batch_size": 0}, {"lr": 2.0}, {"patience": 0}, {"epochs": 0, "max_steps": -1}, {"nope": 1}):
        with pytest.raises(ParamError):
            section({"train": bad}, "train", TrainConfig)
    params["variants"]["tsrec"] = {"backbone": {"keep_layers": 0}}
    with pytest.raises(ParamError, match="keep_layers"):
        train_run(resolve_run(params, "tiny", "tsrec"))


def test_seed_option_is_the_top_level_seed_of_that_run(params, tmp_path):
    """train_run(seed=N) trains exactly as params with ``seed: N`` (weights, task draws, valid subsample, batch
    order all follow it), into its own seed folder; another seed gives another run."""
    a = train_run(resolve_run(params, "tiny", "sft", seed=5))
    b = train_run(resolve_run({**params, "seed": 5}, "tiny", "sft", out=tmp_path / "b"))
    c = train_run(resolve_run(params, "tiny", "sft", seed=6))
    run = tmp_path / "artifacts" / "tiny" / "runs" / "sft"
    assert sorted(p.name for p in run.iterdir()) == ["seed5", "seed6"]
    assert a["seed"] == b["seed"] == a["params"]["seed"] == 5 and a["params"] == b["params"]
    curve = lambda d: (d / "plots" / "valid.csv").read_text()  # noqa: E731
    assert curve(run / "seed5") == curve(tmp_path / "b") != curve(run / "seed6")
    wa, wb = (load_file(d / "final" / "model.safetensors") for d in (run / "seed5", tmp_path / "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["train"]["train_loss"] == b["train"]["train_loss"] != c["train"]["train_loss"]


def test_summary_records_precision_and_stop_reason(params, tmp_path, monkeypatch):
    """auto follows the hardware; a run that ends on its step cap says so, one that plateaus says plateau."""
    from tsrec.core import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    params["train"]["precision"] = "auto"  # the default is fp32 now; auto is still an option
    params["train"].update(early_stopping=True, select="valid_loss")  # the plateau stop: an option, not the default
    meta = train_run(resolve_run(params, "tiny", "sft", out=tmp_path / "cap"))
    assert meta["train"]["precision"] == {"requested": "auto", "resolved": "fp32"}
    assert meta["train"]["stop_reason"] == "step_cap" and meta["train"]["steps"] == 4
    params["train"].update(max_steps=40, patience=1, min_delta=100.0)  # no gain can count: stops at 2nd eval
    meta = train_run(resolve_run(params, "tiny", "sft", out=tmp_path / "plateau"))
    assert meta["train"]["stop_reason"] == "plateau" and meta["train"]["steps"] < 40
