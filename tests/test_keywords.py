import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import yaml

from tsrec.data.datasets import load_index, load_items
from tsrec.core.errors import TsrecError
from tsrec.semantics.keyword_cache import cache_path, keywords_config, load_cache
from tsrec.semantics.teachers import (
    EXAMPLE_ANSWER,
    PREFILL,
    ContentRepetitionPenalty,
    CtfidfConfig,
    CtfidfTeacher,
    HFConfig,
    HFTeacher,
    OpenAIConfig,
    OpenAITeacher,
    Teacher,
    build_messages,
    parse_answer,
)
from tsrec.semantics.teaching import Journal, build_clusters, coherence, generate, import_authors, make_teacher, run_dataset
from tsrec.semantics.teaching import resolve_job
from tsrec.data.datasets import DataConfig
from tsrec.core.config import section


def fake_encode(texts):
    """Deterministic bag-of-words hashing 'embedding' (no model download, fast)."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for r, t in enumerate(texts):
        for w in t.lower().replace(",", " ").replace(".", " ").split():
            out[r, sum(map(ord, w)) % 64] += 1.0
    return out


@pytest.fixture()
def setup(tiny_dataset, tmp_path):
    items = load_items(tiny_dataset)
    index = load_index(tiny_dataset / "sid_index.json")
    emb = fake_encode([f"{t}. {d}" for t, d in zip(items["title"], items["description"])])
    clusters = build_clusters(index, items, emb, sample_size=3, title_chars=60, desc_chars=40)
    return items, index, emb, clusters


class CountingTeacher(Teacher):
    """Answers valid JSON; optionally junk for chosen tokens or an exception after N calls."""

    name = "fake"
    batch_size = 4

    def __init__(self, junk=(), crash_after=None, junk_attempts=99):
        self.calls, self.asked, self.junk, self.crash_after, self.junk_attempts = 0, [], set(junk), crash_after, junk_attempts

    def settings(self):
        return {"v": 1}

    def ask(self, clusters, attempt):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += len(clusters)
        self.asked += [c.token for c in clusters]
        return ["```junk```" if c.token in self.junk and attempt < self.junk_attempts else
                'Sure! {"keywords": ["%s stuff", "tools"], "description": "This product family comprises things '
                'for %s."} trailing' % (c.token, c.token) for c in clusters]


def test_clusters_are_level_token_members_not_prefix_conditioned(setup):
    items, index, emb, clusters = setup
    tokens = {c.token for c in clusters}
    assert tokens == {t for sid in index.values() for t in sid}
    for c in clusters:
        assert set(c.members) == {i for i, sid in index.items() if sid[c.level] == c.token}
        assert 1 <= len(c.sample) <= 3
    b = [c for c in clusters if c.level == 1][0]
    assert len({index[i][0] for i in b.members}) > 1  # spans several <a_*> prefixes


def test_sample_is_closest_to_centroid(setup):
    items, index, emb, clusters = setup
    c = max(clusters, key=lambda c: len(c.members))
    rows = {int(i): r for r, i in enumerate(items["item_id"])}
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    vec = u[[rows[i] for i in c.members]]
    cen = vec.mean(0) / np.linalg.norm(vec.mean(0))
    best = [c.members[k] for k in np.argsort(-(vec @ cen), kind="stable")[:3]]
    titles = dict(zip(items["item_id"], items["title"]))
    assert {titles[i][:60] for i in best} == {t for t, _ in c.sample}


def test_parse_answer_robust_and_strict():
    ok, _ = parse_answer('blah {"keywords": ["a b", "a b", " c "], "description": "one two three four five"} x')
    assert ok == {"keywords": ["a b", "c"], "description": "one two three four five"}
    cut, _ = parse_answer(PREFILL + 'pen", "ink"], "description": "This product family comprises pens and ink')
    assert cut["keywords"] == ["pen", "ink"]
    assert parse_answer("no json here")[0] is None
    assert parse_answer('{"keywords": [], "description": "one two three four five"}')[1] == "empty keyword list"
    assert parse_answer('{"keywords": ["..."], "description": "one two three four five"}')[0] is None
    assert parse_answer('{"keywords": ["x"], "description": "short"}')[0] is None
    assert parse_answer(None)[1] == "no answer"
    loop = "This family has a variety of products, including " + "a variety of products, including " * 6
    assert parse_answer('{"keywords": ["x"], "description": "%s"}' % loop)[1] == "description is a repetition loop"
    echo = '{"keywords": ["This product family comprises", "keywords"], "description": "one two three four five"}'
    assert parse_answer(echo)[1] == "empty keyword list"
    digits = '{"keywords": ["pen"], "description": "Pen 1.0mm, 8, 1, 1, 1, 1, 1, 1, 1"}'
    assert parse_answer(digits)[1] == "description is mostly numbers"


def test_generate_retries_junk_then_records_failure(setup, tmp_path):
    clusters = setup[3]
    bad = clusters[0].token
    t = CountingTeacher(junk={bad})
    stats = generate(t, clusters, tmp_path / "j.jsonl", max_attempts=3)
    assert stats["missing"] == [bad] and stats["failed"] == 1
    assert t.asked.count(bad) == 3 and bad not in stats["records"]
    lines = [json.loads(x) for x in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert [x["error"] for x in lines if x["status"] == "failed"] == ["no JSON object"]
    # a re-run retries only the failure, with attempt numbers continuing (new seeds): here it succeeds
    t2 = CountingTeacher(junk={bad}, junk_attempts=3)
    stats2 = generate(t2, clusters, tmp_path / "j.jsonl", max_attempts=3)
    assert t2.asked == [bad] and stats2["missing"] == [] and stats2["cached"] == len(clusters) - 1


def test_resume_after_kill_redoes_only_missing(setup, tmp_path):
    clusters = setup[3]
    j = tmp_path / "j.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate(CountingTeacher(crash_after=8), clusters, j, max_attempts=2)
    first = {json.loads(x)["token"] for x in j.read_text().splitlines()}
    assert len(first) == 8
    t = CountingTeacher()
    stats = generate(t, clusters, j, max_attempts=2)
    assert sorted(t.asked) == sorted(c.token for c in clusters if c.token not in first)
    assert t.calls == len(clusters) - 8 and stats["cached"] == 8 and not stats["missing"]
    # complete: nothing is asked again; a torn last line (kill mid-write) is ignored
    with open(j, "a") as fh:
        fh.write('{"key": "tor')
    t3 = CountingTeacher()
    assert generate(t3, clusters, j, max_attempts=2)["cached"] == len(clusters) and t3.calls == 0
    assert len(Journal(j).ok) == len(clusters)


def test_key_changes_with_teacher_settings(setup, tmp_path):
    clusters = setup[3][:3]
    generate(CountingTeacher(), clusters, tmp_path / "j.jsonl", max_attempts=1)
    t = CountingTeacher()
    t.settings = lambda: {"v": 2}
    generate(t, clusters, tmp_path / "j.jsonl", max_attempts=1)
    assert t.calls == 3


def test_ctfidf_is_deterministic_and_distinctive(setup):
    items, index, emb, clusters = setup
    texts = {int(i): f"{t}. {d}" for i, t, d in zip(items["item_id"], items["title"], items["description"])}
    outs = []
    for _ in range(2):
        t = CtfidfTeacher(CtfidfConfig(n_keywords=5, ngram_max=2, min_df=1, n_titles=2))
        t.prepare(clusters, texts)
        outs.append(t.ask(clusters, 0))
    assert outs[0] == outs[1]
    for c, ans in zip(clusters, outs[0]):
        parsed, why = parse_answer(ans)
        assert parsed, why
        member_text = " ".join(texts[i] for i in c.members).lower()
        assert all(w in member_text for k in parsed["keywords"] for w in k.split())
        assert parsed["description"].startswith("This product family comprises")


def test_coherence_own_beats_random_for_member_words(setup):
    items, index, emb, clusters = setup
    texts = {int(i): t for i, t in zip(items["item_id"], items["title"])}
    t = CtfidfTeacher(CtfidfConfig(n_keywords=5, ngram_max=1, min_df=1, n_titles=2))
    t.prepare(clusters, texts)
    recs = {c.token: parse_answer(a)[0] for c, a in zip(clusters, t.ask(clusters, 0))}
    coh = coherence(recs, clusters, items, emb, fake_encode, draws=5)
    assert coh["keywords"]["own"] > coh["keywords"]["random"]
    assert coh["keywords"]["gap"] == pytest.approx(coh["keywords"]["own"] - coh["keywords"]["random"], abs=2e-4)


def test_prompt_has_demonstration_and_no_token(setup):
    c = setup[3][0]
    msgs = build_messages(c, 6, 25, sample_size=2, desc_chars=0)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert json.loads(msgs[2]["content"]) == EXAMPLE_ANSWER
    assert all(f"- {t}" in msgs[3]["content"] for t, _ in c.sample[:2]) and c.token not in msgs[3]["content"]


def test_content_repetition_penalty_exempts_syntax_tokens():
    import torch

    exempt = torch.tensor([True, False, False, False])
    proc = ContentRepetitionPenalty(2.0, exempt, prompt_len=1)
    ids = torch.tensor([[2, 0, 1]])  # prompt token 2 is never penalised; 0 is syntax; 1 is answer text
    scores = torch.tensor([[4.0, 4.0, 4.0, -4.0]])
    assert proc(ids, scores.clone()).tolist() == [[4.0, 2.0, 4.0, -4.0]]
    assert ContentRepetitionPenalty(1.0, exempt, 1)(ids, scores.clone()).equal(scores)


def _tiny_hf(tiny_backbone, **kw):
    from tsrec.lm.llm import load_backbone

    cfg = HFConfig(model="tiny", batch_size=3, retry_temperature=0.9, n_keywords=3, desc_words=10, sample_size=2,
                   desc_chars=0, **kw)
    return HFTeacher(cfg, lambda: load_backbone(tiny_backbone), seed=1)


def test_hf_teacher_constrained_answers_follow_the_schema(setup, tiny_backbone):
    clusters = setup[3][:3]
    t = _tiny_hf(tiny_backbone, max_new_tokens=120, max_keyword_chars=6, max_desc_chars=24)
    assert t.model is None  # lazy: a fully cached run never loads the model
    a = t.ask(clusters, 0)
    assert t.tok.padding_side == "left"
    for text in a:  # a random model, yet every answer is a complete object within the schema's limits
        obj = json.loads(text, strict=False)  # the schema allows raw control characters inside strings
        assert list(obj) == ["keywords", "description"]
        assert 3 <= len(obj["keywords"]) <= 3 and all(2 <= len(k) <= 6 for k in obj["keywords"])
        assert 20 <= len(obj["description"]) <= 24
    assert t.ask(clusters, 0) == a  # greedy is reproducible
    assert t.ask(clusters[1:2], 0)[0] == a[1]  # single row equals the batched (left-padded) row
    # sampling path: still constrained (it may run out of tokens on a random model, so check the opening)
    assert all(re.match(r'\s?\{\s?"keywords"\s?:\s?\[\s?"', x) for x in t.ask(clusters, 1))


def test_hf_teacher_unconstrained_uses_prefill(setup, tiny_backbone):
    t = _tiny_hf(tiny_backbone, max_new_tokens=8, constrained=False, repetition_penalty=1.2)
    a = t.ask(setup[3][:3], 0)
    assert len(a) == 3 and all(x.startswith(PREFILL) for x in a)
    assert t.settings()["prefill"] == PREFILL and _tiny_hf(tiny_backbone).settings()["prefill"] == ""


# ---------------------------------------------------------------- real HTTP server for the openai backend
class ChatServer:
    """A real chat-completions server on 127.0.0.1 (http.server in a thread) with scripted behaviours."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                mode = outer.script.pop(0) if outer.script else "ok"
                if mode == "slow":
                    time.sleep(1.5)
                if mode == "500":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"boom")
                    return
                content = ('{"keywords": ["pens", "ink"], "description": "This product family comprises pens and '
                           'ink for writing."}' if mode in ("ok", "slow") else "I cannot answer that")
                payload = ({"id": "x", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
                    if mode != "garbled" else {"unexpected": True})
                data = json.dumps(payload).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def _openai(url, **kw):
    args = dict(base_url=url, model="m", api_key_env="TSREC_TEST_KEY", timeout_s=0.5, http_retries=2,
                backoff_s=0.01, retry_temperature=0.7, max_tokens=50, concurrency=1, n_keywords=3, desc_words=20)
    args.update(kw)
    return OpenAITeacher(OpenAIConfig(**args), seed=7)


def test_openai_backend_real_server_ok_slow_500_malformed(setup, tmp_path, monkeypatch, caplog):
    clusters = setup[3][:4]
    monkeypatch.setenv("TSREC_TEST_KEY", "sk-secret-123")
    # token 0: ok; token 1: slow (client timeout) then HTTP 500 then ok (HTTP-level retries);
    # token 2: junk content, token 3: garbled body (no choices): both retried by the runner, with sampling
    script = ["ok", "slow", "500", "ok", "junk", "ok", "garbled", "ok"]
    with ChatServer(script) as srv, caplog.at_level("DEBUG"):
        t = _openai(srv.url)
        stats = generate(t, clusters, tmp_path / "o.jsonl", max_attempts=2)
    assert stats["missing"] == [] and stats["generated"] == 4
    first = srv.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-secret-123"
    assert first["body"]["model"] == "m" and first["body"]["messages"][0]["role"] == "system"
    assert clusters[0].sample[0][0] in first["body"]["messages"][-1]["content"]
    assert len(srv.requests) == 8
    assert srv.requests[-1]["body"]["temperature"] == 0.7  # runner-level retry samples
    assert "sk-secret-123" not in caplog.text and "sk-secret-123" not in (tmp_path / "o.jsonl").read_text()
    assert "sk-secret-123" not in json.dumps(t.settings())


def test_openai_backend_gives_up_and_records_failure(setup, tmp_path):
    clusters = setup[3][:1]
    with ChatServer(["500"] * 20) as srv:
        stats = generate(_openai(srv.url, http_retries=1), clusters, tmp_path / "o.jsonl", max_attempts=2)
    assert stats["missing"] == [clusters[0].token] and len(srv.requests) == 4
    rec = json.loads((tmp_path / "o.jsonl").read_text())
    assert rec["status"] == "failed" and rec["error"] == "no answer"


def test_openai_backend_refuses_auth_error(setup, tmp_path):
    with ChatServer([]) as srv:
        t = _openai(srv.url)
        srv.httpd.RequestHandlerClass.do_POST = lambda self: (self.send_response(401), self.end_headers())
        with pytest.raises(TsrecError, match="HTTP 401"):
            t.ask(setup[3][:1], 0)


def test_openai_unreachable_server_bounded(setup):
    t = _openai("http://127.0.0.1:9/v1", http_retries=1)
    t0 = time.time()
    assert t.ask(setup[3][:1], 0) == [None]
    assert time.time() - t0 < 5


# ---------------------------------------------------------------- stage: authors import, outputs, params
def _params(tmp_path, tiny_dataset, mirror_root, **kw):
    items = load_items(tiny_dataset)
    emb = tmp_path / "art" / "tiny" / "embed" / "embeddings.npy"
    emb.parent.mkdir(parents=True, exist_ok=True)
    np.save(emb, fake_encode([f"{t}. {d}" for t, d in zip(items["title"], items["description"])]))
    p = {"seed": 1, "data": {"out": str(tiny_dataset.parent), "mirror": str(mirror_root), "datasets": ["tiny"]},
         "embed": {"out": str(tmp_path / "art")},
         "keywords": {"datasets": {"tiny": {"use": "ctfidf", "teachers": ["ctfidf"]}},
                      "out": str(tmp_path / "art"), "journal": str(tmp_path / "cache"),
                      "results": str(tmp_path / "res"), "sample_size": 3, "coherence_draws": 3,
                      "ctfidf": {"min_df": 1}, **kw}}
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(p))
    p["_path"] = str(f)
    return p


