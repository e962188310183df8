"""Precision resolution: auto follows the hardware; runs record what they used."""

import pytest
import torch

from tsrec import precision


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
    from tsrec.scoring import EvaluateConfig

    with pytest.raises(ValueError, match="device must be"):
        EvaluateConfig(device="gpu0").validate()
