"""Named profiles (profiles/{cpu,authors,paper}.yaml, tsrec.commands.profiles) and the authors' protocol in the registry."""

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from sid_setup import tokenizer_and_cache  # noqa: E402
from tiny_train import make_params  # noqa: E402

from tsrec.commands import profiles
from tsrec.core.config import load_params, section
from tsrec.core.errors import ParamError
from tsrec.model.runs import TrainConfig, variant_params
from tsrec.model.sainit import SAInitConfig
from tsrec.model.scoring import EvaluateConfig
from tsrec.model.runs import resolve_run
from tsrec.model.sft import dry_run
from tsrec.model.tasks import (
    IGNORE,
    PromptsConfig,
    build_examples,
    encode_prompt,
    load_corpus,
    seqrec_examples,
    seqrec_prompt,
    tasks_config,
)

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")

# the cpu profile's tasks section as it was before the prompts became params (issue 15)
CPU_TASKS = {"seqrec": {"enabled": True, "share": 1.0}, "item2sid": {"enabled": True, "share": 0.2},
             "sid2item": {"enabled": True, "share": 0.2}, "sid_hist2title": {"enabled": True, "share": 0.1},
             "title_hist2sid": {"enabled": True, "share": 0.1}, "tsalign": {"enabled": True, "share": 1.0, "weight": 1.0},
             "max_len": 256, "title_words": 10, "title_history": 3, "desc_words": 0}
# sha256 of the examples (task, input_ids, labels, weight) + 40 valid seqrec rows, computed with the code
# BEFORE issue 15: the default registry must train exactly the same tokens
# (the code defaults are params.yaml's since issue 13: tests/test_params_truth.py)
PINNED = {"cpu": "fc845eb4b34898b1835715dae4a2c73febaa88ae1e4df06d588e1bf5d5c203e0"}


@pytest.fixture(scope="module")
def corpus_env(tmp_path_factory, tiny_backbone):
    from tsrec.data.synthetic import make_dataset

    tmp = tmp_path_factory.mktemp("profiles")
    ds = make_dataset(tmp / "ds")
    kw, tok, tokens = tokenizer_and_cache(ds, tiny_backbone, tmp / "kw.json", token_in_description=True)
    return ds, kw, tok, tokens


def _examples(env, tasks: dict):
    ds, kw, tok, _ = env
    cfg = tasks_config({"tasks": tasks})
    corpus = load_corpus(ds, ds / "sid_index.json", kw, cfg)
    return corpus, build_examples(corpus, tok, seed=42), seqrec_examples(ds, "valid", corpus.sids, tok, cfg.max_len,
                                                                       0, 42, cfg.prompts)


def _digest(rows) -> str:
    return hashlib.sha256(json.dumps([[r["task"], r["input_ids"], r["labels"], r["weight"]] for r in rows])
                          .encode()).hexdigest()


@pytest.mark.parametrize("name, tasks", [("cpu", CPU_TASKS), ("cpu", PARAMS["tasks"]), ("cpu", {})])
def test_default_registry_trains_the_same_tokens_as_before(corpus_env, name, tasks):
    _, rows, valid = _examples(corpus_env, tasks)
    assert _digest(rows + valid) == PINNED[name]


def test_cpu_profile_is_the_committed_params():
    resolved = profiles.resolve(PARAMS, "cpu")
    assert resolved == {k: v for k, v in PARAMS.items() if k != "_path"}


def _keys(d: dict, where: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out |= _keys(v, f"{where}{k}.") if isinstance(v, dict) else {f"{where}{k}"}
    return out


def test_cpu_resets_every_knob_the_other_profiles_set():
    """cpu sets every key the others set, or removes it (its ``absent`` list: keys params.yaml lacks)."""
    over = profiles.overlay("cpu")
    absent = over.pop(profiles.ABSENT)
    cpu = _keys(over)
    for name in ("authors", "paper"):
        other = profiles.overlay(name)
        missing = {k for k in _keys(other) - cpu if not any(k == a or k.startswith(a + ".") for a in absent)}
        assert not missing, f"{name} sets {sorted(missing)} that `make profile P=cpu` would not put back"
        added = {f"variants.{v}" for v in other.get("variants", {})}
        assert added <= set(absent), f"{name} adds variants {sorted(added - set(absent))} that P=cpu would keep"
    # the default declares none of them: `tsrec report` lists every declared variant (a "not run" row each)
    assert not {f"variants.{v}" for v in PARAMS["variants"]} & set(absent)
    assert all(k.split(".")[0] == "variants" for k in absent)


AUTHORS_HEADER = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                  "Write a response that appropriately completes the request. \n\n### Instruction:\n")


