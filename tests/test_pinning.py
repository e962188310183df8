"""repro.cpu_capability / repro.threads (tsrec.core.pinning): the same tiny training gives the same bits on any x86
machine, the run records say what ran, and a CPU that cannot honour the pin is refused."""

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tsrec.core import pinning
from tsrec.core.errors import ParamError

from tiny_train import make_params  # noqa: E402

# sha256 of the train.csv losses (repr of each float) of the tiny run below under repro avx2 x 1 thread x
# blas compatible: torch's AVX2 kernels and MKL's COMPATIBLE branch, the one MKL documents as giving the same bits
# on Intel and non-Intel CPUs (its default branch is chosen per CPU model: on the Xeon this digest was made on,
# MKL_CBWR=AVX2 alone already changes the losses). Made on an AVX-512 Xeon (Sapphire Rapids); with
# cpu_capability: native there the losses differ (test_native_kernels_change_the_bits).
PINNED_DIGEST = "76edd9cb3f675315242e140a047094212500f80c16c2df28d84ccdc74e2d0a65"


def _tiny_run(tmp_path: Path, tiny_dataset, tiny_backbone, capability: str) -> tuple[str, dict]:
    params = make_params(tmp_path, tiny_dataset, tiny_backbone, max_steps=6, logging_steps=1, threads=0)
    params["repro"] = {"cpu_capability": capability, "threads": 1, "blas": "compatible"}
    params.pop("_path")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_CBWR")}
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "tsrec", "--params", str(tmp_path / "params.yaml"), "train",
                          "--dataset", tiny_dataset.name, "--variant", "tsrec", "--out", str(out),
                          "--results", str(tmp_path / "results")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(out / "plots" / "train.csv", newline="") as f:
        losses = [repr(float(r["loss"])) for r in csv.DictReader(f) if r.get("loss")]
    assert len(losses) == 6
    summary = yaml.safe_load((tmp_path / "results" / tiny_dataset.name / "tsrec" / "seed0" /
                              "train_summary.json").read_text())
    return hashlib.sha256("\n".join(losses).encode()).hexdigest(), summary["train"]["machine"]


@pytest.mark.slow
def test_pinned_losses_equal_the_committed_digest(tmp_path, tiny_dataset, tiny_backbone):
    digest, machine = _tiny_run(tmp_path, tiny_dataset, tiny_backbone, "avx2")
    assert machine["cpu_capability"] == "AVX2" and machine["requested"] == "avx2" and machine["threads"] == 1
    assert machine["blas"] == "compatible"
    assert digest == PINNED_DIGEST


@pytest.mark.slow
@pytest.mark.skipif(not pinning.supported("avx512"), reason="this CPU has no AVX-512: native = avx2 here")
def test_native_kernels_change_the_bits(tmp_path, tiny_dataset, tiny_backbone):
    digest, machine = _tiny_run(tmp_path, tiny_dataset, tiny_backbone, "native")
    assert machine["cpu_capability"] == "AVX512" and machine["requested"] == "native"
    assert digest != PINNED_DIGEST  # the pin is what makes the digest test hold on this machine


def test_a_cpu_without_the_kernels_is_refused(monkeypatch):
    monkeypatch.setattr(pinning, "cpu_flags", lambda: frozenset({"sse2", "avx"}))
    with pytest.raises(ParamError, match="cannot run torch's avx2 kernels"):
        pinning.apply(pinning.ReproConfig(cpu_capability="avx2"), "params.yaml")


def test_a_contradicting_environment_is_refused(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    with pytest.raises(ParamError, match="contradicts"):
        pinning.apply(pinning.ReproConfig(cpu_capability="avx2"), "params.yaml")


def test_record_refuses_a_torch_running_other_kernels():
    import torch

    actual = torch.backends.cpu.get_cpu_capability().lower()
    other = "default" if actual != "default" else "avx2"
    with pytest.raises(Exception, match="repro.cpu_capability"):
        pinning.record(pinning.ReproConfig(cpu_capability=other))
    assert pinning.record(pinning.ReproConfig(cpu_capability="native"))["cpu_capability"].lower() == actual


def test_blas_compatible_sets_mkl_and_refuses_a_contradiction(monkeypatch):
    # setenv first, so monkeypatch removes the variable afterwards (a delenv of an absent variable restores
    # nothing, and a leaked MKL_CBWR changes the bits of every later subprocess: tests/test_resume.py)
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.delenv("MKL_CBWR")
    pinning.apply(pinning.ReproConfig(cpu_capability="native", threads=0, blas="compatible"), "params.yaml")
    assert os.environ["MKL_CBWR"] == "COMPATIBLE"
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    with pytest.raises(ParamError, match="contradicts repro.blas"):
        pinning.apply(pinning.ReproConfig(cpu_capability="native", threads=0, blas="compatible"), "params.yaml")
