"""benchmarks/roofline.py end to end on the tiny backbone: one JSON with the GEMM rates, the train and evaluate
cases, the analytic FLOPs and the ratios (numbers are meaningless at this size; the wiring is what is tested)."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _roofline():
    spec = importlib.util.spec_from_file_location("roofline", REPO / "benchmarks" / "roofline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_roofline_json(tmp_path, tiny_backbone):
    out = tmp_path / "roofline.json"
    assert _roofline().main(["--backbone", str(tiny_backbone), "--out", str(out), "--reps", "1",
                             "--eval-prompts", "4", "--lora30", "--keep-layers", "2"]) == 0
    r = json.loads(out.read_text())
    assert r["machine"]["torch_cpu_capability"] and "simd_flags" in r["machine"]
    assert r["env"]["OMP_WAIT_POLICY"] == "PASSIVE"  # as the CLI runs the stages
    assert {k.rsplit("_t", 1)[1] for k in r["gemm"]} == {"1", "2"}
    train = r["train_4L_full"]
    assert set(train["cases"]) == {"default", "before-logits", "default-1thread"}
    short = train["groups"]["short"]
    # analytic FLOPs: 6 x layer params per token + the head at label positions + attention
    head = 6 * r["model"]["vocab"] * r["model"]["hidden"] * short["label_tokens"]
    assert short["flops_head"] == head
    assert short["flops_useful"] > 6 * r["model"]["layer_params"] * short["tokens"] + head
    ev = r["evaluate_4L"]["cases"]
    assert ev["default_b8"]["identical_rankings"] and ev["default_b8"]["rows_with_other_ranking"] == 0
    assert r["evaluate_4L"]["analytic"]["flops_per_row"] > 0
    assert "default" in r["train_30L_lora"]["cases"]
    ev30 = r["evaluate_30L"]
    assert set(ev30["cases"]) == {"default_b8", "b8-1thread"} and ev30["analytic"]["flops_per_row"] > 0
    assert r["roofline"]["evaluate_30L_default_b8_rows_per_s"] > 0
    for key in ("train_4L_full_default_over_gemm", "evaluate_default_b8_over_gemm",
                "train_4L_full_default_over_before-logits"):
        assert r["roofline"][key] > 0


def test_layout_json(tmp_path, tiny_backbone):
    """benchmarks/bench_layout.py on the tiny backbone: every layout launched, the data-parallel evaluate's rows
    bit-identical to one 1-thread process, rates and ratios written."""
    spec = importlib.util.spec_from_file_location("bench_layout", REPO / "benchmarks" / "bench_layout.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "layout.json"
    assert mod.main(["--backbone", str(tiny_backbone), "--out", str(out), "--rounds", "1", "--reps", "1",
                     "--prompts", "24", "--keep-layers", "2"]) == 0
    r = json.loads(out.read_text())
    assert set(r["train_4L_full"]) == {"1x2", "1x1", "ddp2x1", "lanes2x1"}
    assert r["train_4L_full"]["lanes2x1"]["lanes"] == 2 and r["train_4L_full"]["1x2"]["epoch_tokens_per_s"] > 0
    ev = r["evaluate_4L"]
    assert ev["dp2x1"]["identical_to_1x1"] and ev["dp2x1"]["rows_ranked_differently_from_1x1"] == 0
    assert r["ratios"]["evaluate_dp2x1_identical_to_1x1"] is True and r["ratios"]["train_ddp2x1_over_1x2"] > 0


def test_layout_lora30_worker_trains_the_all_layer_lora_model(tmp_path, tiny_backbone):
    """--lora30: a train worker loads every layer with LoRA (peft adapters + trainable SID rows) and times the
    mix's steps; the driver files it under its own key (the full layout run is test_layout_json's path)."""
    import argparse

    spec = importlib.util.spec_from_file_location("bench_layout", REPO / "benchmarks" / "bench_layout.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "w.json"
    mod.worker(argparse.Namespace(kind="train", layout="1x1", rank=0, world=1, threads=1, port=0, reps=1,
                                  prompts=0, keep_layers=2, backbone=str(tiny_backbone), out=str(out), lora30=True))
    times = json.loads(out.read_text())
    assert set(times) == {name for name, *_ in mod.R.MIX} and all(len(v) == 1 for v in times.values())
    s = mod.summarize_train(times)
    r = mod.ratios({"train_30L_lora": {k: s for k in ("1x2", "1x1", "ddp2x1", "lanes2x1")}})
    assert r["train_lanes2x1_over_1x2"] == 1.0 and "train_4L_full" not in r
