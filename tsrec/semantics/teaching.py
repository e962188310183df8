"""Keyword generation for the keywords and teachers stages: token clusters (the items holding a SID token,
a bounded sample nearest the centroid), a teacher per cluster through the append-only journal (junk retried,
then recorded as a failure), the authors' imported file, coherence against random clusters, the tables."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from tsrec.core.config import global_seed, section
from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import sha256_json, write_json
from tsrec.data.datasets import DataConfig, load_index, load_items, mirror_sums, verify
from tsrec.data.download import AUTHORS_COMMIT, AUTHORS_SHA256, AUTHORS_URL_PATTERN, download_verified
from tsrec.data.layout import index_path
from tsrec.data.sids import codebook_config, token_key
from tsrec.eval.metrics import is_run_record, read_with_run, write_metrics
from tsrec.lm.llm import backbone_config
from tsrec.semantics.encoder import EmbedConfig, clean_text, embeddings_path, encode_texts, item_text, load_embeddings
from tsrec.semantics.keyword_cache import KeywordsConfig, keywords_config, load_cache, out_dir, results_file
from tsrec.semantics.teachers import (
    PROMPT_VERSION,
    Cluster,
    CtfidfTeacher,
    HFTeacher,
    OpenAITeacher,
    Teacher,
    parse_answer,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- item text, embeddings, clusters
def item_texts(items) -> dict[int, str]:
    return {int(i): item_text(t, d) for i, t, d in zip(items["item_id"], items["title"], items["description"])}


@dataclasses.dataclass(frozen=True)
class KeywordsJob:
    """What the keywords / teachers stages read for one dataset, resolved once from params (``resolve_job``)."""
    dataset: str
    keywords: KeywordsConfig
    data: DataConfig
    embed: EmbedConfig
    index_file: Path  # the SID index in use
    backbone: Path    # the converted backbone (the hf teacher's default model)
    seed: int


def resolve_job(params: dict, ds: str) -> KeywordsJob:
    data = section(params, "data", DataConfig)
    return KeywordsJob(ds, keywords_config(params), data, section(params, "embed", EmbedConfig),
                       index_path(codebook_config(params), data, ds), backbone_config(params).path,
                       global_seed(params))


def encoder(ecfg: EmbedConfig) -> Callable[[Sequence[str]], np.ndarray]:
    """The embed stage's frozen sentence encoder (same model and settings as the item embeddings)."""
    return lambda texts: encode_texts(list(texts), ecfg.model, ecfg.batch_size, max_seq_length=ecfg.max_seq_length,
                                      progress=False, desc="keywords coherence")


def item_embeddings(ecfg: EmbedConfig, ds: str, items) -> np.ndarray:
    """The embed stage's item embeddings (items.parquet row order)."""
    return load_embeddings(embeddings_path(ecfg, ds), len(items))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def build_clusters(index: dict[int, list[str]], items, emb: np.ndarray, *, sample_size: int,
                   title_chars: int, desc_chars: int) -> list[Cluster]:
    """One cluster per token of the index, in (level, code) order; sample = members closest to the centroid."""
    row = {int(i): r for r, i in enumerate(items["item_id"])}
    missing = sorted(set(index) - set(row))[:5]
    if missing:
        raise TsrecError(f"SID index holds items missing from items.parquet: {missing}")
    titles = dict(zip(items["item_id"].astype(int), items["title"]))
    descs = dict(zip(items["item_id"].astype(int), items["description"]))
    members: dict[str, list[int]] = {}
    for item in sorted(index):
        for tok in index[item]:
            members.setdefault(tok, []).append(item)
    unit = _unit(emb.astype(np.float32))
    clusters = []
    for tok in sorted(members, key=token_key):
        ids = members[tok]
        vecs = unit[[row[i] for i in ids]]
        sims = vecs @ _unit(vecs.mean(0))
        order = sorted(range(len(ids)), key=lambda k: (-round(float(sims[k]), 6), ids[k]))[:sample_size]
        sample = tuple((clean_text(titles[ids[k]])[:title_chars], clean_text(descs[ids[k]])[:desc_chars])
                       for k in order)
        clusters.append(Cluster(tok, token_key(tok)[0], tuple(ids), sample))
    return clusters