def test_stage_ctfidf_writes_authors_format(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("TSREC_MIRROR", raising=False)
    params = _params(tmp_path, tiny_dataset, tmp_path)
    res = run_dataset(resolve_job(params, "tiny"), ["ctfidf"], encode=fake_encode, command="tsrec keywords")
    path = cache_path(keywords_config(params), "tiny")
    assert path.name == "ctfidf.json"
    cache = load_cache(path)
    index = load_index(tiny_dataset / "sid_index.json")
    assert set(cache) == {t for sid in index.values() for t in sid}
    raw = json.loads(path.read_text())
    assert list(raw[0]) == ["token", "keywords", "description"] and raw[0]["token"] == "<a_0>"
    assert res["teachers"]["ctfidf"]["coherence"]["keywords"]["own"] > 0
    assert (tmp_path / "res" / "coherence.md").read_text().count("| tiny | ctfidf |") == 1


def test_stage_output_is_identical_when_the_journal_answers(tiny_dataset, tmp_path, monkeypatch):
    """A rerun served from the journal writes the same DVC output (train depends on it); only the results
    file tells the runs apart (generated vs cached)."""
    monkeypatch.delenv("TSREC_MIRROR", raising=False)
    params = _params(tmp_path, tiny_dataset, tmp_path)
    out = cache_path(keywords_config(params), "tiny").parent
    first = run_dataset(resolve_job(params, "tiny"), ["ctfidf"], encode=fake_encode, command="tsrec keywords")
    files = {f.name: f.read_bytes() for f in out.iterdir()}
    second = run_dataset(resolve_job(params, "tiny"), ["ctfidf"], encode=fake_encode, command="tsrec keywords")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == files
    tokens = first["teachers"]["ctfidf"]["tokens"]
    assert first["teachers"]["ctfidf"]["generated_this_run"] == second["teachers"]["ctfidf"]["cached"] == tokens
    assert "cached" not in json.loads((out / "report.json").read_text())["teachers"]["ctfidf"]


def _authors_mirror(tmp_path, tiny_dataset, drop=None, add=None):
    import hashlib

    index = load_index(tiny_dataset / "sid_index.json")
    toks = sorted({t for sid in index.values() for t in sid})
    recs = [{"token": t, "keywords": ["k"], "description": "d e f g h"} for t in toks if t != drop]
    if add:
        recs.append({"token": add, "keywords": ["k"], "description": "d e f g h"})
    root = tmp_path / "mirror"
    f = root / "tsrec-authors" / "semantics" / "tiny.description_keywords.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(recs))
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    (root / "SHA256SUMS").write_text(f"{digest}  tsrec-authors/semantics/tiny.description_keywords.json\n")
    return root, toks


def test_authors_import_validates_tokens_and_checksum(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("TSREC_MIRROR", raising=False)
    root, toks = _authors_mirror(tmp_path, tiny_dataset)
    params = _params(tmp_path, tiny_dataset, root)
    assert set(import_authors(section(params, "data", DataConfig), keywords_config(params), "tiny", toks)) == set(toks)
    root, toks = _authors_mirror(tmp_path, tiny_dataset, drop="<b_3>", add="<c_99>")
    with pytest.raises(TsrecError, match=r"1 missing \['<b_3>'\], 1 extra \['<c_99>'\]"):
        import_authors(section(params, "data", DataConfig), keywords_config(params), "tiny", toks)
    (root / "SHA256SUMS").write_text("0" * 64 + "  tsrec-authors/semantics/tiny.description_keywords.json\n")
    with pytest.raises(TsrecError, match="sha256 mismatch"):
        import_authors(section(params, "data", DataConfig), keywords_config(params), "tiny", toks)


def test_stage_refuses_incomplete_cache(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("TSREC_MIRROR", raising=False)
    params = _params(tmp_path, tiny_dataset, tmp_path)
    monkeypatch.setattr("tsrec.semantics.teaching.make_teacher", lambda name, *_: CountingTeacher(junk={"<a_1>"}))
    with pytest.raises(TsrecError, match=r"incomplete keyword caches.*1 tokens \(<a_1>\)"):
        run_dataset(resolve_job(params, "tiny"), ["ctfidf"], encode=fake_encode)
    assert not (tmp_path / "art" / "tiny" / "keywords" / "ctfidf.json").exists()


def test_params_validation(tiny_dataset, tmp_path):
    from tsrec.core.errors import ParamError

    params = _params(tmp_path, tiny_dataset, tmp_path, datasets={"tiny": {"use": "hf", "teachers": ["ctfidf"]}})
    with pytest.raises(ParamError, match="use='hf' must be one of"):
        cache_path(keywords_config(params), "tiny")
    params = _params(tmp_path, tiny_dataset, tmp_path, hf={"modle": "x"})
    with pytest.raises(ParamError, match="modle"):
        make_teacher("hf", keywords_config(params), tmp_path, 0)


def test_real_params_parse():
    from pathlib import Path

    from tsrec.core.config import load_params
    from tsrec.semantics.keyword_cache import keywords_config

    cfg = keywords_config(load_params(Path(__file__).resolve().parents[1] / "params.yaml"))
    for ds in ("Industrial_and_Scientific", "Office_Products"):
        assert cfg.choice(ds).use in cfg.choice(ds).teachers


def test_stage_hf_tiny_random_backbone_junk_is_failure_not_filled(tiny_dataset, tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.delenv("TSREC_MIRROR", raising=False)
    params = _params(tmp_path, tiny_dataset, tmp_path, max_attempts=2,
                     datasets={"tiny": {"use": "hf", "teachers": ["hf"]}},
                     hf={"model": str(tiny_backbone), "batch_size": 16, "max_new_tokens": 4, "sample_size": 2})
    with pytest.raises(TsrecError, match="incomplete keyword caches, no output written for them: hf: 24 tokens"):
        run_dataset(resolve_job(params, "tiny"), ["hf"], encode=fake_encode)
    lines = [json.loads(x) for x in (tmp_path / "cache" / "tiny" / "hf.jsonl").read_text().splitlines()]
    n_tokens = len({t for sid in load_index(tiny_dataset / "sid_index.json").values() for t in sid})
    assert len(lines) == n_tokens and all(x["status"] == "failed" and x["attempts"] == 2 for x in lines)
    assert not (tmp_path / "art" / "tiny" / "keywords" / "hf.json").exists()


# ---------------------------------------------------------------- interruptions and credentials
def test_journal_survives_torn_tails(tmp_path):
    path = tmp_path / "j.jsonl"
    good = [{"key": f"k{i}", "token": f"<a_{i}>", "status": "ok", "keywords": ["café"], "description": "d",
             "attempts": 1} for i in range(3)]
    line = (json.dumps(good[0], ensure_ascii=False) + "\n").encode()
    torn_utf8 = json.dumps(good[1], ensure_ascii=False).encode()
    torn_utf8 = torn_utf8[:torn_utf8.index("é".encode()) + 1]  # cut inside the 2-byte character
    path.write_bytes(line + torn_utf8)
    j = Journal(path)
    assert list(j.ok) == ["k0"]
    j.append([good[1]])
    assert list(Journal(path).ok) == ["k0", "k1"]
    with open(path, "ab") as fh:  # a torn ASCII tail: the next record must not run onto it
        fh.write(b'{"key": "k9", "sta')
    Journal(path).append([good[2]])
    assert list(Journal(path).ok) == ["k0", "k1", "k2"]
    assert path.read_bytes().endswith(b"\n") and b'"sta\n' in path.read_bytes()


class RedirectServer(ChatServer):
    """Answers every POST with a redirect to ``target`` (307 keeps the method and body, 302 does not)."""

    def __init__(self, target: str, code: int):
        super().__init__([])
        outer = self

        def do_POST(handler):
            outer.requests.append({"auth": handler.headers.get("Authorization")})
            handler.send_response(code)
            handler.send_header("Location", target)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        self.httpd.RequestHandlerClass.do_POST = do_POST


@pytest.mark.parametrize("code", [302, 307])
def test_openai_key_never_sent_across_redirects(setup, monkeypatch, code):
    monkeypatch.setenv("TSREC_TEST_KEY", "sk-secret-123")
    with ChatServer([]) as target, RedirectServer(target.url + "/chat/completions", code) as redirector:
        # urllib turns a 302 POST into a GET (with every header but the body's); record those too
        target.httpd.RequestHandlerClass.do_GET = lambda h: (
            target.requests.append({"auth": h.headers.get("Authorization")}), h.send_response(500), h.end_headers())
        t = _openai(redirector.url)
        with pytest.raises(TsrecError, match="redirected"):
            t.ask(setup[3][:1], 0)
    assert redirector.requests[0]["auth"] == "Bearer sk-secret-123"  # the configured server gets the key
    assert target.requests == []  # the redirect target gets nothing, key or not


def test_openai_plain_http_remote_warns(monkeypatch, caplog):
    monkeypatch.setenv("TSREC_TEST_KEY", "sk-secret-123")
    with caplog.at_level("WARNING"):
        for url in ("http://127.0.0.1:8000/v1", "http://localhost/v1", "http://[::1]:8/v1", "https://api.example.com/v1"):
            _openai(url)
        assert "unencrypted" not in caplog.text
        _openai("http://api.example.com/v1")
    assert "unencrypted" in caplog.text and "sk-secret-123" not in caplog.text
