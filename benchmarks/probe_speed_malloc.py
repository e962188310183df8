"""Issue 38 probe: glibc mallopt (no mmap for big blocks, no trim) vs default, short-batch train step.
Run alternately: `python benchmarks/probe_speed_malloc.py default 1; python benchmarks/probe_speed_malloc.py mallopt 1`."""
from pathlib import Path
import sys, time, ctypes, torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
if sys.argv[1] == "mallopt":
    libc = ctypes.CDLL("libc.so.6")
    # M_TRIM_THRESHOLD=-1, M_MMAP_THRESHOLD=-3: keep freed memory, serve big blocks from the heap
    libc.mallopt(-3, 1 << 30); libc.mallopt(-1, 1 << 31 - 1)
import roofline as R
torch.set_num_threads(int(sys.argv[2]))
model, tok = R.load(R.REPO / "artifacts/backbone/smollm2-135m-instruct", 4, "full")
model.train()
b = R.train_batches(tok)[0]
opt, _ = R.trainer_optimizer(model)
step = R.make_step(model, b, opt, torch.get_num_threads())
step(); step()
ts = [R.timed(step) for _ in range(4)]
print(sys.argv[1], sorted(ts))
