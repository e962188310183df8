"""Precision resolution: auto follows the hardware; runs record what they used."""

import json

import pytest
import torch
import torch.nn.attention

from tsrec.core import precision


@pytest.mark.parametrize("flags,expected", [({"avx2", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16"),
                                            ({"avx2", "fma"}, "fp32"), (set(), "fp32")])
def test_auto_resolves_by_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert precision.resolve("auto") == expected
    assert precision.resolve("fp32") == "fp32" and precision.resolve("bf16") == "bf16"  # explicit choices kept


def test_autocast_runs_matmuls_in_bf16_only_when_asked():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with precision.autocast("bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with precision.autocast("fp32"):
        assert (a @ b).dtype == torch.float32


def test_unknown_precision_refused():
    with pytest.raises(ValueError, match="precision"):
        precision.resolve("fp16")


def test_device_auto_follows_cuda_and_bad_devices_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.resolve_device("auto") == "cpu"
    assert precision.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="sees no CUDA device"):
        precision.resolve_device("cuda:0")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        precision.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.resolve_device("auto") == "cuda"


def test_evaluate_config_refuses_an_unknown_device():
    from tsrec.model.scoring import EvaluateConfig

    with pytest.raises(ValueError, match="device must be"):
        EvaluateConfig(device="gpu0").validate()


@pytest.mark.parametrize("mode, weights", [("bf16_pure", torch.bfloat16), ("bf16", torch.float32),
                                           ("fp32", torch.float32)])
def test_train_precision_sets_weight_and_optimizer_dtypes(tmp_path, tiny_dataset, tiny_backbone, mode, weights):
    """train.precision through the production trainer (tiny model, full fine-tune): bf16_pure = the authors'
    bf16 weights and AdamW moments (no fp32 master copy) under bf16=True; bf16 = autocast over fp32 weights and
    fp32 moments; fp32 = neither."""
    from tiny_train import make_params
    from transformers import TrainerCallback

    from tsrec.model.runs import resolve_run
    from tsrec.model.sft import train_run

    seen = {}

    class Dtypes(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
            seen["bf16_arg"] = args.bf16
            seen["weights"] = {p.dtype for p in model.parameters() if p.requires_grad}
            seen["moments"] = {t.dtype for st in optimizer.state.values() for k, t in st.items()
                               if k in ("exp_avg", "exp_avg_sq")}

    params = make_params(tmp_path, tiny_dataset, tiny_backbone, max_steps=2, precision=mode)
    params["backbone"]["finetune"] = "full"
    # the math attention kernel: torch's CPU flash kernel refuses bf16 under the pinned avx2 kernel set
    # (conftest, repro.cpu_capability: "pack_vnni2 is only supported when avx512 is supported")
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        meta = train_run(resolve_run(params, "tiny", "tsrec", seed=3), callbacks=[Dtypes()])
    assert meta["train"]["precision"] == {"requested": mode, "resolved": mode}
    assert seen == {"bf16_arg": mode != "fp32", "weights": {weights}, "moments": {weights}}
    assert meta["train"]["train_loss"] == meta["train"]["train_loss"]  # not NaN
    config = json.loads((tmp_path / "artifacts/tiny/runs/tsrec/seed3/final/config.json").read_text())
    assert config["dtype"] == str(weights).removeprefix("torch.")  # what was trained is what is saved


def test_bf16_pure_is_a_train_mode_only():
    """evaluate / rl score with autocast; their configs refuse bf16_pure (one clear error)."""
    from tsrec.core.config import section
    from tsrec.core.errors import ParamError
    from tsrec.model.runs import TrainConfig
    from tsrec.model.scoring import EvaluateConfig

    assert section({"train": {"precision": "bf16_pure"}}, "train", TrainConfig).precision == "bf16_pure"
    with pytest.raises(ParamError, match="bf16_pure"):
        section({"evaluate": {"precision": "bf16_pure"}}, "evaluate", EvaluateConfig)
    assert precision.trainer_args("bf16_pure") == {"bf16": True, "fp16": False, "use_cpu": True}
    assert precision.trainer_args("bf16", "cuda") == {"bf16": True, "fp16": False, "use_cpu": False}
    assert precision.weight_dtype("bf16_pure") == torch.bfloat16 and precision.weight_dtype("bf16") == torch.float32
