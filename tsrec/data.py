"""data: fetch the MiniOneRec Amazon files (mirror or pinned URL), verify, parse to canonical parquet.

Canonical form, one folder per dataset (``data/<DS>/``):
  items.parquet   item_id:int64, title, description, brand, categories (str)
  sid_index.json  the official SID index, published format: {"<item_id>": ["<a_i>", "<b_j>", "<c_k>"]}
  train/valid/test.parquet   user_id:str, history:list<int64> (oldest first), target:int64
  card.json       counts, protocol (official|reconstructed), source, sha256 of inputs and outputs
"""

from __future__ import annotations

import ast
import hashlib
import csv
import io
import dataclasses
import json
import logging
import os
import re
import urllib.request
from pathlib import Path
from typing import Literal

import pandas as pd
from tqdm import tqdm

from tsrec.config import section
from tsrec.errors import ParamError, TsrecError
from tsrec.io import atomic_dir, atomic_file, sha256_file, write_json

log = logging.getLogger(__name__)

MINIONEREC_COMMIT = "81b4ba9811cfb152cf161f1c486fe516510d081e"
URL_PATTERN = "https://raw.githubusercontent.com/AkaliKong/MiniOneRec/{commit}/data/Amazon/{subpath}"
SPLIT_SUFFIX = "_5_2016-10-2018-11"
DATASETS = ("Industrial_and_Scientific", "Office_Products")
CSV_COLUMNS = [
    "user_id", "history_item_title", "item_title", "history_item_id", "item_id", "history_item_sid", "item_sid",
]
ITEM_FIELDS = ("title", "description", "brand", "categories")
SID_PATTERN = re.compile(r"<([a-z])_(\d+)>")

# sha256 of the files at MINIONEREC_COMMIT (paths relative to data/Amazon/); a download must match.
PINNED_SHA256 = {
    "index/Industrial_and_Scientific.index.json": "53f1aefbe8b8aa774326c122606c6525300c5a325e7b78817739d465aeb335f8",
    "index/Industrial_and_Scientific.item.json": "937600c7a03652f55864a1d12d6e9fe8ca3e24ecc4e255a88216b25c5f949496",
    "index/Office_Products.index.json": "f599d2b858beb5a2f660d6253896746c25a65f3a7d0c2f3ae6fd4ec2091eebc8",
    "index/Office_Products.item.json": "398cb2bb7868bedf2ed8ed6b24d25e172f21b7022554d1f8ea52200478494c1c",
    "info/Industrial_and_Scientific_5_2016-10-2018-11.txt": "bdc51fd9636e361db095c84de4e2650b3dd9606812c92e7a01f3b77c5c1a84f7",
    "info/Office_Products_5_2016-10-2018-11.txt": "7e8bae0a051a377713364b9e669590f86feb869fc269157c64b2189c0f4bcfa4",
    "test/Industrial_and_Scientific_5_2016-10-2018-11.csv": "973dd1db4fd549f3f2b40a0f039dbae157ebb92c716197cc246401e4e82c3a46",
    "test/Office_Products_5_2016-10-2018-11.csv": "c1967034e197a7837a8962f2556efaabc12eb5bb84e1fdc79cd0accbce71add5",
    "valid/Industrial_and_Scientific_5_2016-10-2018-11.csv": "12bbb02bced0bd754a8b4e0f9ca4086416e30d12b0b73a2c95e7b195dd67385a",
    "valid/Office_Products_5_2016-10-2018-11.csv": "a7d8f049ae425f413def22687cebcd172c65833633ff76dd3d90a83bca98234f",
}


@dataclasses.dataclass
class SyntheticConfig:  # data.source: synthetic (smoke profile): tsrec.synthetic.make_dataset's arguments
    n_items: int = 60
    n_users: int = 40
    codes: int = 8
    max_len: int = 6
    seed: int = 0

    def validate(self) -> None:
        if min(self.n_items, self.n_users, self.codes, self.max_len) < 1:
            raise ValueError("synthetic n_items, n_users, codes and max_len must be >= 1")
        if self.codes ** 3 < self.n_items:
            raise ValueError(f"synthetic: {self.codes}^3 SIDs cannot hold {self.n_items} items")