def test_profiles_resolve_to_the_intended_params():
    for name in profiles.OVERLAYS:
        profiles.validate({**profiles.resolve(PARAMS, name), "_path": f"profiles/{name}.yaml"})  # strict validation
    authors = {**profiles.resolve(PARAMS, "authors"), "_path": "authors"}
    paper = {**profiles.resolve(PARAMS, "paper"), "_path": "paper"}
    for params in (authors, paper):
        vp = variant_params(params, params["train"]["variants"][0])
        t = tasks_config(vp)
        assert {n: (getattr(t, n).enabled, getattr(t, n).share) for n in
                ("seqrec", "item2sid", "sid2item", "sid_hist2title", "tsalign")} == {
            n: (True, 1.0) for n in ("seqrec", "item2sid", "sid2item", "sid_hist2title", "tsalign")}
        assert not t.title_hist2sid.enabled and t.tsalign.weight == 1.0
        assert (t.title_words, t.max_len, t.item_pool) == (0, 512, "distinct")
        assert section(vp, "sainit", SAInitConfig).rescale_target == "current_table"
        tc = section(vp, "train", TrainConfig)
        assert (tc.schedule, tc.group_by_length) == ("linear", False)
        assert section(params, "evaluate", EvaluateConfig).prompt == "paraphrase"
        assert set(params["train"]["variants"]) <= set(params["variants"])
        # the authors' prompt text, character for character (data/ts_rec_data.py, data/rl_data.py)
        segs, resp = t.prompts.render("seqrec", history=", ".join(["<a_1><b_2><c_3>", "<a_4><b_5><c_6>"]),
                                      sid="<a_7><b_8><c_9>")
        assert segs == [AUTHORS_HEADER + "Can you predict the next possible item that the user may expect?\n\n",
                        "### User Input: \nThe user has interacted with items <a_1><b_2><c_3>, <a_4><b_5><c_6> in "
                        "chronological order. Can you predict the next possible item that the user may expect?"
                        "\n\n### Response:\n"]
        assert resp == "<a_7><b_8><c_9>\n"
        assert seqrec_prompt(["<a_1><b_2><c_3>"], t.prompts, "paraphrase")[1] == (
            "### User Input: \nCan you predict the next possible item the user may expect, given the following "
            "chronological interaction history: <a_1><b_2><c_3>\n\n### Response:\n")
        segs, resp = t.prompts.render("tsalign_d2t", description="Saw blades.", token="<a_3>")
        assert segs[0] == AUTHORS_HEADER + "Answer the question about item Semantic ID token identification.\n"
        assert "contain: \"Saw blades.\"?\n\n### Response:\n" in segs[1] and resp == "<a_3>\n"
    # `authors` keeps the cpu backbone; its step cap is a cut below the cpu one (a run must fit one session), so
    # its linear schedule anneals within it (the other forced knobs: test_authors_profile_is_the_authors_code)
    for key in ("backbone", "seed"):
        assert authors[key] == PARAMS[key]
    assert 0 < authors["train"]["max_steps"] < PARAMS["train"]["max_steps"]
    # paper: + Qwen2.5-1.5B, pure bf16, global batch 1024, 10 epochs with the authors' early stopping
    b = paper["backbone"]
    assert (b["model"], b["keep_layers"], b["finetune"]) == ("Qwen/Qwen2.5-1.5B", None, "full")
    tc = section(paper, "train", TrainConfig)
    assert (tc.global_batch, tc.epochs, tc.max_steps, tc.patience, tc.eval_steps, tc.lr, tc.precision) == (
        1024, 10.0, -1, 3, 0.05, 3e-4, "bf16_pure")
    assert paper["evaluate"]["precision"] == "bf16"


