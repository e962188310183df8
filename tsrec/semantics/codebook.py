"""codebook: semantic IDs from item embeddings (RQ-VAE, residual k-means) or the published index.

Methods (``codebook.methods``; ``codebook.use`` picks the index downstream stages read):
  official  the published MiniOneRec index (``data/<DS>/sid_index.json``), copied byte for byte
  rqvae     MLP encoder -> ``levels`` residual VQ codebooks (k-means init, dead codes re-seeded) -> decoder
  rqkmeans  residual k-means (scikit-learn) on the embeddings themselves

Collision policy ``reassign_last`` (default): items that share a full SID keep it in order of how
close their last-level residual is to the shared code; every other one moves to the nearest code
of the last level that no item with the same prefix uses. SIDs stay 3 tokens ``<a_><b_><c_>``
(what the decoder's prefix trie and SA-Init expect) and become unique. ``none`` keeps collisions.
Both count the quantiser's raw collisions in the report.

Output per dataset: ``artifacts/<DS>/sid/<method>/{index.json,report.json}`` and the side-by-side
report ``results/<DS>/codebook_report.json`` (a ``dvc metrics`` file of numbers, always with the official index;
command, params, embeddings and per-method settings in ``codebook_report.run.json`` beside it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from tsrec.data.datasets import load_index, load_items
from tsrec.semantics.encoder import load_embeddings
from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import atomic_dir, sha256_file, write_json
from tsrec.eval.metrics import write_metrics
from tsrec.data.sids import SID_PATTERN, CodebookConfig, RQKMeansConfig, RQVAEConfig

log = logging.getLogger(__name__)

OFFICIAL_CODES = 256  # codes per level of the published index (3 x 256, RQ-VAE)


# ---------------------------------------------------------------- SIDs, collisions, statistics
def to_index(item_ids, codes: np.ndarray) -> dict[str, list[str]]:
    """Codes [n, L] -> published format ``{"<item_id>": ["<a_i>", "<b_j>", ...]}`` (item ids ascending)."""
    letters = [chr(ord("a") + lv) for lv in range(codes.shape[1])]
    order = np.argsort(np.asarray(item_ids), kind="stable")
    return {str(int(item_ids[i])): [f"<{letters[lv]}_{int(c)}>" for lv, c in enumerate(codes[i])] for i in order}


def parse_codes(index: dict) -> list[tuple[int, ...]]:
    return [tuple(int(SID_PATTERN.fullmatch(t).group(2)) for t in toks) for toks in index.values()]


def resolve_collisions(codes: np.ndarray, last_dist: np.ndarray) -> tuple[np.ndarray, int]:
    """``reassign_last``: make full SIDs unique by moving extra items to their nearest free last-level code.

    ``last_dist[i, k]``: distance of item i's last-level residual to last-level code k. Deterministic:
    groups in SID order, members by (distance to the shared code, row).
    """
    codes = codes.copy()
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, row in enumerate(map(tuple, codes.tolist())):
        groups[row].append(i)
    taken: dict[tuple, set[int]] = defaultdict(set)
    for sid in groups:
        taken[sid[:-1]].add(sid[-1])
    moved = 0
    for sid in sorted(s for s, members in groups.items() if len(members) > 1):
        prefix = sid[:-1]
        members = sorted(groups[sid], key=lambda i: (float(last_dist[i, sid[-1]]), i))
        for i in members[1:]:
            for k in np.argsort(last_dist[i], kind="stable").tolist():
                if k not in taken[prefix]:
                    break
            else:
                raise TsrecError(f"prefix {list(prefix)} holds more items than the {last_dist.shape[1]} last-level "
                                 "codes; collisions cannot be resolved (raise codebook.codebook_size)",
                                 field="codebook.collision")
            taken[prefix].add(k)
            codes[i, -1] = k
            moved += 1
    return codes, moved


def index_stats(sids: list[tuple[int, ...]], codes_available: int) -> dict:
    """Collision share, per-level usage/perplexity, largest groups on one SID and on one prefix."""
    n = len(sids)
    levels = len(sids[0]) if sids else 0
    per_sid = Counter(sids)
    sharing = sum(c for c in per_sid.values() if c > 1)
    out = {
        "items": n,
        "unique_sids": len(per_sid),
        "items_sharing_sid": sharing,  # every item of a SID held by >= 2 items
        "collision_share": round(sharing / n, 6) if n else 0.0,
        "excess_items": n - len(per_sid),  # items beyond one per SID (official Industrial: 16)
        "excess_share": round((n - len(per_sid)) / n, 6) if n else 0.0,
        "shared_sids": sum(1 for c in per_sid.values() if c > 1),
        "largest_sid_group": max(per_sid.values(), default=0),
        "largest_prefix_group": {},
        "levels": {},
    }
    for lv in range(levels):
        letter = chr(ord("a") + lv)
        counts = np.array(list(Counter(s[lv] for s in sids).values()), dtype=np.float64)
        p = counts / counts.sum()
        out["levels"][letter] = {
            "codes_used": int(len(counts)),
            "codes_available": codes_available,
            "usage": round(len(counts) / codes_available, 4),
            "perplexity": round(float(math.exp(-(p * np.log(p)).sum())), 2),
        }
        if lv < levels - 1:  # prefixes of length 1 .. L-1 (e.g. "<a>", "<a><b>")
            name = "".join(chr(ord("a") + j) for j in range(lv + 1))
            out["largest_prefix_group"][name] = max(Counter(s[:lv + 1] for s in sids).values())
    return out


# ---------------------------------------------------------------- quantisers
def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 1, max_iter: int = 300):
    from sklearn.cluster import KMeans

    k = min(k, len(x))
    km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed).fit(x.astype(np.float64))
    return km.cluster_centers_, km.labels_


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1, keepdims=True) - 2 * x @ c.T + (c * c).sum(1)[None, :], 0.0)


def rqkmeans(x: np.ndarray, levels: int, size: int, seed: int, cfg: RQKMeansConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Residual k-means: level l clusters the residual left by levels < l."""
    residual = x.astype(np.float64)
    codes = np.zeros((len(x), levels), dtype=np.int64)
    last_dist = None
    for lv in range(levels):
        centers, labels = _kmeans(residual, size, seed + lv, cfg.n_init, cfg.max_iter)
        if len(centers) < size:  # fewer items than codes: pad so code ids stay in range
            centers = np.vstack([centers, np.full((size - len(centers), x.shape[1]), 1e6)])
        if lv == levels - 1:
            last_dist = _sq_dist(residual, centers)
        codes[:, lv] = labels
        residual = residual - centers[labels]
    rel = float(np.linalg.norm(residual) / max(np.linalg.norm(x), 1e-12))
    return codes, last_dist, {"relative_residual": round(rel, 6)}


