"""BIGRec, D3 and S-DPO (tsrec/baselines/llm_*.py, sdpo.py; command tsrec/commands/llm_baseline.py): the title
trie, grounding, the S-DPO loss, D3's assistant, and a tiny end-to-end run of each through the CLI, the evaluate
stage's files, paired and the report."""

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_train import make_params  # noqa: E402

from tsrec.baselines.llm_config import LLMBaselinesConfig  # noqa: E402
from tsrec.baselines.llm_decoding import (AssistantProcessor, clean_title, constrained_titles, ground,  # noqa: E402
                                          last_hidden, title_trie)
from tsrec.baselines.llm_titles import TitleText  # noqa: E402
from tsrec.baselines.names import SFT_RUN  # noqa: E402
from tsrec.baselines.sdpo import sdpo_loss, sequence_logps  # noqa: E402
from tsrec.commands.llm_baseline import title_sft  # noqa: E402
from tsrec.lm.decoding import SidTrie  # noqa: E402
from tsrec.model.tasks import PromptsConfig, encode_prompt  # noqa: E402


def _tiny_model(tiny_backbone):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_backbone).eval(), AutoTokenizer.from_pretrained(tiny_backbone)


def _titles(tiny_dataset):
    items = pd.read_parquet(tiny_dataset / "items.parquet")
    return TitleText(dict(zip(items["item_id"].astype(int), items["title"].astype(str))), LLMBaselinesConfig(),
                        PromptsConfig())


# ---------------------------------------------------------------- the title trie
def test_a_title_trie_takes_variable_lengths_and_titles_that_prefix_others():
    trie = SidTrie([(5, 6), (5, 6, 7), (8,)], eos_id=1, items=[[10], [11], [12]], variable=True)
    assert sorted(trie.allowed(())) == [5, 8]
    assert trie.allowed((5,)) == [6]
    assert sorted(trie.allowed((5, 6))) == [1, 7]  # "5 6" is a title AND the prefix of "5 6 7"
    assert trie.allowed((8,)) == [1] and trie.allowed((8, 1)) == [] and trie.allowed((9,)) == []
    assert [trie.items[trie.parse(g)] for g in [(5, 6, 1), (5, 6, 7, 1, 1), (8, 1)]] == [[10], [11], [12]]
    assert trie.parse((5, 6, 7)) is None and trie.parse((5, 1)) is None
    with pytest.raises(Exception, match="same length"):
        SidTrie([(5, 6), (8,)], eos_id=1)  # SID tries stay fixed-length


def test_title_constrained_decoding_returns_only_real_titles(tiny_backbone, tiny_dataset):
    model, tok = _tiny_model(tiny_backbone)
    tt = _titles(tiny_dataset)
    trie = title_trie(tt, tok)
    real = {tt.response(i) for i in tt.titles}
    prompts = [encode_prompt(tok, tt.render(h)[0]) for h in ([1, 2, 3], [4], [7, 8])]
    leaves, scores = constrained_titles(model, tok, trie, prompts, beams=8, batch_size=2)
    assert [len(r) for r in leaves] == [8, 8, 8]
    for row, sc in zip(leaves, scores):
        assert len(set(row)) == len(row) and sc == sorted(sc, reverse=True)
        for leaf in row:
            text = tok.decode(list(trie.sids[leaf]))
            assert text in real and all(tt.response(i) == text for i in trie.items[leaf])


# ---------------------------------------------------------------- BIGRec grounding
def test_grounding_ranks_items_by_l2_distance():
    items = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
    pred = torch.tensor([[0.9, 0.1], [3.0, 3.0]])
    assert ground(pred, items, 4).tolist() == [[2, 0, 3, 1], [1, 2, 0, 3]]
    assert ground(pred, items, 2).tolist() == [[2, 0], [1, 2]]


def test_grounding_puts_the_item_whose_title_was_generated_first(tiny_backbone, tiny_dataset):
    model, tok = _tiny_model(tiny_backbone)
    tt = _titles(tiny_dataset)
    ids = sorted(tt.titles)
    emb = last_hidden(model, tok, [clean_title(tt.title(i)) for i in ids], batch_size=7)
    generated = [f' "{tt.title(ids[5])}"\n', tt.title(ids[17])]
    top = ground(last_hidden(model, tok, [clean_title(t) for t in generated]), emb, 3)
    assert top[:, 0].tolist() == [5, 17]