# The TS-Rec authors' value of each knob docs/profiles.md names, beside where it is in their code (github
# jiaweif3ng/TS-Rec-Review @ b66944b: scripts/ts_rec_sft.sh, train/ts_rec_sft.py, data/ts_rec_data.py,
# data/rl_data.py; HF = a transformers TrainingArguments / EarlyStoppingCallback default they leave as is).
AUTHORS = {
    "train.lr": (3e-4, "ts_rec_sft.sh: --learning_rate 3e-4"),
    "train.schedule": ("linear", "HF lr_scheduler_type; their cosine helper is never passed to the Trainer"),
    "train.warmup_steps": (20, "ts_rec_sft.py: warmup_steps=20"),
    "train.weight_decay": (0.0, "HF weight_decay"),
    "train.epochs": (10.0, "ts_rec_sft.py: num_epochs=10"),
    "train.eval_steps": (0.05, "ts_rec_sft.py: eval_step = 0.05 (eval_steps and save_steps)"),
    "train.valid_rows": (0, "ts_rec_sft.py: val_data = SidSFTDataset(eval_file, sample=-1): every valid row"),
    "train.patience": (3, "ts_rec_sft.py: EarlyStoppingCallback(early_stopping_patience=3)"),
    "train.min_delta": (0.0, "HF early_stopping_threshold"),
    "train.group_by_length": (False, "ts_rec_sft.py: group_by_length=False"),
    "train.early_stopping": (True, "ts_rec_sft.py: callbacks=[EarlyStoppingCallback(...)]"),
    "train.select": ("valid_loss", "ts_rec_sft.py: load_best_model_at_end=True, HF metric_for_best_model loss"),
    "train.rank_rows": (0, "their valid pass computes the loss only (no ranking during training)"),
    "tasks.seqrec": ({"enabled": True, "share": 1.0}, "SidSFTDataset: every train row"),
    "tasks.item2sid": ({"enabled": True, "share": 1.0}, "SidItemFeatDataset title2sid: every distinct title"),
    "tasks.sid2item": ({"enabled": True, "share": 1.0}, "SidItemFeatDataset sid2title: every distinct SID"),
    "tasks.sid_hist2title": ({"enabled": True, "share": 1.0}, "FusionSeqRecDataset: every train row"),
    "tasks.title_hist2sid": ({"enabled": False}, "not in ts_rec_sft.py's ConcatDataset"),
    "tasks.tsalign": ({"enabled": True, "share": 1.0, "weight": 1.0}, "SidTokenFeatDataset, plain CE"),
    "tasks.max_len": (512, "cutoff_len=512"),
    "tasks.title_words": (0, "full titles"),
    "tasks.item_pool": ("distinct", "their {SID: title} / {title: SID} dicts"),
    "tasks.prompts.header": (AUTHORS_HEADER + "{instruction}", "ts_rec_data.py: the Alpaca instruction header"),
    "tasks.prompts.wrap": ("### User Input: \n{prompt}\n\n### Response:\n", "ts_rec_data.py"),
    "tasks.prompts.eos_suffix": ("\n", "ts_rec_data.py: response + '\\n' + EOS"),
    "tasks.prompts.history_sep": (", ", "ts_rec_data.py: ', '.join(history)"),
    "tasks.prompts.seqrec.prompt": ("The user has interacted with items {history} in chronological order. Can you "
                                    "predict the next possible item that the user may expect?", "SidSFTDataset"),
    "tasks.prompts.paraphrase.prompt": ("Can you predict the next possible item the user may expect, given the "
                                        "following chronological interaction history: {history}",
                                        "rl_data.py EvalSidDataset: the test prompt"),
    "evaluate.prompt": ("paraphrase", "eval/evaluate.py reads the EvalSidDataset prompt"),
    "sainit.rescale_target": ("current_table", "initialize_sid_token_with_text: norm of the live table"),
}
# what this machine forces, each a row of docs/profiles.md's deviation table: (the row, the authors' value, ours)
FORCED = {
    "backbone.model": ("backbone", "Qwen2.5-1.5B", "smollm2-135m-instruct"),
    "backbone.finetune": ("backbone", "full", "lora"),  # the depth is theirs (all layers); LoRA: the CPU budget
    "train.precision": ("precision", "bf16_pure", "fp32"),
    "train.batch_size": ("batch", 16, 16),          # micro batch: theirs too
    "train.global_batch": ("batch", 1024, None),
    "train.max_steps": ("step cap", -1, 1000),
}
# train keys that set no numerics of the run (where it writes, what it logs and keeps, threads, which runs)
OPERATIONAL = {"datasets", "variants", "seeds", "extra", "out", "grad_accum", "logging_steps", "save_total_limit",
               "keep_checkpoints", "threads", "rank_beams", "rank_batch"}  # rank_*: unused at rank_rows 0