def _mlp(sizes: list[int]):
    from torch import nn

    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _RQVAE:
    """MLP encoder -> ``levels`` residual codebooks of ``size`` codes -> MLP decoder (built in this order from
    the seeded global RNG and ``gen``: the draws that make a run reproducible)."""

    def __init__(self, dim: int, levels: int, size: int, cfg: RQVAEConfig, gen):
        import torch
        from torch import nn

        dims = [dim, *cfg.hidden, cfg.latent_dim]
        self.encoder, self.decoder = _mlp(dims), _mlp(dims[::-1])
        self.books = nn.Parameter(torch.randn(levels, size, cfg.latent_dim, generator=gen) * 0.1)
        self.levels, self.size, self.beta = levels, size, cfg.beta

    def parameters(self) -> list:
        return [*self.encoder.parameters(), *self.decoder.parameters(), self.books]

    def quantise(self, z):
        """(quantised z (straight-through), codebook loss, codes [n, L], residual per level, last distances)."""
        import torch

        residual, zq, loss, idx_all, res_all = z, torch.zeros_like(z), z.new_zeros(()), [], []
        for lv in range(self.levels):
            book = self.books[lv]
            d = (residual.detach() ** 2).sum(1, keepdim=True) - 2 * residual.detach() @ book.T + (book ** 2).sum(1)
            idx = d.argmin(1)
            q = book[idx]
            loss = loss + ((q - residual.detach()) ** 2).mean() + self.beta * ((residual - q.detach()) ** 2).mean()
            q_st = residual + (q - residual).detach()  # straight-through
            res_all.append(residual.detach())
            idx_all.append(idx)
            zq = zq + q_st
            residual = residual - q_st
        return zq, loss, torch.stack(idx_all, 1), res_all, d

    def kmeans_init(self, data, seed: int, gen) -> None:
        """Codebooks start at k-means centres of the untrained encoder's residuals."""
        import torch

        with torch.no_grad():
            residual = self.encoder(data).numpy().astype(np.float64)
            for lv in range(self.levels):
                centers, labels = _kmeans(residual, self.size, seed + lv)
                if len(centers) < self.size:
                    extra = residual[torch.randint(len(residual), (self.size - len(centers),), generator=gen).numpy()]
                    centers = np.vstack([centers, extra])
                self.books.data[lv] = torch.from_numpy(centers.astype(np.float32))
                residual = residual - centers[labels]

    def reseed_dead(self, used, res_all, gen) -> int:
        """Codes no item used this epoch restart at random residuals of the last batch; returns how many."""
        import torch

        n = 0
        with torch.no_grad():
            for lv in range(self.levels):
                dead = (~used[lv]).nonzero().flatten()
                if len(dead):
                    pick = torch.randint(len(res_all[lv]), (len(dead),), generator=gen)
                    self.books.data[lv, dead] = res_all[lv][pick]
                    n += len(dead)
        return n


