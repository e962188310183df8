"""The keyword cache format (the authors': ``[{"token", "keywords", "description"}]``), where the caches of a
dataset live (``keywords`` section), and its checks: shape (``read_records``), content (``load_cache``) and
coverage of a SID index (``check_cache``). Written by the keywords stage; read by train (SA-Init, TS-Align)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from tsrec.core.config import from_dict, section
from tsrec.core.errors import ParamError, TsrecError
from tsrec.semantics.teachers import (
    CtfidfConfig,
    HFConfig,
    OpenAIConfig,
)

TEACHERS = ("authors", "hf", "openai", "ctfidf")


@dataclasses.dataclass
class DatasetChoice:
    use: str = "ctfidf"  # the cache that cache_path() returns (and later stages read)
    teachers: list[str] = dataclasses.field(default_factory=lambda: ["ctfidf"])  # caches the stage builds
    optional: list[str] = dataclasses.field(default_factory=list)  # caches only the `teachers` stage builds

    def validate(self) -> None:
        bad = [t for t in [self.use, *self.teachers, *self.optional] if t not in TEACHERS]
        if bad:
            raise ValueError(f"unknown teacher(s) {bad}; known: {list(TEACHERS)}")
        if self.use not in self.teachers:
            raise ValueError(f"use={self.use!r} must be one of teachers {self.teachers}")
        if set(self.optional) & set(self.teachers) or "authors" in self.optional:
            raise ValueError(f"optional {self.optional} must be generating teachers not in teachers {self.teachers}")


@dataclasses.dataclass
class AuthorsConfig:
    file: str = "tsrec-authors/semantics/{ds}.description_keywords.json"  # relative to the data mirror


@dataclasses.dataclass
class KeywordsConfig:
    datasets: dict[str, Any] = dataclasses.field(default_factory=dict)  # DS -> DatasetChoice
    out: str = "artifacts"
    journal: str = "cache/keywords"
    results: str = "results/keywords"
    sample_size: int = 8  # members shown to the teacher (closest to the centroid)
    title_chars: int = 100
    desc_chars: int = 160
    max_attempts: int = 3  # per token and run; a re-run continues with fresh seeds
    coherence_draws: int = 10  # random same-size clusters per token
    authors: AuthorsConfig = dataclasses.field(default_factory=AuthorsConfig)
    hf: HFConfig = dataclasses.field(default_factory=HFConfig)
    openai: OpenAIConfig = dataclasses.field(default_factory=OpenAIConfig)
    ctfidf: CtfidfConfig = dataclasses.field(default_factory=CtfidfConfig)

    def validate(self) -> None:
        if self.sample_size < 1 or self.max_attempts < 1 or self.coherence_draws < 1:
            raise ValueError("sample_size, max_attempts and coherence_draws must be >= 1")

    def choice(self, ds: str, file: str = "params.yaml") -> DatasetChoice:
        if ds not in self.datasets:  # no silent default: a misspelt name would switch the cache in use
            import difflib

            close = difflib.get_close_matches(ds, [str(k) for k in self.datasets], n=1)
            hint = f" (did you mean {close[0]!r}? check the spelling of both)" if close else ""
            raise ParamError(f"no entry for dataset {ds!r}{hint}; listed: {sorted(map(str, self.datasets))}",
                             file=file, field="keywords.datasets")
        return from_dict(DatasetChoice, self.datasets[ds], f"keywords.datasets.{ds}", file)


def keywords_config(params: dict) -> KeywordsConfig:
    return section(params, "keywords", KeywordsConfig)


# ---------------------------------------------------------------- paths
def out_dir(cfg: KeywordsConfig, ds: str, optional: bool = False) -> Path:
    """Caches of ``teachers`` (stage keywords), or of ``optional`` teachers (stage teachers)."""
    return Path(cfg.out) / ds / ("teachers" if optional else "keywords")


def results_file(cfg: KeywordsConfig, ds: str, optional: bool = False) -> Path:
    return Path(cfg.results) / (f"{ds}.teachers.json" if optional else f"{ds}.json")


def cache_path(cfg: KeywordsConfig, ds: str, file: str = "params.yaml") -> Path:
    """The keyword cache IN USE for ``ds`` (``keywords.datasets.<ds>.use``), authors' format; ``file``: the
    params file named in errors."""
    return out_dir(cfg, ds) / f"{cfg.choice(ds, file).use}.json"


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a keyword cache (authors' format), checked for shape only: a JSON list of
    objects with a string ``token``, a list ``keywords`` and a string ``description`` where present."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TsrecError("keyword cache not found (run `tsrec keywords`)", file=path) from None
    except json.JSONDecodeError as exc:
        raise TsrecError(f"invalid JSON: {exc.msg}", file=path, line=exc.lineno) from exc
    if not isinstance(raw, list):
        raise TsrecError("expected a list of {token, keywords, description}", file=path)
    for n, rec in enumerate(raw):
        if not isinstance(rec, dict) or not isinstance(rec.get("token"), str):
            raise TsrecError("entry without a string 'token'", file=path, line=f"[{n}]")
        kw = rec.get("keywords", [])
        if not isinstance(kw, list) or not all(isinstance(k, str) for k in kw):
            raise TsrecError("'keywords' must be a list of strings", file=path, line=rec["token"], field="keywords")
        if not isinstance(rec.get("description", ""), str):
            raise TsrecError("'description' must be a string", file=path, line=rec["token"], field="description")
    return CacheRecords(raw, path)


class CacheRecords(list):
    """The records of a keyword cache, remembering the file (later checks name it in their errors)."""

    def __init__(self, records, path: Path):
        super().__init__(records)
        self.path = path


def load_cache(path: str | os.PathLike) -> dict[str, dict]:
    """token -> {"keywords", "description"} from a file in the authors' format (validated)."""
    path = Path(path)
    out: dict[str, dict] = {}
    for rec in read_records(path):
        kw, desc = rec.get("keywords"), rec.get("description")
        if not isinstance(kw, list) or not kw or not all(isinstance(k, str) and k.strip() for k in kw):
            raise TsrecError("keywords must be a non-empty list of strings", file=path, line=rec["token"],
                             field="keywords")
        if not isinstance(desc, str) or not desc.strip():
            raise TsrecError("description must be a non-empty string", file=path, line=rec["token"],
                             field="description")
        if rec["token"] in out:
            raise TsrecError("duplicate token", file=path, line=rec["token"])
        out[rec["token"]] = {"keywords": kw, "description": desc}
    return out