def _get(params: dict, dotted: str):
    for key in dotted.split("."):
        params = params[key]
    return params


def test_authors_profile_is_the_authors_code():
    """Each knob of the resolved `authors` profile is the authors' value written beside it above, except the
    ones this machine forces (FORCED), each a row of the deviation table in docs/profiles.md; a train key that
    is neither is unclassified (a new protocol knob must be pinned here and in profiles/authors.yaml)."""
    authors = profiles.resolve(PARAMS, "authors")
    off = {k: (_get(authors, k), v) for k, (v, _) in AUTHORS.items()
           if (_get(authors, k) if not isinstance(v, dict) else {f: _get(authors, k).get(f) for f in v}) != v}
    assert not off, f"authors profile off the authors' code (ours, theirs): {off}"
    assert {k: _get(authors, k) for k in FORCED} == {k: ours for k, (_, _, ours) in FORCED.items()}
    paper = profiles.resolve(PARAMS, "paper")   # paper lifts the forced knobs (its model id is the hub name)
    assert {k: _get(paper, k) for k in FORCED if k != "backbone.model"} == {
        k: theirs for k, (_, theirs, _) in FORCED.items() if k != "backbone.model"}
    known = {k.split(".", 1)[1] for k in [*AUTHORS, *FORCED] if k.startswith("train.")} | OPERATIONAL
    assert not set(authors["train"]) - known, f"train keys neither the authors' nor forced: {set(authors['train']) - known}"
    # the deviation table marks exactly these rows forced
    page = (REPO / "docs" / "profiles.md").read_text(encoding="utf-8")
    table = page[page.index("## Deviations"):]
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    assert {r.removesuffix(" (*forced*)") for r in rows if r.endswith(" (*forced*)")} == {
        row for row, _, _ in FORCED.values()}


def test_make_profile_writes_params_reversibly(tmp_path):
    """`make profile P=...`: strict params after each switch; authors -> cpu and paper -> cpu restore the file
    byte for byte (comments, layout); what DVC reads is the resolved profile."""
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    original = path.read_text()
    assert profiles.apply("cpu", path) == []
    for name in ("authors", "paper"):
        changed = profiles.apply(name, path)
        assert "tasks.prompts.header" in changed and "# Single source of truth" in path.read_text()
        written = load_params(path)
        assert {k: v for k, v in written.items() if k != "_path"} == profiles.resolve(PARAMS, name)
        profiles.apply("cpu", path)
        assert path.read_text() == original


def test_bad_profiles_refused(tmp_path):
    with pytest.raises(ParamError, match="no profile 'autors'"):
        profiles.overlay("autors")
    (tmp_path / "cpu.yaml").write_text("{}\n")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"tasks": {"prompts": {"seqrec": {"prompt": "{histroy}"}}}}))
    with pytest.raises(ParamError, match=r"prompts.seqrec.prompt: unknown field\(s\) \['histroy'\]") as exc:
        profiles.validate({**profiles.resolve(PARAMS, "bad", tmp_path), "_path": "bad.yaml"})
    assert exc.value.field == "tasks.prompts"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"train": {"global_batch": 1000}}))
    with pytest.raises(ParamError, match="global_batch"):
        profiles.validate({**profiles.resolve(PARAMS, "bad", tmp_path), "_path": "bad.yaml"})