def rqvae(x: np.ndarray, levels: int, size: int, seed: int, cfg: RQVAEConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train an RQ-VAE on ``x`` and return codes [n, L], last-level distances [n, K] and training stats."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(x.astype(np.float32))
    mean, scale = data.mean(0, keepdim=True), data.std().clamp_min(1e-8)
    data = (data - mean) / scale  # centre, one global scale (keeps the geometry)
    model = _RQVAE(x.shape[1], levels, size, cfg, gen)
    if cfg.kmeans_init:
        model.kmeans_init(data, seed, gen)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n, reseeded, history = len(data), 0, []
    bar = tqdm(range(cfg.epochs), desc="rqvae", unit="epoch", disable=None, mininterval=2)
    for epoch in bar:
        perm = torch.randperm(n, generator=gen)
        used = torch.zeros(levels, size, dtype=torch.bool)
        tot = {"recon": 0.0, "quant": 0.0}
        for start in range(0, n, cfg.batch_size):
            batch = data[perm[start:start + cfg.batch_size]]
            zq, qloss, idx, res_all, _ = model.quantise(model.encoder(batch))
            recon = ((model.decoder(zq) - batch) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            (recon + qloss).backward()
            opt.step()
            for lv in range(levels):
                used[lv, idx[:, lv]] = True
            tot["recon"] += recon.item() * len(batch) / n
            tot["quant"] += qloss.item() * len(batch) / n
        if cfg.reseed_dead and epoch < cfg.epochs - 1:
            reseeded += model.reseed_dead(used, res_all, gen)
        history.append(tot)
        bar.set_postfix(recon=f"{tot['recon']:.4f}", quant=f"{tot['quant']:.4f}", refresh=False)
    with torch.no_grad():
        zq, _, idx, res_all, _ = model.quantise(model.encoder(data))
        last, book = res_all[-1], model.books[-1]
        last_dist = ((last ** 2).sum(1, keepdim=True) - 2 * last @ book.T + (book ** 2).sum(1)).clamp_min(0)
        recon = float(((model.decoder(zq) - data) ** 2).mean())
    stats = {"final_recon_mse": round(recon, 6), "final_train_recon": round(history[-1]["recon"], 6),
             "final_train_quant": round(history[-1]["quant"], 6), "dead_codes_reseeded": int(reseeded)}
    return idx.numpy().astype(np.int64), last_dist.numpy().astype(np.float64), stats


QUANTISERS = {"rqvae": (rqvae, "rqvae"), "rqkmeans": (rqkmeans, "rqkmeans")}
RUN_KEYS = ("method", "collision_policy", "source", "index_sha256", "seed")  # per method: run record, not metrics


# ---------------------------------------------------------------- stage
def build_learned(method: str, emb: np.ndarray, item_ids: np.ndarray, cfg: CodebookConfig, seed: int) -> tuple[dict, dict]:
    """Quantise, apply the collision policy, return (index, report entry)."""
    fn, sub = QUANTISERS[method]
    t0 = time.perf_counter()
    codes, last_dist, train_stats = fn(emb, cfg.levels, cfg.codebook_size, seed, getattr(cfg, sub))
    raw = index_stats(list(map(tuple, codes.tolist())), cfg.codebook_size)
    moved = 0
    if cfg.collision == "reassign_last":
        codes, moved = resolve_collisions(codes, last_dist)
    index = to_index(item_ids, codes)
    entry = index_stats(parse_codes(index), cfg.codebook_size)
    entry.update({
        "method": method, "collision_policy": cfg.collision, "items_reassigned": moved,
        "raw_before_policy": {k: raw[k] for k in ("unique_sids", "items_sharing_sid", "collision_share",
                                                   "excess_items", "excess_share", "largest_sid_group")},
        "train": train_stats, "seed": seed,
    })  # no timings: report.json is a DVC output, its hash must not change from run to run
    log.info("%s: built in %.2f s", method, time.perf_counter() - t0)
    return index, entry


def check_capacity(cfg: CodebookConfig, n_items: int) -> None:
    if cfg.codebook_size ** cfg.levels < n_items:
        policy = "no collision policy" if cfg.collision == "none" else "a last-level re-assignment"
        raise ParamError(f"codebook too small: {cfg.codebook_size}^{cfg.levels} = {cfg.codebook_size ** cfg.levels} "
                         f"SIDs for {n_items} items; {policy} cannot give every item a SID "
                         "(raise codebook_size or levels)", field="codebook.codebook_size")


def build_dataset(cfg: CodebookConfig, seed: int, ds: str, methods: list[str], *, data_dir: Path, emb_path: Path,
                  out_root: Path, report_path: Path, command: str) -> dict:
    """The indexes of ``methods`` (and always the official one in the report) for one dataset: computed first,
    written afterwards, so a failure leaves no partial output."""
    items = load_items(data_dir)
    item_ids = items["item_id"].to_numpy(dtype=np.int64)
    official_file = data_dir / "sid_index.json"
    official = load_index(official_file)
    if set(official) != set(item_ids.tolist()):
        raise TsrecError("official SID index and items.parquet list different items", file=official_file)
    learned = [m for m in methods if m != "official"]
    emb_info = None
    if learned:
        check_capacity(cfg, len(items))
        emb = load_embeddings(emb_path, len(items))
        meta_file = emb_path.with_name("meta.json")
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            want = hashlib.sha256(item_ids.tobytes()).hexdigest()
            if meta.get("item_ids_sha256", want) != want:
                raise TsrecError("embeddings were made for other items (item_ids_sha256 differs)", file=meta_file)
            emb_info = {k: meta.get(k) for k in ("model", "model_sha256", "dim", "text")}
        emb_info = {**(emb_info or {}), "path": str(emb_path), "sha256": sha256_file(emb_path)}
    # compute everything first, write afterwards: a failure leaves no partial output
    results: dict[str, tuple[dict | None, dict]] = {}
    for method in methods:
        if method == "official":
            entry = index_stats(parse_codes({str(k): v for k, v in sorted(official.items())}), OFFICIAL_CODES)
            entry.update({"method": "official", "collision_policy": "none (published index)",
                          "source": str(official_file)})
            results[method] = (None, entry)
        else:
            log.info("%s: %s (%d levels x %d codes, seed %d)", ds, method, cfg.levels, cfg.codebook_size, seed)
            results[method] = build_learned(method, emb, item_ids, cfg, seed)
    if "official" not in results:  # the report always shows the official index side by side
        results["official"] = (None, index_stats(parse_codes(official), OFFICIAL_CODES) | {"method": "official"})
    for method in methods:
        index, entry = results[method]
        with atomic_dir(out_root / method) as tmp:
            if index is None:
                shutil.copyfile(official_file, tmp / "index.json")  # unchanged, byte for byte
            else:
                write_json(tmp / "index.json", index, indent=None)
            entry["index_sha256"] = sha256_file(tmp / "index.json")
            write_json(tmp / "report.json", entry)
    report = {
        "dataset": ds,
        "command": command,
        "params": {"seed": seed, **dataclasses.asdict(cfg)},
        "embeddings": emb_info,
        "methods": {m: results[m][1] for m in [*methods, *(["official"] if "official" not in methods else [])]},
    }
    # dvc metrics file: the numbers per method; its run record (report_path's run_path): the rest
    numbers = {m: {k: v for k, v in e.items() if k not in RUN_KEYS} for m, e in report["methods"].items()}
    record = {**{k: v for k, v in report.items() if k != "methods"},
              "methods": {m: {k: e[k] for k in RUN_KEYS if k in e} for m, e in report["methods"].items()}}
    write_metrics(report_path, {"methods": numbers}, record)
    return report