# ---------------------------------------------------------------- journal + generation
def record_key(cluster: Cluster, teacher: Teacher) -> str:
    return sha256_json({"members": cluster.members, "sample": cluster.sample, "prompt": PROMPT_VERSION,
                        "teacher": teacher.name, "settings": teacher.settings()})[:24]


class Journal:
    """Append-only JSON-lines file, fsync'ed after every batch, so a killed run loses at most one batch."""

    def __init__(self, path: Path):
        self.path = path
        self.ok: dict[str, dict] = {}
        self.attempts: dict[str, int] = {}
        if path.is_file():
            # bytes, line by line: a kill can tear the last line anywhere, even inside a UTF-8 character
            for n, line in enumerate(path.read_bytes().split(b"\n"), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line.decode("utf-8"))
                    key, attempts = rec["key"], int(rec.get("attempts", 0))
                except (UnicodeDecodeError, ValueError, TypeError, KeyError):
                    log.warning("%s line %d: unreadable (killed mid-write?); ignored", path, n)
                    continue
                self.attempts[key] = self.attempts.get(key, 0) + attempts
                if rec.get("status") == "ok":
                    self.ok[key] = rec

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def append(self, recs: list[dict]) -> None:
        if not recs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            if fh.tell() and not self._ends_with_newline():
                fh.write("\n")  # close a torn last line: the first new record must not run onto it
            for rec in recs:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        for rec in recs:
            self.attempts[rec["key"]] = self.attempts.get(rec["key"], 0) + rec["attempts"]
            if rec["status"] == "ok":
                self.ok[rec["key"]] = rec


def generate(teacher: Teacher, clusters: Sequence[Cluster], journal_path: Path, *, max_attempts: int,
             texts: dict[int, str] | None = None, limit: int | None = None) -> dict[str, Any]:
    """Label every cluster not yet in the journal; returns records (token -> answer), failures and counts."""
    journal = Journal(journal_path)
    keys = {c.token: record_key(c, teacher) for c in clusters}
    pending = [c for c in clusters if keys[c.token] not in journal.ok]
    log.info("%s: %d of %d tokens cached in %s, %d to generate", teacher.name, len(clusters) - len(pending),
             len(clusters), journal_path, len(pending))
    if limit is not None:
        pending = pending[:limit]
    if pending:
        teacher.prepare(clusters, texts or {})
    stats = {"cached": len(clusters) - len(pending), "generated": 0, "failed": 0, "teacher_calls": 0,
             "seconds": 0.0}
    bar = tqdm(total=len(pending), desc=f"keywords {teacher.name}", unit="token", disable=None)
    for start in range(0, len(pending), teacher.batch_size):
        todo = pending[start:start + teacher.batch_size]
        tries = {c.token: 0 for c in todo}
        errors: dict[str, tuple[str, Any]] = {}
        done: list[dict] = []
        t0 = time.perf_counter()
        base = max(journal.attempts.get(keys[c.token], 0) for c in todo)  # a re-run continues with new seeds
        for attempt in range(base, base + max_attempts):
            if not todo:
                break
            answers = teacher.ask(todo, attempt)
            if len(answers) != len(todo):
                raise TsrecError(f"teacher {teacher.name} returned {len(answers)} answers for {len(todo)} clusters")
            stats["teacher_calls"] += len(todo)
            retry = []
            for c, ans in zip(todo, answers):
                tries[c.token] += 1
                parsed, why = parse_answer(ans)
                if parsed is None:
                    errors[c.token] = (why, ans)
                    retry.append(c)
                else:
                    done.append({"key": keys[c.token], "token": c.token, "status": "ok", **parsed,
                                 "attempts": tries[c.token]})
            todo = retry
        dt = time.perf_counter() - t0
        failed = [{"key": keys[c.token], "token": c.token, "status": "failed", "attempts": tries[c.token],
                   "error": errors[c.token][0], "raw": str(errors[c.token][1])[:300]} for c in todo]
        for rec in done + failed:
            rec["seconds"] = round(dt / (len(done) + len(failed)), 3)
        journal.append(done + failed)
        for rec in failed:
            log.warning("%s: %s failed after %d attempts (%s): %.120r", teacher.name, rec["token"], rec["attempts"],
                        rec["error"], rec["raw"])
        stats["generated"] += len(done)
        stats["failed"] += len(failed)
        stats["seconds"] += dt
        bar.update(len(done) + len(failed))
    bar.close()
    records = {c.token: {"keywords": journal.ok[keys[c.token]]["keywords"],
                         "description": journal.ok[keys[c.token]]["description"]}
               for c in clusters if keys[c.token] in journal.ok}
    stats["missing"] = [c.token for c in clusters if c.token not in records]
    stats["teacher_seconds_total"] = round(sum(journal.ok[keys[c.token]].get("seconds", 0.0)
                                               for c in clusters if c.token in records), 1)
    stats["records"] = records
    return stats