def test_authors_registry_examples(corpus_env):
    """authors' task mix on the synthetic data: pools, Alpaca segments tokenized separately, "\\n" + EOS."""
    _, kw, tok, tokens = corpus_env
    tasks = profiles.resolve(PARAMS, "authors")["tasks"]
    corpus, rows, valid = _examples(corpus_env, tasks)
    count = Counter(r["task"] for r in rows)
    assert count == {"seqrec": len(corpus.rows), "sid_hist2title": len(corpus.rows), "tsalign": 2 * len(tokens),
                     "item2sid": len({corpus.titles[i] for i in corpus.sids}),
                     "sid2item": len(set(corpus.sids.values()))}
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    cfg = tasks_config({"tasks": tasks})
    for r in rows:
        labels = [x for x in r["labels"] if x != IGNORE]
        assert labels[-len(nl) - 1:] == nl + [tok.eos_token_id]
    hist, target = corpus.rows[0]
    segs, resp = cfg.prompts.render("seqrec", history=corpus.history(hist), sid=corpus.sids[target])
    first = next(r for r in rows if r["task"] == "seqrec" and r["input_ids"][-len(nl) - 4:-len(nl) - 1]
                 == tok(corpus.sids[target], add_special_tokens=False)["input_ids"])
    prompt = encode_prompt(tok, segs)
    assert prompt == tok(segs[0])["input_ids"] + tok(segs[1], add_special_tokens=False)["input_ids"]
    assert any(r["input_ids"][:len(prompt)] == prompt for r in rows if r["task"] == "seqrec")
    assert first["labels"].count(IGNORE) > 40  # the Alpaca header is prompt, not loss
    assert all(v["input_ids"][-len(nl) - 1:] == nl + [tok.eos_token_id] for v in valid)


