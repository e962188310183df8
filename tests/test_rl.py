"""The RL stage (GRPO): the authors' rewards and advantages on hand-made groups, the loss, one-prefill scoring
against full-sequence scoring, and a tiny end-to-end run that evaluate loads, interrupted and resumed."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_decoding import encode, random_prompts, sid_model
from tiny_train import make_params  # noqa: E402

from tsrec.data import layout
from tsrec.cli import main
from tsrec.core.config import section
from tsrec.data.datasets import load_index
from tsrec.lm.decoding import SidTrie, beam_search, left_pad
from tsrec.core.errors import ParamError
from tsrec.commands.rl import rl_run
from tsrec.model.grpo import (
    MATRIX_KEYS,
    RLConfig,
    completion_logps,
    group_advantages,
    group_rewards,
    grpo_loss,
    ranking_reward,
    ranking_weights,
    rule_reward,
    sid_tokens,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- rewards
def test_ranking_weights_are_the_authors_ndcg_rewards():
    # train/rl.py: ndcg_rewards = [-1/log2(i+2)]; ndcg_rewards = [-e/sum(ndcg_rewards)] -- over all 16 positions
    theirs = [-1.0 / math.log2(i + 2) for i in range(16)]
    theirs = [-e / sum(theirs) for e in theirs]
    w = ranking_weights(16)
    assert [-x for x in w] == pytest.approx(theirs, abs=1e-15)
    assert sum(w) == pytest.approx(1.0) and w == sorted(w, reverse=True) and w[0] == pytest.approx(1 / sum(
        1 / math.log2(i + 2) for i in range(16)))


W = ranking_weights(4)


@pytest.mark.parametrize("group,rule,ranking", [
    (["T", "a", "b", "c"], [1, 0, 0, 0], [0, -W[1], -W[2], -W[3]]),        # target first
    (["a", "b", "c", "T"], [0, 0, 0, 1], [-W[0], -W[1], -W[2], 0]),        # target last
    (["a", "b", "c", "d"], [0, 0, 0, 0], [0, 0, 0, 0]),                    # target absent: 0 everywhere
    (["a", "T", "a", "T"], [0, 1, 0, 1], [-W[0], 0, -W[2], 0]),            # duplicates: each copy judged alone
])
def test_rule_and_ranking_rewards_on_hand_made_groups(group, rule, ranking):
    assert rule_reward(group, "T") == rule
    assert ranking_reward(group, "T") == pytest.approx(ranking)
    total, parts = group_rewards(group, "T", "ranking")
    assert total == pytest.approx([r + k for r, k in zip(rule, ranking)])
    assert parts == {"rule": rule_reward(group, "T"), "ranking": ranking_reward(group, "T")}
    assert group_rewards(group, "T", "rule")[0] == rule
    assert group_rewards(group, "T", "ranking_only")[0] == pytest.approx(ranking)


def test_group_advantages():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0],     # target first, rule only: mean 1/4, unbiased std 1/2
                      [0.0, 0.0, 0.0, 0.0],     # target absent: nothing to learn
                      [1.0 - 0.0, -0.3, -0.2, -0.1]])
    a = group_advantages(r)
    assert a[0].tolist() == pytest.approx([0.75 / (0.5 + 1e-4)] + [-0.25 / (0.5 + 1e-4)] * 3)
    assert a[1].tolist() == [0.0] * 4
    assert a[2].tolist() == pytest.approx(((r[2] - r[2].mean()) / (r[2].std() + 1e-4)).tolist())
    assert a.sum(-1).abs().max() < 1e-5  # zero-mean per group
    # groups are independent: a row's advantages do not depend on the other rows
    assert torch.equal(group_advantages(r[2:]), a[2:])


def test_grpo_loss_value_gradient_and_kl():
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(2, 3, 4, generator=g)).requires_grad_()
    adv = torch.randn(2, 3, generator=g)
    loss, kl = grpo_loss(logp, logp.detach().clone(), adv, beta=1e-3)
    assert kl.item() == 0.0 and loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)  # ratio 1, no KL
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv[..., None].expand(2, 3, 4) / 24)  # mean over 2*3 groups x 4 tokens
    ref = logp.detach() - 0.5
    d = ref - logp.detach()
    _, kl = grpo_loss(logp, ref, adv, beta=1e-3)
    assert kl.item() == pytest.approx((torch.exp(d) - d - 1).mean().item()) and kl.item() > 0


# ---------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def tiny_sid(tiny_backbone):
    return sid_model(tiny_backbone, codes=4)


def _naive_logps(model, prompts, completions):
    """One full forward per (prompt, completion): the log-prob of each completion token."""
    out = torch.zeros(completions.shape)
    for i, p in enumerate(prompts):
        for j, c in enumerate(completions[i].tolist()):
            ids = torch.tensor([p + c])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            out[i, j] = logp[len(p) - 1:-1].gather(1, torch.tensor(c)[:, None])[:, 0]
    return out


def test_one_prefill_scoring_equals_full_sequences_and_the_beam_scores(tiny_sid):
    model, tok = tiny_sid
    index = {i: [f"<a_{i // 16}>", f"<b_{i // 4 % 4}>", f"<c_{i % 4}>"] for i in range(40)}
    trie = SidTrie.from_index(index, tok)
    prompts = encode(tok, random_prompts(tok, 3, seed=1))
    ids, mask = left_pad(prompts, tok.pad_token_id)
    res = beam_search(model, ids, mask, trie, 6)
    comp = sid_tokens(trie, res.sid_ids)
    assert comp.shape == (3, 6, 4) and (comp[..., -1] == tok.eos_token_id).all()
    with torch.no_grad():
        shared = completion_logps(model, ids, mask, comp, shared_prefix=True)
        copied = completion_logps(model, ids, mask, comp, shared_prefix=False)
        naive = _naive_logps(model, prompts, comp)
    torch.testing.assert_close(shared, naive, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(copied, naive, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(shared.sum(-1), res.scores, atol=2e-5, rtol=1e-5)  # the decoder's beam scores


def test_one_prefill_scoring_gradients_equal_full_sequences(tiny_sid):
    model, tok = tiny_sid
    prompts = encode(tok, random_prompts(tok, 2, seed=2))
    ids, mask = left_pad(prompts, tok.pad_token_id)
    sid_vocab = [tok.convert_tokens_to_ids(f"<{lv}_{c}>") for lv in "abc" for c in range(4)]
    g = torch.Generator().manual_seed(3)
    comp = torch.tensor(sid_vocab)[torch.randint(0, 12, (2, 5, 4), generator=g)]
    weights = torch.randn(2, 5, 4, generator=g)
    grads = []
    for fn in (lambda: completion_logps(model, ids, mask, comp, shared_prefix=True),
               lambda: completion_logps(model, ids, mask, comp, shared_prefix=False),
               lambda: _naive_logps_grad(model, prompts, comp)):
        model.zero_grad()
        (fn() * weights).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _naive_logps_grad(model, prompts, completions):
    rows = []
    for i, p in enumerate(prompts):
        for c in completions[i].tolist():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].float(), -1)
            rows.append(logp[len(p) - 1:-1].gather(1, torch.tensor(c)[:, None])[:, 0])
    return torch.stack(rows).view(completions.shape)


# ---------------------------------------------------------------- params
@pytest.mark.parametrize("raw,field", [
    ({"num_generations": 1}, "rl"),
    ({"reward_type": "ndcg"}, "rl.reward_type"),
    ({"batch_sise": 8}, "rl"),
    ({"tasks": {"seqrec": 0.0}}, "rl.tasks"),
    ({"variants": ["sft_rl"]}, "rl"),
    ({"train_prompts": 0}, "rl"),
    ({"lr": "1e-5"}, "rl.lr"),
])
def test_bad_params_give_one_param_error_naming_the_field(raw, field):
    with pytest.raises(ParamError) as exc:
        section({"rl": raw, "_path": "p.yaml"}, "rl", RLConfig)
    assert exc.value.field == field and str(exc.value.file) == "p.yaml"


def test_repo_params_rl_section_loads():
    from tsrec.core.config import load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    cfg = section(params, "rl", RLConfig)
    assert cfg.num_generations == 16 and cfg.beta == 1e-3 and cfg.lr == 1e-5 and cfg.reward_type == "ranking"
    assert set(cfg.variants) <= set(params["train"]["variants"])  # the default pipeline trains the SFT runs rl needs


# ---------------------------------------------------------------- the DVC stages
def _stages() -> dict:
    import yaml

    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("profile", [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_rl_stage_tracks_every_rl_setting_but_the_matrix_list(profile):
    """As the train stage (tests/test_seeds.py): adding a variant, seed or dataset reruns no RL run already
    made, so the rl stage lists the rl keys one by one, leaving out rl.variants; DVC fails on a listed key a
    params file lacks, so every full params file and every overlay merged onto params.yaml (profile_params)
    carries every rl key, and rl starts only from SFT runs the profile trains."""
    from test_seeds import profile_params

    params = _stages()["rl"]["params"]
    listed = {p.split(".", 1)[1] for p in params if p.startswith("rl.")}
    full = profile_params(profile)
    keys = set(full["rl"])
    for key in MATRIX_KEYS:  # the RL runs start from SFT runs of the train matrix
        assert set(full["rl"][key]) <= set(full["train"][key]), (profile.name, key)
    assert "rl" not in params and not listed & set(MATRIX_KEYS)
    assert listed == keys - set(MATRIX_KEYS), (f"{profile.name}: rl keys {sorted(keys - set(MATRIX_KEYS))} vs "
                                               f"dvc.yaml rl params {sorted(listed)}")
    assert listed == {f.name for f in __import__("dataclasses").fields(RLConfig)} - set(MATRIX_KEYS)


def test_rl_stages_run_one_per_dataset_variant_seed_into_seed_folders(tmp_path):
    import shutil

    import yaml

    shutil.copy(REPO / "dvc.yaml", tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(seeds=[42, 43, 44], datasets=["Industrial_and_Scientific"])
    params["rl"].update(seeds=[42, 43], datasets=["Industrial_and_Scientific"])  # the RL matrix, not train's
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=tmp_path, check=True)
    from dvc.repo import Repo

    with Repo(str(tmp_path)) as repo:
        stages = {s.name: s for s in repo.index.stages}
    ds = "Industrial_and_Scientific"
    assert {n for n in stages if n.startswith(("rl@", "evaluate_rl@"))} == {
        f"{st}@{ds}-{v}-{s}" for st in ("rl", "evaluate_rl") for v in ("sft", "tsrec") for s in (42, 43)}
    # `dvc repro evaluate` (make repro) scores the SFT runs only: no evaluate stage needs an RL run
    assert not any("_rl" in n for n in stages if n.startswith("evaluate@"))
    rl, ev = stages[f"rl@{ds}-sft-43"], stages[f"evaluate_rl@{ds}-sft-43"]
    assert rl.cmd == f"tsrec rl --dataset {ds} --variant sft --seed 43"
    assert ev.cmd == f"tsrec evaluate --dataset {ds} --variant sft_rl --seed 43"
    run = str(layout.train_run_dir("artifacts", ds, "sft_rl", 43) / "final")
    res = layout.results_dir("results", ds, "sft_rl", 43)
    assert str(layout.train_run_dir("artifacts", ds, "sft", 43) / "final") in {d.def_path for d in rl.deps}
    assert {o.def_path for o in rl.outs} == {run, *(str(res / f) for f in ("rl_summary.json", "rl.csv",
                                                                          "rl_valid.csv"))}
    assert run in {d.def_path for d in ev.deps}
    assert {o.def_path for o in ev.outs} == {str(layout.eval_dir("artifacts", ds, "sft_rl", 43)),
                                             *(str(res / f) for f in ("run.json", "ranks.parquet", "metrics.json"))}


# ---------------------------------------------------------------- end to end
RL = {"train_prompts": 24, "epochs": 1.0, "batch_size": 4, "num_generations": 16, "eval_steps": 2,
      "valid_rows": 8, "valid_beams": 10, "ref_sync_steps": 2, "lr": 1e-3, "threads": 1, "precision": "fp32"}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_backbone):
    from tsrec.model.runs import resolve_run
    from tsrec.model.sft import train_run
    from tsrec.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("rl")
    params = make_params(root, make_dataset(root / "data" / "tiny"), tiny_backbone, max_steps=2)
    train_run(resolve_run(params, "tiny", "sft"))
    params["rl"] = {**RL, "variants": ["sft"]}
    return root, params


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_tiny_rl_run_writes_a_run_evaluate_loads(sft_run, capsys):
    import yaml

    root, params = sft_run
    (root / "params.yaml").write_text(yaml.safe_dump({k: v for k, v in params.items() if k != "_path"}))
    pfile = str(root / "params.yaml")
    assert main(["--params", pfile, "rl", "--dataset", "tiny", "--variant", "sft",
                 "--results", str(root / "results")]) == 0
    seed = params["seed"]  # no --seed: the top-level seed, as tsrec train
    run = layout.train_run_dir(root / "artifacts", "tiny", "sft_rl", seed)
    res = layout.results_dir(root / "results", "tiny", "sft_rl", seed)
    assert (run / "final" / "tsrec_meta.json").is_file() and not (run / "checkpoints").exists()
    steps = math.ceil(24 / 4)
    log = _rows(res / "rl.csv")
    assert [int(r["step"]) for r in log] == list(range(1, steps + 1))
    for r in log:
        rule, ranking = float(r["reward_rule"]), float(r["reward_ranking"])
        assert 0 <= rule <= 1 / 16 and -1 / 16 < ranking <= 0 and float(r["kl"]) >= 0
        assert float(r["reward"]) == pytest.approx(rule + ranking)
    assert [int(r["step"]) for r in _rows(run / "plots" / "rl_valid.csv")] == [0, 2, 4, 6]
    summary = __import__("json").loads((res / "rl_summary.json").read_text())
    assert summary["rl"]["steps"] == steps and summary["rl"]["rollout_tokens_per_s"] > 0
    assert summary["rl"]["update_tokens_per_s"] > 0 and summary["base"]["variant"] == "sft"
    assert summary["seed"] == seed and summary["base"]["seed"] == seed and "variants" not in summary["params"]
    base_run = layout.train_run_dir(root / "artifacts", "tiny", "sft", seed)
    assert summary["base"]["run"] == str(base_run)
    # the policy moved away from the SFT model
    base = load_file(base_run / "final" / "model.safetensors")
    new = load_file(run / "final" / "model.safetensors")
    assert set(base) == set(new) and any(not torch.equal(base[k], new[k]) for k in base)
    # evaluate loads it like any other variant
    assert main(["--params", pfile, "evaluate", "--dataset", "tiny", "--variant", "sft_rl", "--beams", "20",
                 "--results", str(root / "results"), "--artifacts", str(root / "artifacts")]) == 0
    assert "tiny/sft_rl test n=40" in capsys.readouterr().out
    assert (res / "metrics.json").is_file() and (res / "ranks.parquet").is_file()
    # another seed starts from that seed's SFT run: none here, one clear error naming its folder
    assert main(["--params", pfile, "rl", "--dataset", "tiny", "--variant", "sft", "--seed", str(seed + 1),
                 "--results", str(root / "results")]) == 2
    err = capsys.readouterr().err
    assert "no trained SFT run" in err and str(layout.train_run_dir(root / "artifacts", "tiny", "sft", seed + 1)) in err


class Stop(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_model(sft_run, tmp_path):
    root, params = sft_run
    full = rl_run(params, "tiny", "sft", out=tmp_path / "full")

    def stop_at_4(step, row):
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        rl_run(params, "tiny", "sft", out=tmp_path / "cut", callbacks=[stop_at_4])
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-4").is_dir()
    resumed = rl_run(params, "tiny", "sft", out=tmp_path / "cut")
    assert resumed["rl"]["resumed_from"] == "checkpoint-4" and resumed["rl"]["steps"] == full["rl"]["steps"]
    a, b = (load_file(tmp_path / d / "final" / "model.safetensors") for d in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("rl.csv", "rl_valid.csv"):
        assert (tmp_path / "cut" / "plots" / name).read_text() == (tmp_path / "full" / "plots" / name).read_text()


def test_callback_objects_see_every_step_after_the_builtin_ones(sft_run, tmp_path):
    """A grpo.Callback passed to the loop: begin, one call per step with the row rl.csv got, end; by the
    time it sees a checkpoint step, the checkpoint and the valid row are written."""
    from tsrec.model.grpo import Callback

    root, params = sft_run
    params = {**params, "rl": {**params["rl"], "max_steps": 4}}
    seen = []

    class Record(Callback):
        def on_train_begin(self, s):
            seen.append(("begin", s.step, s.total))

        def on_step_end(self, s, row):
            ckpt = (s.run.ckpt_dir / f"checkpoint-{s.step}").is_dir()
            seen.append(("step", s.step, row["loss"], ckpt, len(_rows(s.run.plots / "rl_valid.csv"))))

        def on_train_end(self, s):
            seen.append(("end", s.step))

    rl_run(params, "tiny", "sft", out=tmp_path / "cb", callbacks=[Record()])
    log = _rows(tmp_path / "cb" / "plots" / "rl.csv")
    assert seen[0] == ("begin", 0, 4) and seen[-1] == ("end", 4)
    assert [x[1] for x in seen[1:-1]] == [1, 2, 3, 4]
    assert [x[2] for x in seen[1:-1]] == pytest.approx([float(r["loss"]) for r in log])
    assert [x[3:] for x in seen[1:-1]] == [(False, 1), (True, 2), (False, 2), (True, 3)]


def test_unknown_variant_is_one_clear_error(sft_run, capsys):
    root, params = sft_run
    import yaml

    (root / "p2.yaml").write_text(yaml.safe_dump({k: v for k, v in params.items() if k != "_path"}))
    assert main(["--params", str(root / "p2.yaml"), "rl", "--dataset", "tiny", "--variant", "tsrec"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tsrec rl: error:") and "rl.variants" in err


def test_rl_renders_the_sft_runs_prompt_text(tmp_path, tiny_backbone, monkeypatch):
    """An SFT run trained with the authors' prompt text (profiles/authors.yaml: Alpaca header, SIDs joined by
    ", ", "\\n" before EOS): RL renders its prompts through the same registry with THAT run's text (its meta),
    so every RL prompt is the prompt of one of the run's SFT seqrec examples and its target a bare SID,
    rollouts and scored completions end with "\\n" + EOS, the valid prompts are the run's seqrec prompts,
    and evaluate scores the RL run with the same text."""
    import json

    import tsrec.model.scoring
    from tsrec.commands import profiles
    from tsrec.model import grpo
    from tsrec.core.config import deep_merge
    from tsrec.model.runs import load_trained
    from tsrec.model.runs import resolve_run
    from tsrec.model.sft import train_run
    from tsrec.data.synthetic import make_dataset
    from tsrec.model.tasks import IGNORE, build_examples, load_corpus, seqrec_prompt, tasks_config

    params = make_params(tmp_path, make_dataset(tmp_path / "data" / "tiny"), tiny_backbone, max_steps=1)
    params = deep_merge(params, {"tasks": profiles.overlay("authors")["tasks"]})
    base = layout.train_run_dir(tmp_path / "artifacts", "tiny", "sft", params["seed"])
    train_run(resolve_run(params, "tiny", "sft"))
    _, tok, meta = load_trained(base)
    tcfg = tasks_config({"tasks": meta["params"]["tasks"]})
    assert tcfg.prompts.eos_suffix == "\n" and tcfg.prompts.header.startswith("Below is an instruction")

    seen: dict = {"valid": [], "ends": [], "completions": []}
    real_rows, real_beam, real_tokens = tsrec.model.scoring.evaluate_rows, grpo.beam_search, grpo.sid_tokens

    def rows(model, tokenizer, trie, index, df, prompt_fn, encode, **kw):
        seen["valid"].append(prompt_fn(["<a_1><b_2><c_3>", "<a_4><b_5><c_6>"]))
        return real_rows(model, tokenizer, trie, index, df, prompt_fn, encode, **kw)

    def beam(model, ids, mask, trie, g):
        seen["ends"].append(trie.end)
        return real_beam(model, ids, mask, trie, g)

    def tokens(trie, sid_ids):
        seen["completions"].append(real_tokens(trie, sid_ids))
        return seen["completions"][-1]

    monkeypatch.setattr(tsrec.model.scoring, "evaluate_rows", rows)
    monkeypatch.setattr(grpo, "beam_search", beam)
    monkeypatch.setattr(grpo, "sid_tokens", tokens)
    params["rl"] = {**RL, "variants": ["sft"], "train_prompts": 8, "max_steps": 2, "eval_steps": 2, "valid_rows": 4}
    out = layout.train_run_dir(tmp_path / "artifacts", "tiny", "sft_rl", params["seed"])
    rl_meta = rl_run(params, "tiny", "sft", out=out)
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    end = (*nl, tok.eos_token_id)
    assert seen["ends"] and set(seen["ends"]) == {end}
    assert all(c.shape[-1] == 3 + len(end) and c[..., 3:].eq(torch.tensor(end)).all() for c in seen["completions"])
    want = seqrec_prompt(["<a_1><b_2><c_3>", "<a_4><b_5><c_6>"], tcfg.prompts)
    assert seen["valid"] and all(v == want for v in seen["valid"])
    assert want[1].startswith("### User Input: \nThe user has interacted with items <a_1><b_2><c_3>, <a_4><b_5>")
    assert rl_meta["params"]["tasks"] == meta["params"]["tasks"]

    # the RL pool: the prompt part of the run's SFT seqrec examples, targets without the suffix
    from dataclasses import replace

    from tsrec.model.tasks import TaskParams

    ipath = tsrec.model.scoring.run_index(base, tmp_path / "data" / "tiny" / "sid_index.json")
    corpus = load_corpus(tmp_path / "data" / "tiny", ipath, None, replace(tcfg, tsalign=TaskParams(enabled=False)))
    trie = SidTrie.from_index(load_index(ipath), tok, suffix="\n")
    pool = grpo.rl_prompts(corpus, tok, section({"rl": RL}, "rl", RLConfig).tasks, None, params["seed"], tcfg.max_len,
                         trie.depth, len(trie.end))
    sft_prompts = {tuple(r["input_ids"][:r["labels"].index(next(x for x in r["labels"] if x != IGNORE))])
                   for r in build_examples(corpus, tok, params["seed"]) if r["task"] == "seqrec"}
    assert len(pool) == len(corpus.rows) and {tuple(p) for p, _ in pool} == sft_prompts
    assert {sid for _, sid in pool} <= set(trie.names)

    # evaluate reads the RL run's meta: the same text and "\n" before EOS
    (tmp_path / "params.yaml").write_text(__import__("yaml").safe_dump({k: v for k, v in params.items() if k != "_path"}))
    assert main(["--params", str(tmp_path / "params.yaml"), "evaluate", "--dataset", "tiny", "--variant", "sft_rl",
                 "--results", str(tmp_path / "results"), "--artifacts", str(tmp_path / "artifacts")]) == 0
    res = layout.results_dir(tmp_path / "results", "tiny", "sft_rl", params["seed"])
    record = json.loads((res / "run.json").read_text())
    assert record["prompt"]["eos_suffix"] == "\n" and record["prompt"]["first_row"][0].startswith("Below is")
    assert json.loads((res / "metrics.json").read_text())["invalid_outputs"] == 0
