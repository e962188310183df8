"""The dataset formats every stage reads: the MiniOneRec source files (parsers with file/line/field errors)
and the canonical ``data/<DS>/`` folder the data stage writes (``load_items``, ``load_split``, ``load_index``)."""

from __future__ import annotations

import ast
import csv
import dataclasses
import io
import json
import logging
import os
from pathlib import Path
from typing import Literal

import pandas as pd

from tsrec.core.errors import TsrecError
from tsrec.core.io import sha256_file
from tsrec.data.sids import SID_PATTERN

log = logging.getLogger(__name__)

MINIONEREC_COMMIT = "81b4ba9811cfb152cf161f1c486fe516510d081e"
URL_PATTERN = "https://raw.githubusercontent.com/AkaliKong/MiniOneRec/{commit}/data/Amazon/{subpath}"
SPLIT_SUFFIX = "_5_2016-10-2018-11"
DATASETS = ("Industrial_and_Scientific", "Office_Products")
CSV_COLUMNS = [
    "user_id", "history_item_title", "item_title", "history_item_id", "item_id", "history_item_sid", "item_sid",
]


ITEM_FIELDS = ("title", "description", "brand", "categories")


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
class SyntheticConfig:  # data.source: synthetic (smoke profile): tsrec.data.synthetic.make_dataset's arguments
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
    source: Literal["mirror", "download", "synthetic"] = "mirror"  # synthetic: tsrec.data.synthetic, any dataset name
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
def mirror_sums(root: Path) -> dict[str, str]:
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
    if not Path(path).is_file():
        raise TsrecError("SID index not found (run `tsrec data`, or `tsrec codebook` for a learned index)", file=path)
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


# ---------------------------------------------------------------- canonical readers for later stages
def read_parquet(path: Path, stage: str = "tsrec data") -> pd.DataFrame:
    """A parquet file of a stage's output; missing or unreadable (truncated) is one error naming it."""
    if not path.is_file():
        raise TsrecError(f"not found (run `{stage}`)", file=path)
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on a truncated or foreign file
        raise TsrecError(f"unreadable parquet ({type(exc).__name__}: {str(exc)[:120]}); rebuild it with `{stage}`",
                         file=path) from None


def load_items(data_dir: str | os.PathLike) -> pd.DataFrame:
    return read_parquet(Path(data_dir) / "items.parquet")


def load_split(data_dir: str | os.PathLike, split: str) -> pd.DataFrame:
    if split not in ("train", "valid", "test"):
        raise TsrecError(f"unknown split {split!r}")
    df = read_parquet(Path(data_dir) / f"{split}.parquet")
    df["history"] = df["history"].map(lambda h: [int(x) for x in h])
    return df