def test_dry_run_counts_what_training_would(tmp_path, tiny_dataset, tiny_backbone, capsys):
    from tsrec.cli import main

    params = make_params(tmp_path, tiny_dataset, tiny_backbone, global_batch=32)
    report = dry_run(resolve_run(params, tiny_dataset.name, "tsrec"), world_size=2, tokens_per_s=440.0)
    t = report["tasks"]
    assert sum(x["examples"] for x in t.values()) == report["examples"]
    assert sum(x["tokens"] for x in t.values()) == report["tokens_per_epoch"]
    assert sum(x["label_token_share"] for x in t.values()) == pytest.approx(1.0, abs=1e-3)
    s = report["steps"]
    assert (s["grad_accum"], s["global_batch"], s["planned"]) == (2, 32, 4)   # 32 = 8 x 2 accumulation x 2 processes
    assert s["per_epoch"] == -(-report["examples"] // 32)
    assert report["estimate"]["train_hours"] == pytest.approx(report["tokens_planned"] / 440 / 3600, abs=0.01)
    assert main(["--params", params["_path"], "train", "--dataset", tiny_dataset.name, "--variant", "sft",
                 "--dry-run", "--report", str(tmp_path / "dry.json")]) == 0
    out = capsys.readouterr().out
    assert "| seqrec |" in out and "| tsalign |" not in out and "planned 4 steps" in out
    assert json.loads((tmp_path / "dry.json").read_text())["variant"] == "sft"
    assert not (tmp_path / "artifacts" / tiny_dataset.name / "runs").exists()  # nothing trained
    with pytest.raises(ParamError, match="not a multiple"):
        dry_run(resolve_run(params, tiny_dataset.name, "tsrec"), world_size=3)


def test_prompts_default_is_the_cpu_text():
    assert PromptsConfig().render("seqrec", history="<a_1><b_1><c_1>", sid="<a_2><b_2><c_2>") == (
        ["User history: <a_1><b_1><c_1>\nNext item:"], "<a_2><b_2><c_2>")


def test_authors_profile_trains_and_evaluates_end_to_end(tmp_path, tiny_dataset, tiny_backbone):
    """The authors' knobs (tasks, prompts, SA-Init target, the whole train section less the forced knobs: lr,
    schedule, warm-up, batching, evaluation interval and rows, stopping, selection; test paraphrase) through the
    production train -> evaluate path on the tiny data: the test prompt is the paraphrase in the run's Alpaca
    format and the decoder scores SID + "\\n" + EOS."""
    import pandas as pd
    from transformers import TrainerCallback

    from tsrec.cli import main
    from tsrec.core.config import deep_merge
    from tsrec.model.runs import resolve_run
    from tsrec.model.sft import train_run

    params = make_params(tmp_path, tiny_dataset, tiny_backbone)
    over = profiles.overlay("authors")
    params = deep_merge(params, {k: over[k] for k in ("tasks", "sainit", "evaluate")})
    forced = {k.split(".", 1)[1] for k in FORCED if k.startswith("train.")} | {"variants"}
    params["train"].update({k: v for k, v in over["train"].items() if k not in forced}, max_steps=40)
    params["variants"]["authors_tsrec"] = {}
    seen = {}

    class Args(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            seen.update(args=args, stopping=state.stateful_callbacks["EarlyStoppingCallback"]["args"])

        def on_evaluate(self, args, state, control, eval_dataloader=None, **kw):
            seen.setdefault("valid", set()).add(len(eval_dataloader.dataset))

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({k: v for k, v in params.items() if k != "_path"}))
    from tsrec.data.layout import results_dir, train_run_dir

    run = train_run_dir(tmp_path / "artifacts", "tiny", "authors_tsrec", params["seed"])
    meta = train_run(resolve_run(params, "tiny", "authors_tsrec", out=run), callbacks=[Args()])
    assert meta["sainit"]["rescale_target"] == "current_table"
    # the authors' TrainingArguments / EarlyStoppingCallback (train/ts_rec_sft.py), through the production trainer
    a = seen["args"]
    assert (a.learning_rate, a.lr_scheduler_type, a.warmup_steps, a.weight_decay, a.eval_steps, a.save_steps) == (
        3e-4, "linear", 20, 0.0, 0.05, 0.05)
    assert (a.load_best_model_at_end, a.metric_for_best_model, a.greater_is_better) == (True, "eval_loss", False)
    assert seen["stopping"] == {"early_stopping_patience": 3, "early_stopping_threshold": 0.0}
    assert seen["valid"] == {40}  # every valid row of the tiny data, at each evaluation
    # valid loss every 5 % of the 40 planned steps; the final model is the best valid loss's checkpoint
    valid = pd.read_csv(run / "plots" / "valid.csv")
    assert list(valid["step"]) == list(range(2, int(valid["step"].max()) + 1, 2))
    best = valid.loc[valid["eval_loss"].idxmin()]
    assert meta["train"]["best_eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-6)
    assert meta["train"]["best_checkpoint"] == f"checkpoint-{int(best['step'])}"
    assert main(["--params", params["_path"], "evaluate", "--dataset", "tiny", "--variant", "authors_tsrec",
                 "--run-dir", str(run), "--results", str(tmp_path / "results"),
                 "--artifacts", str(tmp_path / "artifacts")]) == 0
    res = results_dir(tmp_path / "results", "tiny", "authors_tsrec", params["seed"])
    r = json.loads((res / "run.json").read_text())
    m = json.loads((res / "metrics.json").read_text())
    assert r["prompt"]["kind"] == "paraphrase" and r["prompt"]["eos_suffix"] == "\n"
    header, body = r["prompt"]["first_row"]
    assert header.startswith(AUTHORS_HEADER) and body.startswith("### User Input: \nCan you predict the next")
    assert m["n_rows"] == 40 and m["invalid_outputs"] == 0 and m["prompt_tokens_mean"] > 60


@pytest.mark.parametrize("name", profiles.OVERLAYS)
def test_repro_runs_are_runs_of_the_train_matrix(name):
    """`make repro` names its stages from repro.runs: each must be one <DS>-<variant>-<seed> of the matrix."""
    resolved = profiles.resolve(PARAMS, name)
    t = resolved["train"]
    matrix = {f"{d}-{v}-{s}" for d in t["datasets"] for v in t["variants"] for s in t["seeds"]}
    assert resolved["repro"]["runs"] and set(resolved["repro"]["runs"]) <= matrix