# ---------------------------------------------------------------- S-DPO
def test_sdpo_loss_equals_a_hand_computation_on_two_negatives():
    beta = 0.5
    pc, pr = torch.tensor([-2.0, -1.0]), torch.tensor([[-3.0, -4.0], [-0.5, -2.5]])
    rc, rr = torch.tensor([-2.5, -1.5]), torch.tensor([[-3.0, -3.0], [-1.0, -2.0]])
    got = sdpo_loss(pc, pr, rc, rr, beta)
    want = []
    for i in range(2):
        chosen = pc[i].item() - rc[i].item()
        s = sum(math.exp(beta * ((pr[i, j].item() - rr[i, j].item()) - chosen)) for j in range(2))
        want.append(-math.log(1 / (1 + math.exp(math.log(s)))))  # -log sigmoid(-log s)
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    # one negative: plain DPO, -log sigmoid(beta * (chosen margin - rejected margin))
    dpo = sdpo_loss(pc, pr[:, :1], rc, rr[:, :1], beta)
    assert dpo.tolist() == pytest.approx((-torch.nn.functional.logsigmoid(
        beta * ((pc - rc) - (pr[:, 0] - rr[:, 0])))).tolist())


def test_sequence_logps_sum_the_response_tokens_only(tiny_backbone):
    model, tok = _tiny_model(tiny_backbone)
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, 9], [-100, 6, 7, -100, -100]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = sequence_logps(model, ids, mask, labels)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    want = [logp[0, 1, 7] + logp[0, 2, 8] + logp[0, 3, 9], logp[1, 0, 6] + logp[1, 1, 7]]
    assert got.tolist() == pytest.approx([w.item() for w in want], abs=1e-4)


# ---------------------------------------------------------------- D3's text-free assistant
def test_d3_assistant_mixes_normalised_subtree_mass_into_the_scores():
    trie = SidTrie([(5, 6), (5, 7), (8,)], eos_id=1, items=[[10], [11], [12]], variable=True)
    leaf_probs = torch.tensor([[0.1, 0.3, 0.6]])  # leaves sorted: (5, 6), (5, 7), (8,)
    gs, L, V = 0.7, 2, 10
    proc = AssistantProcessor(trie, leaf_probs, num_beams=3, prompt_len=L, guidance_scale=gs)
    scores = torch.full((3, V), float("-inf"))
    scores[0, [5, 8]] = torch.tensor([-0.2, -1.8])   # root: allowed 5, 8
    scores[1, [6, 7]] = torch.tensor([-0.1, -2.5])   # after 5: allowed 6, 7
    scores[2, 1] = -0.01                             # after 8: only EOS (a ghost step)
    out0 = proc(torch.tensor([[3, 4]]), scores[:1])      # nothing generated yet
    input_ids = torch.tensor([[3, 4, 5], [3, 4, 8]])       # after 5, after 8
    out = proc(input_ids, scores[1:])
    a5, a8 = 0.4 / 1.0, 0.6 / 1.0
    assert out0[0, 5].item() == pytest.approx(gs * -0.2 + (1 - gs) * math.log(a5), rel=1e-5)
    assert out0[0, 8].item() == pytest.approx(gs * -1.8 + (1 - gs) * math.log(a8), rel=1e-5)
    assert out[0, 6].item() == pytest.approx(gs * -0.1 + (1 - gs) * math.log(0.1 / 0.4), rel=1e-5)
    assert out[0, 7].item() == pytest.approx(gs * -2.5 + (1 - gs) * math.log(0.3 / 0.4), rel=1e-5)
    assert out[1, 1].item() == pytest.approx(gs * -0.01)  # ghost token: no assistant term
    assert torch.isinf(out0[0, 6]) and torch.isinf(out[0, 5])  # disallowed tokens stay masked
    # the order flips where the assistant disagrees: LLM prefers 5 -> 6, the assistant 7 and 8
    assert out[0, 6] - out[0, 7] < scores[1, 6] - scores[1, 7]
    same = AssistantProcessor(trie, leaf_probs, num_beams=3, prompt_len=L, guidance_scale=1.0)
    assert torch.equal(same(input_ids, scores[1:]), scores[1:])


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_backbone):
    import yaml

    from tsrec.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("llm")
    params = make_params(root, make_dataset(root / "data" / "tiny"), tiny_backbone, max_steps=2)
    params["llm_baselines"] = {"max_len": 96, "batch_size": 8, "title_history": 3,
                               "grounding": {"gen_beams": 2, "max_new_tokens": 12},
                               "sdpo": {"neg_num": 2, "max_steps": 2, "batch_size": 2, "grad_accum": 1,
                                        "train_prompts": 8, "logging_steps": 1}}
    params["baselines"] = {"out": str(root / "results"), "seeds": [0],
                           "train": {"max_epochs": 2, "min_epochs": 1, "patience": 1}}
    params["evaluate"] = {"subsample": 12}
    params.pop("_path")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _main(root, *args):
    from tsrec.cli import main

    return main(["--params", str(root / "params.yaml"), "llm-baseline", "--dataset", "tiny",
                 "--results", str(root / "results"), "--artifacts", str(root / "artifacts"), *args])