# ---------------------------------------------------------------- teachers
def make_teacher(name: str, cfg: KeywordsConfig, backbone: Path, seed: int) -> Teacher:
    if name == "hf":
        from tsrec.lm.llm import load_backbone

        spec = backbone if cfg.hf.model == "backbone" else cfg.hf.model
        # a converted folder, or a .gguf file / package spec (slow); loaded only if something is left to do
        return HFTeacher(cfg.hf, lambda: load_backbone(spec), seed)
    if name == "openai":
        return OpenAITeacher(cfg.openai, seed)
    if name == "ctfidf":
        return CtfidfTeacher(cfg.ctfidf)
    raise ParamError(f"{name!r} is not a generating teacher", field="keywords.datasets")


def authors_file(dcfg: DataConfig, kcfg: KeywordsConfig, ds: str) -> Path:
    """The TS-Rec authors' keyword file of ``ds``, sha256-checked: from the data mirror, or (``data.source:
    download``) from the authors' repository at a pinned commit into ``data.download_cache``."""
    rel = kcfg.authors.file.format(ds=ds)
    if dcfg.source == "download":
        name = Path(rel).name
        url = AUTHORS_URL_PATTERN.format(commit=AUTHORS_COMMIT, name=name)
        if name not in AUTHORS_SHA256:
            raise TsrecError(f"no pinned checksum for the authors' keyword file of {ds!r} (the authors published "
                             f"{sorted(AUTHORS_SHA256)}); use another teacher in keywords.datasets.{ds}", file=url)
        return download_verified(url, Path(dcfg.download_cache) / "tsrec-authors" / AUTHORS_COMMIT / name,
                                 AUTHORS_SHA256[name], dcfg.timeout_s)
    path = dcfg.mirror_root / rel
    if not path.is_file():
        raise TsrecError("authors' keyword file not in the mirror (set data.mirror or $TSREC_MIRROR, or "
                         "data.source: download)", file=path)
    expected = mirror_sums(dcfg.mirror_root).get(rel)
    if expected is None:
        raise TsrecError("no checksum for this file in the mirror's SHA256SUMS; refusing it", file=path)
    verify(path, expected)
    return path


def import_authors(dcfg: DataConfig, kcfg: KeywordsConfig, ds: str, tokens: Sequence[str]) -> dict[str, dict]:
    """The TS-Rec authors' file (``authors_file``); its tokens must equal the index's."""
    path = authors_file(dcfg, kcfg, ds)
    records = load_cache(path)
    missing = sorted(set(tokens) - set(records), key=token_key)
    extra = sorted(set(records) - set(tokens), key=token_key)
    if missing or extra:
        raise TsrecError(f"tokens differ from the SID index in use: {len(missing)} missing {missing[:10]}, "
                         f"{len(extra)} extra {extra[:10]}", file=path)
    return records


