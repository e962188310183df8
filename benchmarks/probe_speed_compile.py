"""Issue 38 probe: torch.compile (inductor, dynamic=True) vs eager train step on the roofline's three batches.
Run: `python benchmarks/probe_speed_compile.py THREADS` (prints compile time, then eager / compiled seconds per rep)."""
from pathlib import Path
import sys, time, torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline as R
torch.set_num_threads(int(sys.argv[1]))
model, tok = R.load(R.REPO / "artifacts/backbone/smollm2-135m-instruct", 4, "full")
model.train()
bs = R.train_batches(tok)
opt, _ = R.trainer_optimizer(model)
eager = [R.make_step(model, b, opt, torch.get_num_threads()) for b in bs]
cm = torch.compile(model, dynamic=True)
comp = [R.make_step(cm, b, opt, torch.get_num_threads()) for b in bs]
t = time.perf_counter()
for s in comp: s()
print("compile+first s", time.perf_counter() - t, flush=True)
for s in eager: s()
for r in range(3):
    te = [R.timed(s) for s in eager]; tc = [R.timed(s) for s in comp]
    print("eager", [round(x,3) for x in te], "compiled", [round(x,3) for x in tc], flush=True)