def test_a_baseline_without_its_title_sft_is_refused(tiny_run, capsys):
    assert _main(tiny_run, "--model", "d3", "--seed", "7") == 2
    assert "--sft-only" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["bigrec", "d3", "sdpo"])
def test_tiny_end_to_end_writes_the_evaluate_stage_files(tiny_run, model, capsys):
    from tsrec.data import layout
    from tsrec.eval.metrics import read_item_metrics, read_metrics
    from tsrec.model.scoring import check_ranks

    if not (layout.train_run_dir(tiny_run / "artifacts", "tiny", SFT_RUN, 0) / "final").is_dir():
        assert _main(tiny_run, "--sft-only") == 0
    assert _main(tiny_run, "--model", model) == 0
    assert f"tiny/{model} seed 0: NDCG@10=" in capsys.readouterr().out
    res = layout.results_dir(tiny_run / "results", "tiny", model, 0)
    sid, item = read_metrics(res / "metrics.json"), read_item_metrics(res / "metrics.json")
    assert set(sid) == set(item) and "NDCG@20" in sid and all(0 <= v <= 1 for v in [*sid.values(), *item.values()])
    assert sid["HR@20"] >= item["HR@20"]  # a SID hit covers every item sharing the SID
    check_ranks(res / "ranks.parquet", res / "metrics.json")
    full = pd.read_parquet(layout.eval_dir(tiny_run / "artifacts", "tiny", model, 0) / "ranks.parquet")
    assert len(full) == 12 and (full["ranked_items"].map(len) == 20).all()
    record = json.loads((res / "run.json").read_text())
    assert record["variant"] == model and record["model"]["meta"]["variant"] == (
        "sdpo" if model == "sdpo" else SFT_RUN)
    if model == "d3":
        assert record["assistant"]["model"] == "sasrec"
    if model == "bigrec":
        assert "generated" in full and record["exact_title_match"] <= 12


def test_planning_more_runs_keeps_the_title_sft_but_a_budget_change_refuses_it(tiny_run):
    from tsrec.core.config import load_params
    from tsrec.core.errors import TsrecError

    params = load_params(tiny_run / "params.yaml")
    if not (tiny_run / "artifacts" / "tiny" / "runs" / SFT_RUN / "seed0" / "final").is_dir():
        pytest.skip("the end-to-end runs did not run")
    more = {**params, "train": {**params["train"], "seeds": [0, 1, 2], "variants": ["tsrec", "sft", "x"]}}
    assert title_sft(more, "tiny", 0, train=False)["variant"] == SFT_RUN
    other = {**params, "train": {**params["train"], "lr": 5e-4}}
    with pytest.raises(TsrecError, match="--sft-only"):
        title_sft(other, "tiny", 0, train=False)


def test_the_report_and_paired_read_the_llm_baselines(tiny_run, capsys):
    from tsrec.data import layout
    from tsrec.baselines.table import our_rows
    from tsrec.reporting.tables import method_rows

    for model in ("bigrec", "d3", "sdpo"):
        if not layout.variant_seeds(tiny_run / "results", "tiny", model):
            pytest.skip("the end-to-end runs did not run")
    rows = {r.label: r for r in method_rows(tiny_run / "results", "tiny", [])}
    assert all(rows[n].status == "ok" and rows[n].runs.seeds == [0] for n in ("BIGRec", "D3", "S-DPO"))
    assert not any("bigrec" in label or "`d3`" in label for label in rows)  # not listed again as variants
    table = our_rows(tiny_run / "results", "tiny").set_index("model")
    assert table.loc["D3", "status"] == "ok" and table.loc["D3", "item/NDCG@10"] >= 0
    from tsrec.cli import main

    assert main(["--params", str(tiny_run / "params.yaml"), "paired", "--dataset", "tiny", "--variant", "d3",
                 "--other", "bigrec", "--results", str(tiny_run / "results")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["a"] == "d3"