# ---------------------------------------------------------------- quality: keyword-cluster coherence
def coherence(records: dict[str, dict], clusters: Sequence[Cluster], items, emb: np.ndarray,
              encode: Callable[[Sequence[str]], np.ndarray], draws: int = 10, seed: int = 42) -> dict[str, Any]:
    """Cosine of each token's keyword (and description) text embedding to its own cluster's centroid,
    vs same-size random item sets and vs the other clusters of its level; means over tokens."""
    row = {int(i): r for r, i in enumerate(items["item_id"])}
    unit = _unit(emb.astype(np.float32))
    toks = [c for c in clusters if c.token in records]
    cent = _unit(np.stack([unit[[row[i] for i in c.members]].mean(0) for c in toks]))
    rng = np.random.default_rng(seed)
    rand = np.stack([_unit(np.stack([unit[rng.choice(len(unit), len(c.members), replace=False)].mean(0)
                                     for _ in range(draws)])) for c in toks])  # [tokens, draws, d]
    levels = np.array([c.level for c in toks])
    out: dict[str, Any] = {"tokens": len(toks), "draws": draws}
    for field, fmt in (("keywords", lambda r: ", ".join(r["keywords"])), ("description", lambda r: r["description"])):
        e = _unit(np.asarray(encode([fmt(records[c.token]) for c in toks]), dtype=np.float32))
        own = (e * cent).sum(1)
        rnd = np.einsum("td,tkd->tk", e, rand).mean(1)
        sim = e @ cent.T
        same = levels[:, None] == levels[None, :]
        np.fill_diagonal(same, False)
        other = np.where(same, sim, 0).sum(1) / np.maximum(same.sum(1), 1)
        out[field] = {"own": round(float(own.mean()), 4), "random": round(float(rnd.mean()), 4),
                      "gap": round(float((own - rnd).mean()), 4), "other_clusters": round(float(other.mean()), 4),
                      "own_beats_random": round(float((own > rnd).mean()), 4)}
    return out


