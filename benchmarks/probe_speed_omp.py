"""Issue 38 probe: OMP_WAIT_POLICY unset (spinning) vs PASSIVE, 2 threads, one process per run; prints step
and beam-search seconds and sha256 prefixes of the losses and beam scores (identical bits = same digests).
Run alternately: `python benchmarks/probe_speed_omp.py; OMP_WAIT_POLICY=PASSIVE python benchmarks/probe_speed_omp.py`."""
from pathlib import Path
import sys, time, torch, os
POLICY = os.environ.get("OMP_WAIT_POLICY", "unset")  # before roofline's setdefault
sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline as R
from tsrec.model.sft import label_position_loss
torch.set_num_threads(2)
model, tok = R.load(R.REPO / "artifacts/backbone/smollm2-135m-instruct", 4, "full")
model.train()
b = R.train_batches(tok)[0]
opt, _ = R.trainer_optimizer(model)
head = model.get_output_embeddings()
losses = []
def step():
    total, count = label_position_loss(model, head, b)
    (total / count).backward(); losses.append((total / count).item())
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0); opt.step(); model.zero_grad()
step()
ts = [R.timed(step) for _ in range(3)]
model.eval()
trie, seqs = R.eval_setup(tok, 8)
from tsrec.lm.decoding import search_batches
res = {}
te = [R.timed(lambda: res.setdefault("r", search_batches(model, seqs, trie, pad_id=tok.pad_token_id, num_beams=20, batch_size=8))) for _ in range(2)]
import hashlib
print(POLICY, "train", [round(x, 2) for x in ts], "eval", [round(x, 2) for x in te],
      "loss", hashlib.sha256(repr(losses).encode()).hexdigest()[:12], "sids", hashlib.sha256(res["r"].scores.numpy().tobytes()).hexdigest()[:12], flush=True)