@dataclasses.dataclass
class DataConfig:
    datasets: list[str] = dataclasses.field(default_factory=lambda: list(DATASETS))
    source: Literal["mirror", "download", "synthetic"] = "mirror"  # synthetic: tsrec.synthetic, any dataset name
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    mirror: str = "../shared/datasets"  # $TSREC_MIRROR overrides
    commit: str = MINIONEREC_COMMIT
    download_cache: str = "cache/downloads"
    train: Literal["auto", "official", "reconstruct"] = "auto"
    out: str = "data"
    timeout_s: float = 60.0

    def validate(self) -> None:
        if not self.datasets:
            raise ValueError("datasets must not be empty")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")

    @property
    def mirror_root(self) -> Path:
        return Path(os.environ.get("TSREC_MIRROR") or self.mirror)


def subpaths(ds: str) -> dict[str, str]:
    return {
        "items": f"index/{ds}.item.json",
        "index": f"index/{ds}.index.json",
        "info": f"info/{ds}{SPLIT_SUFFIX}.txt",
        "valid": f"valid/{ds}{SPLIT_SUFFIX}.csv",
        "test": f"test/{ds}{SPLIT_SUFFIX}.csv",
        "train": f"train/{ds}{SPLIT_SUFFIX}.csv",
    }


# ---------------------------------------------------------------- fetch + verify
def _mirror_sums(root: Path) -> dict[str, str]:
    sums_file = root / "SHA256SUMS"
    sums: dict[str, str] = {}
    if sums_file.is_file():
        for n, line in enumerate(sums_file.read_text().splitlines(), 1):
            if line.strip():
                digest, _, rel = line.strip().partition("  ")
                if not rel or len(digest) != 64:
                    raise TsrecError("malformed checksum line", file=sums_file, line=n)
                prefix = "minionerec/Amazon/"
                sums[rel[len(prefix):] if rel.startswith(prefix) else rel] = digest
    return sums


def verify(path: Path, expected: str) -> str:
    got = sha256_file(path)
    if got != expected:
        raise TsrecError(f"sha256 mismatch: expected {expected}, got {got}", file=path)
    return got


def fetch(cfg: DataConfig, subpath: str, *, optional: bool = False) -> Path | None:
    """Return a verified local copy of ``data/Amazon/<subpath>`` from the mirror or the pinned URL."""
    if cfg.source == "mirror":
        root = cfg.mirror_root
        path = root / "minionerec" / "Amazon" / subpath
        if not path.is_file():
            if optional:
                return None
            raise TsrecError("file missing from mirror (set data.mirror or $TSREC_MIRROR)", file=path)
        expected = PINNED_SHA256.get(subpath) or _mirror_sums(root).get(subpath)
        if expected is None:
            raise TsrecError("no pinned or mirror checksum for this file; refusing to use it unverified", file=path)
        verify(path, expected)
        return path
    expected = PINNED_SHA256.get(subpath)
    dest = Path(cfg.download_cache) / cfg.commit / subpath
    if dest.is_file() and expected and sha256_file(dest) == expected:
        return dest
    url = URL_PATTERN.format(commit=cfg.commit, subpath=subpath)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=cfg.timeout_s) as resp:
            payload = resp.read()
    except OSError as exc:
        if optional:
            return None
        raise TsrecError(f"download failed: {exc}", file=url) from exc
    if expected is None:
        if optional:
            log.warning("%s has no pinned checksum; not using it", subpath)
            return None
        raise TsrecError("no pinned checksum for this file", file=url)
    got = hashlib.sha256(payload).hexdigest()
    if got != expected:
        raise TsrecError(f"sha256 mismatch: expected {expected}, got {got}", file=url)
    with atomic_file(dest, "wb") as out:
        out.write(payload)
    return dest


# ---------------------------------------------------------------- parse
def read_utf8(path: Path) -> str:
    """The file's text; invalid UTF-8 is one error naming the line (not a UnicodeDecodeError traceback)."""
    blob = Path(path).read_bytes()
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TsrecError(f"not valid UTF-8 (byte {blob[exc.start]:#04x} at offset {exc.start})", file=path,
                         line=blob.count(b"\n", 0, exc.start) + 1) from None