# ---------------------------------------------------------------- results table
def write_table(results_dir: Path) -> Path:
    """results/keywords/coherence.md from every results/keywords/<DS>.json."""
    rows = ["| dataset | teacher | tokens | failed | kw own | kw random | kw gap | desc own | desc random | desc gap |"
            " s/token |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in sorted(results_dir.glob("*.json")):
        if is_run_record(f):
            continue
        res = {"dataset": f.name.split(".")[0], **read_with_run(f)}
        for t, r in sorted(res.get("teachers", {}).items()):
            k, d = r["coherence"]["keywords"], r["coherence"]["description"]
            spt = r.get("seconds_per_token")
            rows.append(f"| {res['dataset']} | {t} | {r['tokens']} | {r.get('failed', 0)} | {k['own']:.3f} | "
                        f"{k['random']:.3f} | {k['gap']:.3f} | {d['own']:.3f} | {d['random']:.3f} | {d['gap']:.3f} | "
                        f"{'' if spt is None else f'{spt:.2f}'} |")
    path = results_dir / "coherence.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


# what one run did (cache hits, new generations, teacher time): results/keywords only, never report.json
RUN_HISTORY = ("failed_this_run", "generated_this_run", "cached", "teacher_seconds_total", "seconds_per_token")


def run_dataset(job: KeywordsJob, teachers: Sequence[str], limit: int | None = None,
                encode: Callable | None = None, command: str | None = None, optional: bool = False) -> dict[str, Any]:
    """Build (or continue) the caches of ``teachers`` for the job's dataset; write them, their coherence and the
    results table (unless ``limit``: a timing run writes nothing). Raises after writing the complete ones when a
    teacher leaves tokens without an answer."""
    cfg, ds = job.keywords, job.dataset
    items = load_items(Path(job.data.out) / ds)
    index = load_index(job.index_file)
    emb = item_embeddings(job.embed, ds, items)
    encode = encode or encoder(job.embed)
    clusters = build_clusters(index, items, emb, sample_size=cfg.sample_size, title_chars=cfg.title_chars,
                              desc_chars=cfg.desc_chars)
    texts = item_texts(items)
    res_file = results_file(cfg, ds, optional)
    results = read_with_run(res_file) if res_file.is_file() else {"dataset": ds, "teachers": {}}
    failures: dict[str, list[str]] = {}
    if limit is None:  # entries of teachers no longer configured for this output are dropped
        results["teachers"] = {t: r for t, r in results["teachers"].items() if t in teachers}
    for name in teachers:
        if name == "authors":
            records = import_authors(job.data, cfg, ds, [c.token for c in clusters])
            stats: dict[str, Any] = {"cached": 0, "generated": 0, "failed": 0, "missing": []}
        else:
            teacher = make_teacher(name, cfg, job.backbone, job.seed)
            stats = generate(teacher, clusters, Path(cfg.journal) / ds / f"{name}.jsonl",
                             max_attempts=cfg.max_attempts, texts=texts, limit=limit)
            records = stats.pop("records")
            done = stats["generated"] + stats["failed"]
            log.info("%s %s: %d generated, %d failed, %d cached, %.1f s (%.2f s/token this run)", ds, name,
                     stats["generated"], stats["failed"], stats["cached"], stats["seconds"],
                     stats["seconds"] / max(done, 1))
        if stats["missing"]:
            failures[name] = stats["missing"]
            continue
        payload = [{"token": c.token, **records[c.token]} for c in clusters]
        write_json(out_dir(cfg, ds, optional) / f"{name}.json", payload)
        coh = coherence(records, clusters, items, emb, encode, cfg.coherence_draws, job.seed)
        entry = {"tokens": len(payload), "failed_this_run": stats["failed"], "generated_this_run": stats["generated"],
                 "cached": stats["cached"], "coherence": coh, "command": command}
        if name != "authors":
            entry["teacher_seconds_total"] = stats["teacher_seconds_total"]
            entry["seconds_per_token"] = round(stats["teacher_seconds_total"] / max(len(payload), 1), 3)
            entry["settings"] = make_settings(name, cfg)
        results["teachers"][name] = entry
        log.info("%s %s coherence: keywords %s", ds, name, coh["keywords"])
    if limit is None:
        write_results(res_file, results)
        # the DVC output that train depends on: without the run's counters and timings (results file only)
        stable = {t: {k: v for k, v in r.items() if k not in RUN_HISTORY} for t, r in results["teachers"].items()}
        report = dict(sorted({**results, "teachers": stable}.items()))  # key order: not the results file's
        write_json(out_dir(cfg, ds, optional) / "report.json", report)
        write_table(res_file.parent)
    if failures and limit is None:
        summary = "; ".join(f"{t}: {len(m)} tokens ({', '.join(m[:8])}{' ...' if len(m) > 8 else ''})"
                            for t, m in failures.items())
        raise TsrecError(f"{ds}: incomplete keyword caches, no output written for them: {summary}. "
                         "Re-run to retry only these tokens (with new seeds).")
    return results


def write_results(res_file: Path, results: dict[str, Any]) -> None:
    """``results/keywords/<DS>.json`` (dvc metrics: counts, coherence, timings) + its run record."""
    teachers = results.get("teachers", {})
    numbers = {"teachers": {t: {k: v for k, v in r.items() if k not in RUN_KEYS} for t, r in teachers.items()}}
    record = {**{k: v for k, v in results.items() if k != "teachers"},
              "teachers": {t: {k: r[k] for k in RUN_KEYS if k in r} for t, r in teachers.items()}}
    write_metrics(res_file, numbers, record)


def make_settings(name: str, cfg: KeywordsConfig) -> dict[str, Any]:
    return {"prompt_version": PROMPT_VERSION, "sample_size": cfg.sample_size, "desc_chars": cfg.desc_chars,
            "max_attempts": cfg.max_attempts, **dataclasses.asdict(getattr(cfg, name))}


RUN_KEYS = ("command", "settings")  # per teacher: in the run record, not the dvc metrics file
