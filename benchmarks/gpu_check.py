"""The prepared GPU check (benchmarks/gpu_check.sh): on a machine with a CUDA GPU, in one go, writes one JSON:

  cuda_tests   tests/test_cuda.py (train + evaluate on the GPU, beam search GPU == CPU, RL on cuda)
  ddp_smoke    `torchrun --nproc_per_node 1 -m tsrec train` on the tiny backbone (nccl, GPU LOCAL_RANK):
               what the run record says ran (world size, accelerate's distributed type, DDP on/off, precision)
  rl_smoke     `torchrun --nproc_per_node 1 -m tsrec rl` from that run with rl.device auto (-> the GPU)
  paper_step   benchmarks/bench_gpu_paper_step.py: Qwen2.5-1.5B-architecture train step, fp32 vs bf16

    python benchmarks/gpu_check.py OUT.json      (exit 0 when every part passed)
    python benchmarks/gpu_check.py OUT.json --rehearse   (no GPU: only the two torchrun smokes, on the CPU)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def sh(*cmd: str, cwd: Path = REPO, timeout: int = 1800) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return {"cmd": " ".join(cmd), "rc": res.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "tail": (res.stdout + res.stderr)[-2500:]}


def pytest_counts(tail: str) -> dict:
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail)}


def main(out: str, rehearse: bool = False) -> int:
    import torch
    import yaml

    from tiny_train import make_params
    from tsrec.data.synthetic import make_dataset
    from tsrec.lm.tiny import make_tiny_backbone

    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if not torch.cuda.is_available() and not rehearse:
        report["skipped"] = "torch sees no CUDA device"
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        print(report["skipped"])
        return 1
    py, torchrun = sys.executable, shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"

    if not rehearse:
        r = sh(py, "-m", "pytest", "-q", "-rs", "tests/test_cuda.py")
        report["cuda_tests"] = {**r, **pytest_counts(r["tail"])}

    root = Path(tempfile.mkdtemp(prefix="tsrec-gpu-check-"))
    params = make_params(root, make_dataset(root / "data" / "tiny"), make_tiny_backbone(root / "backbone"),
                         max_steps=6, precision="fp32" if rehearse else "auto")
    params["rl"] = {"variants": ["sft"], "train_prompts": 16, "max_steps": 3, "batch_size": 4, "num_generations": 16,
                    "eval_steps": 2, "valid_rows": 8, "valid_beams": 10, "lr": 1e-3, "device": "auto"}
    (root / "params.yaml").write_text(yaml.safe_dump({k: v for k, v in params.items() if k != "_path"}))
    base = [torchrun, "--standalone", "--nproc_per_node", "1", "-m", "tsrec", "--params", str(root / "params.yaml")]
    r = sh(*base, "train", "--dataset", "tiny", "--variant", "sft", "--results", str(root / "results"), cwd=root)
    summary = root / "results/tiny/sft/seed0/train_summary.json"
    if summary.is_file():
        t = json.loads(summary.read_text())["train"]
        r.update({k: t.get(k) for k in ("world_size", "ddp", "distributed_type", "precision", "steps",
                                        "train_tokens_per_s")})
    report["ddp_smoke"] = r
    r = sh(*base, "rl", "--dataset", "tiny", "--variant", "sft", "--results", str(root / "results"), cwd=root)
    summary = root / "results/tiny/sft_rl/seed0/rl_summary.json"
    if summary.is_file():
        t = json.loads(summary.read_text())["rl"]
        r.update({k: t.get(k) for k in ("device", "processes", "steps", "s_per_step", "rollout_prompts_per_s")})
    report["rl_smoke"] = r
    shutil.rmtree(root, ignore_errors=True)

    if rehearse:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        return 0 if all(report[k]["rc"] == 0 for k in ("ddp_smoke", "rl_smoke")) else 1
    bench = Path(out).with_name("gpu_paper_step.json")
    r = sh(py, "-m", "pytest", "-q", "-s", "benchmarks/bench_gpu_paper_step.py", "--benchmark-enable",
           f"--benchmark-json={bench}")
    if bench.is_file():
        r["results"] = [b["extra_info"] for b in json.loads(bench.read_text())["benchmarks"]]
    report["paper_step"] = r

    report["ok"] = all(report[k]["rc"] == 0 for k in ("cuda_tests", "ddp_smoke", "rl_smoke", "paper_step"))
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "tail"})
                      for k, v in report.items()}, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--rehearse"]
    sys.exit(main(args[0] if args else "results/benchmarks/gpu_check.json", "--rehearse" in sys.argv))