def _unique_keys(path: Path):
    """json object_pairs_hook: a key given twice is refused (json would silently keep the last)."""
    def hook(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise TsrecError("key given twice", file=path, line=k)
            seen.add(k)
        return dict(pairs)
    return hook


def parse_items(path: Path) -> pd.DataFrame:
    try:
        raw = json.loads(read_utf8(path), object_pairs_hook=_unique_keys(path))
    except json.JSONDecodeError as exc:
        raise TsrecError(f"invalid JSON: {exc.msg}", file=path, line=exc.lineno) from exc
    if not isinstance(raw, dict):
        raise TsrecError("expected an object of item id -> fields", file=path)
    rows = []
    for key, rec in raw.items():
        if not str(key).isdigit():
            raise TsrecError("item id is not a non-negative integer", file=path, line=key)
        if not isinstance(rec, dict):
            raise TsrecError("item record is not an object", file=path, line=key)
        row = {"item_id": int(key)}
        for f in ITEM_FIELDS:
            v = rec.get(f, "")
            if f == "title" and (not isinstance(v, str) or not v.strip()):
                raise TsrecError("missing or empty title", file=path, line=key, field=f)
            if not isinstance(v, str):
                v = json.dumps(v, ensure_ascii=False) if v is not None else ""
            row[f] = v
        rows.append(row)
    return pd.DataFrame(rows, columns=["item_id", *ITEM_FIELDS]).sort_values("item_id", ignore_index=True)


def check_sid(tokens: object, path: Path, key: object, levels: int | None = 3) -> list[str]:
    """A SID is a list of tokens ``<a_i>``, ``<b_j>``, ... with letters in level order."""
    if not isinstance(tokens, list) or not tokens or (levels is not None and len(tokens) != levels):
        raise TsrecError(f"SID must be a list of {levels} tokens, got {tokens!r}", file=path, line=key)
    for level, tok in enumerate(tokens):
        m = SID_PATTERN.fullmatch(tok) if isinstance(tok, str) else None
        if m is None or m.group(1) != chr(ord("a") + level):
            raise TsrecError(f"bad SID token {tok!r} at level {level}", file=path, line=key)
    return tokens


def load_index(path: Path, levels: int | None = 3) -> dict[int, list[str]]:
    """Read a SID index in the published JSON format, validating every entry."""
    try:
        raw = json.loads(read_utf8(Path(path)), object_pairs_hook=_unique_keys(Path(path)))
    except json.JSONDecodeError as exc:
        raise TsrecError(f"invalid JSON: {exc.msg}", file=path, line=exc.lineno) from exc
    if not isinstance(raw, dict):
        raise TsrecError("expected an object of item id -> SID tokens", file=path)
    index = {}
    for key, toks in raw.items():
        if not str(key).isdigit():
            raise TsrecError("item id is not a non-negative integer", file=path, line=key)
        index[int(key)] = check_sid(toks, path, key, levels)
    return index


def _literal_list(text: str, path: Path, line: int, field: str, kind: type) -> list:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise TsrecError(f"not a Python-literal list: {text[:60]!r}", file=path, line=line, field=field) from exc
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise TsrecError(f"expected a list of {kind.__name__}", file=path, line=line, field=field)
    return value


def parse_split(path: Path, items: set[int], index: dict[int, list[str]]) -> pd.DataFrame:
    """Parse a MiniOneRec split CSV; every id must be known and every SID must match the index."""
    rows = []
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""))
    try:
        header = next(reader, None)
        if header != CSV_COLUMNS:
            raise TsrecError(f"header must be {CSV_COLUMNS}, got {header}", file=path, line=1)
        for rec in reader:
            line = reader.line_num
            if len(rec) != len(CSV_COLUMNS):
                raise TsrecError(f"expected {len(CSV_COLUMNS)} fields, got {len(rec)} (truncated row?)",
                                 file=path, line=line)
            r = dict(zip(CSV_COLUMNS, rec))
            hist = _literal_list(r["history_item_id"], path, line, "history_item_id", int)
            hist_sid = _literal_list(r["history_item_sid"], path, line, "history_item_sid", str)
            hist_titles = _literal_list(r["history_item_title"], path, line, "history_item_title", str)
            if not (len(hist) == len(hist_sid) == len(hist_titles)) or not hist:
                raise TsrecError("history lists are empty or differ in length", file=path, line=line,
                                 field="history_item_id")
            try:
                target = int(r["item_id"])
            except ValueError as exc:
                raise TsrecError(f"not an integer: {r['item_id']!r}", file=path, line=line, field="item_id") from exc
            for field, ids, sids in (("history_item_id", hist, hist_sid), ("item_id", [target], [r["item_sid"]])):
                for item, sid in zip(ids, sids):
                    if item not in items:
                        raise TsrecError(f"unknown item id {item}", file=path, line=line, field=field)
                    if item in index and "".join(index[item]) != sid:
                        raise TsrecError(f"SID {sid} of item {item} does not match the index "
                                         f"({''.join(index[item])})", file=path, line=line,
                                         field=field.replace("_id", "_sid"))
            if not r["user_id"]:
                raise TsrecError("empty user id", file=path, line=line, field="user_id")
            rows.append({"user_id": r["user_id"], "history": hist, "target": target})
    except csv.Error as exc:  # e.g. a field over csv's 128 KB limit, a NUL byte
        raise TsrecError(f"malformed CSV: {exc}", file=path, line=max(reader.line_num, 1)) from None
    if not rows:
        raise TsrecError("no data rows (header only)", file=path, line=2)
    return rows_frame(rows)


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["user_id", "history", "target"])
    return df.astype({"user_id": "string", "target": "int64"})