def check_cache(records: list[dict[str, Any]], tokens: list[str], source: str,
                known: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Records for ``tokens``; refuse missing tokens (listed), tokens outside ``known`` (default ``tokens``:
    a cache for another index), and empty keyword lists / descriptions. Errors name the cache file."""
    file = getattr(records, "path", None)  # set by read_records
    by_token: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["token"] in by_token:
            raise TsrecError("keyword cache lists a token twice", file=file, line=r["token"])
        by_token[r["token"]] = r
    missing = [t for t in tokens if t not in by_token]
    if missing:
        shown = ", ".join(missing[:30]) + (f", ... ({len(missing)} in all)" if len(missing) > 30 else "")
        raise TsrecError(f"keyword cache is missing {len(missing)} token(s) of the index: {shown}", file=file)
    extra = sorted(set(by_token) - set(tokens if known is None else known))
    if extra:
        raise TsrecError(f"keyword cache holds {len(extra)} token(s) not in the index (a cache for another "
                         f"index?): {', '.join(extra[:30])}", file=file)
    for t in tokens:
        r = by_token[t]
        if source in ("keywords", "both") and not [k for k in r.get("keywords") or [] if str(k).strip()]:
            raise TsrecError("empty keyword list", file=file, line=t, field="keywords")
        if source in ("description", "both") and not str(r.get("description") or "").strip():
            raise TsrecError("empty description", file=file, line=t, field="description")
    return {t: by_token[t] for t in tokens}
