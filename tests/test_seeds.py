"""Seeds in the pipeline: the DVC matrix over dataset x variant x seed, per-seed folders, the migration of
runs made before them, and the paired statistics the report uses."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tsrec.data import layout
from tsrec.cli import main
from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import sha256_file
from tsrec.eval.records import load_variant
from tsrec.reporting.migrate import migrate
from tsrec.model.runs import MATRIX_KEYS, TrainConfig
from tsrec.eval.stats import paired, paired_pooled, seed_pairs, seed_test

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the DVC matrix
def _stage_params(stage: str) -> list[str]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["params"]


def profile_params(path: Path) -> dict:
    """The params file DVC would read with this profile: a complete file (params.yaml, profiles/smoke.yaml)
    as it is; an overlay (profiles/{cpu,authors,paper}.yaml, tsrec.commands.profiles) merged onto params.yaml as
    `make profile P=<name>` writes it."""
    from tsrec.commands import profiles

    if path.parent.name == "profiles" and path.stem in profiles.OVERLAYS:
        return profiles.resolve(yaml.safe_load((REPO / "params.yaml").read_text()), path.stem)
    return yaml.safe_load(path.read_text())


PROFILES = [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]


def test_every_profile_file_is_a_full_file_or_a_known_overlay():
    from tsrec.commands import profiles

    for path in PROFILES[1:]:
        assert path.stem in (*profiles.OVERLAYS, "smoke"), f"{path.name}: unknown profile kind (full file or overlay?)"


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_train_stage_tracks_every_train_setting_but_the_matrix_lists(profile):
    """Adding a seed, variant or dataset must rerun no run already made: the train stage lists the train
    keys one by one, leaving out the matrix lists. DVC fails on a listed key a params file lacks, so every
    full params file (params.yaml, profiles/smoke.yaml) and every overlay merged onto params.yaml carries the
    same train keys. A new train key goes into params.yaml, profiles/smoke.yaml and dvc.yaml."""
    listed = {p.split(".", 1)[1] for p in _stage_params("train") if p.startswith("train.")}
    keys = set(profile_params(profile)["train"])
    assert "train" not in _stage_params("train") and not listed & set(MATRIX_KEYS)
    assert listed == keys - set(MATRIX_KEYS), (f"{profile.name}: train keys {sorted(keys - set(MATRIX_KEYS))} vs "
                                               f"dvc.yaml train params {sorted(listed)}")
    assert "variants.${item.variant}" in _stage_params("train")  # a variant's edit reruns that variant only


def test_matrix_runs_one_stage_per_seed_into_seed_folders(tmp_path):
    shutil.copy(REPO / "dvc.yaml", tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["train"]["seeds"] == [42, 43, 44]  # the ablation matrix; make repro runs repro.runs only
    params["train"].update(seeds=[42, 43], variants=["tsrec", "no_sainit"], datasets=["Industrial_and_Scientific"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=tmp_path, check=True)
    from dvc.repo import Repo

    with Repo(str(tmp_path)) as repo:
        stages = {s.name: s for s in repo.index.stages}
    ds = "Industrial_and_Scientific"
    names = {n for n in stages if n.startswith(("train@", "evaluate@"))}
    assert names == {f"{st}@{ds}-{v}-{s}" for st in ("train", "evaluate") for v in ("tsrec", "no_sainit")
                     for s in (42, 43)}
    train, ev = stages[f"train@{ds}-no_sainit-43"], stages[f"evaluate@{ds}-no_sainit-43"]
    assert train.cmd == f"tsrec train --dataset {ds} --variant no_sainit --seed 43"
    assert ev.cmd == f"tsrec evaluate --dataset {ds} --variant no_sainit --seed 43"
    assert {o.def_path for o in train.outs} == {
        f"artifacts/{ds}/runs/no_sainit/seed43/final",
        *(f"results/{ds}/no_sainit/seed43/{f}" for f in ("train_summary.json", "train.csv", "valid.csv",
                                                                  "valid_rank.csv", "valid_rank_rows.csv"))}
    assert {o.def_path for o in ev.outs} == {
        f"artifacts/{ds}/eval/no_sainit/seed43",
        *(f"results/{ds}/no_sainit/seed43/{f}" for f in ("run.json", "ranks.parquet", "metrics.json"))}
    assert f"artifacts/{ds}/runs/no_sainit/seed43/final" in {d.def_path for d in ev.deps}
    # the paths the stages declare are the ones the code writes
    assert str(layout.train_run_dir("artifacts", ds, "no_sainit", 43)) + "/final" in {o.def_path for o in train.outs}
    assert str(layout.eval_dir("artifacts", ds, "no_sainit", 43)) in {o.def_path for o in ev.outs}
    assert str(layout.results_dir("results", ds, "no_sainit", 43) / "metrics.json") in {o.def_path for o in ev.outs}


def assert_anchor_copies(suffix: str, product: str) -> None:
    """stages train_<suffix> / evaluate_<suffix> are train / evaluate (same command, deps, params, outs) over the
    params lists under <product>."""
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in ("train", "evaluate"):
        main_stage, copy = dvc_yaml[stage], dvc_yaml[f"{stage}_{suffix}"]
        assert {k: v for k, v in copy.items() if k != "matrix"} == {k: v for k, v in main_stage.items() if k != "matrix"}
        assert copy["matrix"] == {"dataset": f"${{{product}.datasets}}", "variant": f"${{{product}.variants}}",
                                  "seed": f"${{{product}.seeds}}"}


def test_extra_runs_are_the_same_stages_over_another_product(tmp_path):
    """train.extra (the SA-Init depth and teacher ablations): stages train_extra / evaluate_extra run the same
    command with the same deps, params and outs as train / evaluate, for their own product only."""
    assert_anchor_copies("extra", "train.extra")
    shutil.copy(REPO / "dvc.yaml", tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    ds = "Industrial_and_Scientific"
    assert params["train"]["extra"] == {"datasets": [ds], "variants": ["sainit_a", "sainit_ab", "teacher_ctfidf"],
                                        "seeds": [42]}
    params["train"].update(seeds=[42], variants=["tsrec"], datasets=[ds])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=tmp_path, check=True)
    from dvc.repo import Repo

    with Repo(str(tmp_path)) as repo:
        stages = {s.name: s for s in repo.index.stages}
    extra = {n for n in stages if n.startswith(("train_extra@", "evaluate_extra@"))}
    assert extra == {f"{st}@{ds}-{v}-42" for st in ("train_extra", "evaluate_extra")
                     for v in ("sainit_a", "sainit_ab", "teacher_ctfidf")}
    assert stages[f"train_extra@{ds}-sainit_a-42"].cmd == f"tsrec train --dataset {ds} --variant sainit_a --seed 42"
    assert f"artifacts/{ds}/runs/sainit_a/seed42/final" in {
        d.def_path for d in stages[f"evaluate_extra@{ds}-sainit_a-42"].deps}


def test_confirm_runs_are_the_same_stages_over_the_sweep_winner(tmp_path):
    """sweep.confirm (the sweep's winner over seeds): no stage while its variant list is empty; once a variant is
    listed, train_confirm / evaluate_confirm are the train / evaluate stages over that product."""
    assert_anchor_copies("confirm", "sweep.confirm")
    shutil.copy(REPO / "dvc.yaml", tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    ds = "Industrial_and_Scientific"
    confirm = params["sweep"]["confirm"]
    assert confirm["datasets"] == [ds] and confirm["seeds"] == params["train"]["seeds"]
    assert set(confirm["variants"]) <= set(params["variants"]), "sweep.confirm lists a variant params does not define"
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=tmp_path, check=True)
    from dvc.repo import Repo

    def confirm_stages(p: dict) -> dict:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
        with Repo(str(tmp_path)) as repo:
            return {s.name: s for s in repo.index.stages if "_confirm@" in s.name}

    params["sweep"]["confirm"]["variants"] = []
    assert confirm_stages(params) == {}
    params["variants"]["sweep_best"] = {"sainit": {"pooling": "idf"}}
    params["sweep"]["confirm"]["variants"] = ["sweep_best"]
    stages = confirm_stages(params)
    assert set(stages) == {f"{st}@{ds}-sweep_best-{s}" for st in ("train_confirm", "evaluate_confirm")
                           for s in (42, 43, 44)}
    assert stages[f"train_confirm@{ds}-sweep_best-43"].cmd == f"tsrec train --dataset {ds} --variant sweep_best --seed 43"
    assert f"artifacts/{ds}/runs/sweep_best/seed43/final" in {
        d.def_path for d in stages[f"evaluate_confirm@{ds}-sweep_best-43"].deps}


def test_extra_variants_resolve_to_their_ablation(tmp_path):
    from tsrec.model import sainit
    from tsrec.semantics.keyword_cache import cache_path, keywords_config
    from tsrec.model.runs import variant_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    ds = "Industrial_and_Scientific"
    assert sainit.config(variant_params(params, "sainit_a")).levels == ["a"]
    assert sainit.config(variant_params(params, "sainit_ab")).levels == ["a", "b"]
    assert sainit.config(variant_params(params, "tsrec")).levels == ["a", "b", "c"]
    assert cache_path(keywords_config(variant_params(params, "teacher_ctfidf")), ds).name == "ctfidf.json"
    assert cache_path(keywords_config(variant_params(params, "tsrec")), ds).name == "authors.json"
    params["variants"]["bad"] = {"evaluate": {"beams": 3}}  # a variant overrides a run's settings only
    with pytest.raises(ParamError, match="overrides only"):
        variant_params(params, "bad")
    both = {"datasets": [ds], "variants": ["tsrec"], "seeds": [42]}
    with pytest.raises(ParamError, match="in variants too"):
        from tsrec.core.config import section

        section({"train": {**params["train"], "extra": both}}, "train", TrainConfig)


@pytest.mark.parametrize("seeds", [[], [1, 1]])
def test_bad_seed_lists_refused(seeds):
    from tsrec.core.config import section

    with pytest.raises(ParamError, match="seeds must be a non-empty list of distinct integers"):
        section({"train": {"seeds": seeds}}, "train", TrainConfig)
    with pytest.raises(ParamError, match=r"train\.seeds\[0\]"):
        section({"train": {"seeds": ["a"]}}, "train", TrainConfig)


# ---------------------------------------------------------------- layout
def test_layout_finds_seed_folders_and_variants(tmp_path):
    for v, s in (("tsrec", 42), ("tsrec", 43), ("tsrec+rl", 7)):
        d = layout.results_dir(tmp_path, "DS", v, s)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text("{}")
    (tmp_path / "DS" / "tsrec" / "seed44").mkdir()  # trained, not evaluated: no metrics
    (tmp_path / "DS" / "baselines" / "x" / "seed1").mkdir(parents=True)
    (tmp_path / "DS" / "baselines" / "x" / "seed1" / "metrics.json").write_text("{}")
    (tmp_path / "DS" / "sft").mkdir()
    (tmp_path / "DS" / "sft" / "metrics.json").write_text("{}")
    assert list(layout.variant_seeds(tmp_path, "DS", "tsrec")) == [42, 43]
    assert layout.found_variants(tmp_path, "DS") == ["tsrec", "tsrec+rl"]
    assert layout.old_layout(tmp_path, "DS", "sft") and not layout.old_layout(tmp_path, "DS", "tsrec")
    assert layout.seed_of("a/seed-3") == -3 and layout.seed_of("a/seedx") is None
    assert layout.train_run_dir("artifacts", "DS", "v", 5) == Path("artifacts/DS/runs/v/seed5")


# ---------------------------------------------------------------- migration of runs made before seed folders
def old_run(root: Path, ds="DS", v="tsrec", seed=42, rows=5):
    """The files of one run as the code before seed folders wrote them."""
    res, art = root / "results" / ds / v, root / "artifacts"
    full = pd.DataFrame({"row": range(rows), "user_id": [f"u{i}" for i in range(rows)], "target": range(rows),
                         "target_sid": "x", "rank": [0, -1, 3, 1, -1][:rows],
                         "ranked_sids": [["a", "b"]] * rows, "scores": [[-1.0, -2.0]] * rows})
    (art / ds / "eval" / v).mkdir(parents=True)
    full.to_parquet(art / ds / "eval" / v / "ranks.parquet", index=False)
    (art / ds / "runs" / v / "final").mkdir(parents=True)
    (art / ds / "runs" / v / "final" / "model.safetensors").write_text("weights")
    res.mkdir(parents=True)
    (res / "metrics.json").write_text(json.dumps({"HR@10": 0.4, "NDCG@10": 0.3, "n_rows": rows}))
    (res / "run.json").write_text(json.dumps({
        "dataset": ds, "variant": v, "model": {"source": {"kind": "trained_run", "path": f"artifacts/{ds}/runs/{v}"},
                                              "meta": {"seed": seed}},
        "ranks": {"path": f"artifacts/{ds}/eval/{v}/ranks.parquet",
                  "sha256": sha256_file(art / ds / "eval" / v / "ranks.parquet")}}))
    (res / "train_summary.json").write_text(json.dumps({"seed": seed, "variant": v}))
    for f in ("train.csv", "valid.csv"):
        (res / f).write_text("step,eval_loss\n10,2.0\n")
    return full


def test_migrate_moves_files_adds_seed_and_slim_ranks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = old_run(tmp_path)
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "train@DS-tsrec": {"cmd": "tsrec train"}, "evaluate@DS-tsrec": {"cmd": "tsrec evaluate"},
        "data@DS": {"cmd": "tsrec data"}}}))
    assert migrate("results", "artifacts", ["DS"], 42, dry_run=True) == [("DS", "tsrec")]
    assert (tmp_path / "results/DS/tsrec/metrics.json").is_file()  # a dry run moves nothing
    assert migrate("results", "artifacts", ["DS"], 42, dvc_lock=lock) == [("DS", "tsrec")]
    new = tmp_path / "results/DS/tsrec/seed42"
    assert sorted(p.name for p in (tmp_path / "results/DS/tsrec").iterdir()) == ["seed42"]
    assert sorted(p.name for p in new.iterdir()) == ["metrics.json", "ranks.parquet", "run.json", "train.csv",
                                                     "train_summary.json", "valid.csv"]
    assert (tmp_path / "artifacts/DS/runs/tsrec/seed42/final/model.safetensors").read_text() == "weights"
    assert (tmp_path / "artifacts/DS/eval/tsrec/seed42/ranks.parquet").is_file()
    metrics = json.loads((new / "metrics.json").read_text())
    assert metrics == {"seed": 42, "HR@10": 0.4, "NDCG@10": 0.3, "n_rows": 5}  # the numbers unchanged
    rec = json.loads((new / "run.json").read_text())
    assert rec["model"]["source"]["path"] == "artifacts/DS/runs/tsrec/seed42"
    assert rec["ranks"]["path"] == "artifacts/DS/eval/tsrec/seed42/ranks.parquet"
    assert rec["row_ranks"] == {"path": "results/DS/tsrec/seed42/ranks.parquet",
                                "sha256": sha256_file(new / "ranks.parquet")}
    assert pd.read_parquet(new / "ranks.parquet").equals(full[["row", "target", "rank"]])
    assert rec["migrated"]["by"] == "tsrec migrate-seed-layout" and rec["seed"] == 42
    assert list(yaml.safe_load(lock.read_text())["stages"]) == ["data@DS"]
    assert migrate("results", "artifacts", ["DS"], 42) == []  # done: nothing left to move
    # the migrated run is what the report and the paired comparison read
    runs = load_variant("results", "DS", "tsrec")
    assert runs.seeds == [42] and runs.metrics[42]["NDCG@10"] == 0.3 and 42 in runs.ranks


def test_migrate_refuses_another_seed_and_moves_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old_run(tmp_path, seed=7)
    with pytest.raises(TsrecError, match="recorded seed 7, not 42"):
        migrate("results", "artifacts", ["DS"], 42)
    assert (tmp_path / "results/DS/tsrec/metrics.json").is_file() and not (tmp_path / "results/DS/tsrec/seed42").exists()
    assert migrate("results", "artifacts", ["DS"], 7) == [("DS", "tsrec")]


def test_migrate_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    old_run(tmp_path, v="sft")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 42, "data": {"datasets": ["DS"]}}))
    assert main(["migrate-seed-layout"]) == 0
    out = capsys.readouterr().out
    assert "migrated: DS/sft" in out and "dvc commit -f train@DS-sft-42 evaluate@DS-sft-42" in out
    assert (tmp_path / "results/DS/sft/seed42/metrics.json").is_file()
    assert main(["migrate-seed-layout"]) == 0 and "nothing to migrate" in capsys.readouterr().out


# ---------------------------------------------------------------- paired statistics
def _r(ranks):
    return pd.DataFrame({"row": range(len(ranks)), "rank": ranks})


def test_pooled_paired_test_with_one_pair_is_the_single_run_test():
    a, b = _r([0, 3, -1, 12, 1] * 20), _r([1, -1, -1, 2, 1] * 20)
    one = paired_pooled([(a, b)], n_boot=300)
    assert one.pop("pairs") == 1 and one == paired(a, b, n_boot=300)
    # McNemar by hand, per block of 5 rows: only a hits @10 on row 1 (3 vs none), only b on row 3 (2 vs a's 12)
    assert (one["HR@10_only_a"], one["HR@10_only_b"], one["HR@10_sign_test_p"]) == (20, 20, 1.0)


def test_pooled_paired_test_keeps_a_rows_seeds_together():
    # two seeds; row 0 tsrec hits in both, sft in one; row 1 the reverse in one seed only
    pairs = [(_r([0, -1]), _r([-1, -1])), (_r([0, -1]), _r([0, 4]))]
    out = paired_pooled(pairs, n_boot=100)
    assert out["pairs"] == 2 and out["rows"] == 2
    assert (out["HR@10_only_a"], out["HR@10_only_b"]) == (1, 1)  # per row: 2 vs 1 hits, 0 vs 1
    assert out["NDCG@10_diff"] == pytest.approx(((1 + 0) / 2 + (0 - 1 / math.log2(6)) / 2) / 2)
    with pytest.raises(TsrecError, match="different rows"):
        paired_pooled([(_r([0, 1]), _r([0, 1])), (_r([0, 1, 2]), _r([0, 1, 2]))])


def test_seed_pairs_and_seed_test():
    assert seed_pairs([42, 43, 44], [43, 44, 45]) == [(43, 43), (44, 44)]
    assert seed_pairs([42, 43], [7]) == [(42, 7), (43, 7)]
    assert seed_pairs([42, 43], [42], deterministic_b=True) == [(42, 42), (43, 42)]
    assert seed_pairs([42, 43], [1, 2]) == []
    t = seed_test({1: 0.10, 2: 0.12, 3: 0.14}, {1: 0.09, 2: 0.10, 3: 0.12})
    assert t["test"] == "paired t" and t["n"] == 3 and t["p"] == pytest.approx(1 - 5 / math.sqrt(27))
    assert seed_test({1: 0.1}, {1: 0.2}) == {"test": "n/a", "n": 1, "p": None}
    one = seed_test({1: 0.10, 2: 0.12, 3: 0.14}, {42: 0.03}, deterministic_b=True)
    tval = 0.09 / (0.02 / math.sqrt(3))
    assert one["test"] == "one-sample t" and one["p"] == pytest.approx(1 - tval / math.sqrt(2 + tval ** 2))