def check_info(path: Path, index: dict[int, list[str]]) -> int:
    """The info file lists ``sid<TAB>title<TAB>item_id``; each SID must equal the index's."""
    n = 0
    with io.StringIO(read_utf8(path)) as fh:
        for line_no, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise TsrecError(f"expected 3 tab-separated fields, got {len(parts)}", file=path, line=line_no)
            sid, _, item = parts
            if not item.isdigit() or int(item) not in index:
                raise TsrecError(f"unknown item id {item!r}", file=path, line=line_no, field="item_id")
            if "".join(index[int(item)]) != sid:
                raise TsrecError(f"SID {sid} does not match the index", file=path, line=line_no, field="sid")
            n += 1
    return n


def reconstruct_train(valid: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """Rebuild train rows from each user's first valid/test history (rule in the datasets README).

    Splits are by global time, so every position before a user's first valid/test target is a
    train row. Position j >= 1 of that history yields (history[:j] -> history[j]).
    """
    first: dict[str, list[int]] = {}
    for df in (valid, test):  # valid precedes test in time; rows inside each are time-ordered
        for user, hist in zip(df["user_id"], df["history"]):
            first.setdefault(user, list(hist))
    rows = [
        {"user_id": user, "history": hist[max(0, j - 10):j], "target": hist[j]}
        for user, hist in first.items()
        for j in range(1, len(hist))
    ]
    train = rows_frame(rows)
    held_out = {(u, tuple(h), t) for df in (valid, test) for u, h, t in zip(df["user_id"], df["history"], df["target"])}
    for u, h, t in zip(train["user_id"], train["history"], train["target"]):
        if (u, tuple(h), t) in held_out:
            raise TsrecError(f"reconstructed train row of user {u} equals a valid/test row")
        if first[u][:len(h) + 1] != [*h, t]:  # the target lies strictly inside the first held-out history
            raise TsrecError(f"reconstructed row of user {u} is not before the first valid/test target")
    return train


def build_dataset(cfg: DataConfig, ds: str, out_root: Path) -> dict:
    """Fetch, verify, parse and write one dataset atomically; return its data card."""
    if ds not in DATASETS:
        raise ParamError(f"unknown dataset {ds!r}; known: {list(DATASETS)}", field="data.datasets")
    sub = subpaths(ds)
    files: dict[str, Path | None] = {}
    for key, rel in tqdm(sub.items(), desc=f"fetch {ds}", unit="file", disable=None):
        want_train = key == "train"
        if want_train and cfg.train == "reconstruct":
            continue
        files[key] = fetch(cfg, rel, optional=want_train and cfg.train == "auto")
    items_df = parse_items(files["items"])
    item_ids = set(items_df["item_id"].tolist())
    index = load_index(files["index"])
    missing = sorted(item_ids - set(index))[:5]
    extra = sorted(set(index) - item_ids)[:5]
    if missing or extra:
        raise TsrecError(f"SID index and items disagree: items without SID {missing}, SIDs without item {extra}",
                         file=files["index"])
    check_info(files["info"], index)
    splits = {s: parse_split(files[s], item_ids, index) for s in ("valid", "test")}
    if files.get("train") is not None:
        splits["train"], protocol = parse_split(files["train"], item_ids, index), "official"
    else:
        if cfg.train == "official":
            raise TsrecError("train CSV not available but data.train is 'official'", file=sub["train"])
        splits["train"], protocol = reconstruct_train(splits["valid"], splits["test"]), "reconstructed"
        log.warning("%s: train CSV absent, train split RECONSTRUCTED from valid/test histories (%d rows)",
                    ds, len(splits["train"]))
    sids = {tuple(v) for v in index.values()}
    url = URL_PATTERN.split("{commit}")[0]
    log.info("%s: inputs from %s (sha256 in card.json)", ds, cfg.mirror_root if cfg.source == "mirror" else url)
    card = {
        "dataset": ds,
        "protocol": protocol,
        "source": {  # no mirror path: it is machine-specific and would change the DVC output hash
            "kind": cfg.source,
            **({} if cfg.source == "mirror" else {"location": url}),
            "repository": "github.com/AkaliKong/MiniOneRec",
            "commit": cfg.commit,
        },
        "counts": {
            "items": len(items_df),
            "sids_unique": len(sids),
            "train": len(splits["train"]),
            "valid": len(splits["valid"]),
            "test": len(splits["test"]),
            "users_train": int(splits["train"]["user_id"].nunique()),
        },
        "inputs_sha256": {sub[k]: sha256_file(p) for k, p in files.items() if p is not None},
    }
    dest = out_root / ds
    with atomic_dir(dest) as tmp:
        items_df.to_parquet(tmp / "items.parquet", index=False)
        write_json(tmp / "sid_index.json", {str(k): v for k, v in sorted(index.items())}, indent=None)
        for name, df in splits.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        card["outputs_sha256"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        write_json(tmp / "card.json", card)
    return card


# ---------------------------------------------------------------- canonical readers for later stages
def load_items(data_dir: str | os.PathLike) -> pd.DataFrame:
    return pd.read_parquet(Path(data_dir) / "items.parquet")


def load_split(data_dir: str | os.PathLike, split: str) -> pd.DataFrame:
    if split not in ("train", "valid", "test"):
        raise TsrecError(f"unknown split {split!r}")
    df = pd.read_parquet(Path(data_dir) / f"{split}.parquet")
    df["history"] = df["history"].map(lambda h: [int(x) for x in h])
    return df


# ---------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("--dataset", action="append", help="dataset(s) to build (default: data.datasets)")
    p.add_argument("--from-raw", nargs=2, metavar=("REVIEWS", "META"),
                   help="build from raw Amazon'18 review + metadata JSON lines instead (see tsrec.raw)")
    p.add_argument("--name", help="with --from-raw: output dataset name")
    p.add_argument("--out", help="output root (default: data.out)")


def run(args, params) -> None:
    cfg = section(params, "data", DataConfig)
    out_root = Path(args.out or cfg.out)
    if args.from_raw:
        from tsrec.raw import build_from_raw

        card = build_from_raw(Path(args.from_raw[0]), Path(args.from_raw[1]), out_root, args.name or "raw", params)
        print(json.dumps(card["counts"]))
        return
    for ds in args.dataset or cfg.datasets:
        if cfg.source == "synthetic":
            from tsrec.synthetic import make_dataset

            make_dataset(out_root / ds, **dataclasses.asdict(cfg.synthetic))
            card = json.loads((out_root / ds / "card.json").read_text(encoding="utf-8"))
        else:
            card = build_dataset(cfg, ds, out_root)
        log.info("%s: %s (%s)", ds, card["counts"], card["protocol"])
        print(f"{ds}: protocol={card['protocol']} " + " ".join(f"{k}={v}" for k, v in card["counts"].items()))
