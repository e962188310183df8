"""Tiny synthetic datasets in the canonical on-disk form (the same files `tsrec data` writes), for tests."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from tsrec.data.datasets import rows_frame
from tsrec.core.io import atomic_dir, write_json

WORDS = ("drill bit steel saw blade glove tape wire pen paper ink stapler folder clip lamp valve pump "
         "filter sensor relay switch cable battery label marker desk chair shelf bolt nut screw").split()


def make_dataset(out: str | Path, *, n_items: int = 60, n_users: int = 40, codes: int = 8, levels: int = 3,
                 max_len: int = 6, seed: int = 0) -> Path:
    """Write a dataset folder: items, sid_index (unique SIDs), train/valid/test rows, card."""
    rng = random.Random(seed)
    items, index, used = [], {}, set()
    for i in range(n_items):
        words = rng.sample(WORDS, 3)
        items.append({"item_id": i, "title": " ".join(words).title() + f" {i}",
                      "description": f"A {words[0]} for {words[1]} work with {words[2]}.",
                      "brand": rng.choice(["Acme", "Bolt", "Crane"]), "categories": ""})
        while True:
            sid = tuple(f"<{chr(97 + lv)}_{rng.randrange(codes)}>" for lv in range(levels))
            if sid not in used:
                used.add(sid)
                index[str(i)] = list(sid)
                break
    splits = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        seq = [rng.randrange(n_items) for _ in range(rng.randint(4, max_len + 2))]
        user = f"U{u}"
        for j in range(1, len(seq) - 2):
            splits["train"].append({"user_id": user, "history": seq[max(0, j - 10):j], "target": seq[j]})
        splits["valid"].append({"user_id": user, "history": seq[-12:-2], "target": seq[-2]})
        splits["test"].append({"user_id": user, "history": seq[-11:-1], "target": seq[-1]})
    out = Path(out)
    with atomic_dir(out) as tmp:
        pd.DataFrame(items).to_parquet(tmp / "items.parquet", index=False)
        write_json(tmp / "sid_index.json", index, indent=None)
        for name, rows in splits.items():
            rows_frame(rows).to_parquet(tmp / f"{name}.parquet", index=False)
        write_json(tmp / "card.json", {"dataset": out.name, "protocol": "synthetic", "seed": seed,
                                       "counts": {"items": n_items, **{k: len(v) for k, v in splits.items()}}})
    return out
