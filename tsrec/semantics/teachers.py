"""Teacher backends that label a SID token's item cluster with keywords and a description.

One class per backend, one interface (``Teacher``): ``settings()`` (hashed into the cache key),
``prepare(clusters, texts)`` (optional global fit) and ``ask(clusters, attempt)`` returning, per
cluster, the raw answer text (LLM teachers), a ready dict (``ctfidf``) or None (no answer).
``parse_answer`` turns an answer into a validated ``{"keywords", "description"}`` or an error;
retries and failure bookkeeping live in ``tsrec.semantics.teaching.generate``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from tsrec.core.errors import TsrecError

log = logging.getLogger(__name__)

# Bump when the wording or the demonstration below changes: it is part of every cached record's key.
PROMPT_VERSION = "kw-v2"
SYSTEM = "You are a retail catalogue expert. You answer with one JSON object and nothing else."
USER = (
    "Products:\n{items}\n\n"
    "What do these products have in common? Answer with JSON only: {n_keywords} short keywords (1-3 words each) "
    "and a description of about {desc_words} words."
)
# One-shot demonstration (kw-v2): a tiny teacher copies its shape instead of parroting the instructions.
EXAMPLE_ITEMS = ("Stanley 33-425 25-Foot Tape Measure", "Komelon 16-Foot Self Lock Tape Measure",
                 "DeWalt 30 ft Tape Measure with Magnetic Hook", "Lufkin 12 ft Pocket Tape Measure")
EXAMPLE_ANSWER = {"keywords": ["tape measure", "measuring tape", "retractable blade", "feet and inches",
                               "locking tape", "hand tools"],
                  "description": "Retractable tape measures with metal blades marked in feet and inches, used to "
                                 "measure length in construction and home projects."}
PREFILL = '{"keywords": ["'  # assistant-turn prefill for unconstrained local generation
# ChatML, used when a tokenizer ships without a chat template (SmolLM2's own template is ChatML too)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A SID token's cluster: all items holding ``token`` at ``level``; ``sample`` is what the teacher sees."""

    token: str
    level: int
    members: tuple[int, ...]
    sample: tuple[tuple[str, str], ...]  # (title, short description) of representative members


def build_messages(cluster: Cluster, n_keywords: int, desc_words: int, sample_size: int | None = None,
                   desc_chars: int | None = None) -> list[dict[str, str]]:
    """Chat messages for one cluster; ``sample_size``/``desc_chars`` shorten the shown sample (CPU budgets)."""
    lines = [f"- {t}" + (f": {d[:desc_chars]}" if d and desc_chars != 0 else "")
             for t, d in cluster.sample[:sample_size]]
    ask = dict(n_keywords=n_keywords, desc_words=desc_words)
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": USER.format(items="\n".join(f"- {t}" for t in EXAMPLE_ITEMS), **ask)},
            {"role": "assistant", "content": json.dumps(EXAMPLE_ANSWER)},
            {"role": "user", "content": USER.format(items="\n".join(lines), **ask)}]


# ---------------------------------------------------------------- parsing (shared by every teacher)
_DECODER = json.JSONDecoder(strict=False)  # raw control characters inside strings: whitespace-normalised below
_CLOSERS = ("", '"}', "}", '"]}', "]}")  # repairs for an answer cut off by max_new_tokens / stop string


def _first_object(text: str) -> dict | None:
    for m in re.finditer(r"\{", text):
        for tail in _CLOSERS:
            try:
                obj, _ = _DECODER.raw_decode(text[m.start():] + tail)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


_ECHO = ("product family comprises", "keyword", "description")  # prompt words a tiny teacher parrots


def _repetitive(text: str, n: int = 3) -> bool:
    """Degenerate loops ("a variety of products, including a variety of products, ..."): few distinct n-grams."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(grams) >= 12 and len(set(grams)) < 0.6 * len(grams)


def _mostly_numbers(text: str) -> bool:
    words = text.split()
    return len(words) >= 6 and sum(any(ch.isalpha() for ch in w) for w in words) < 0.6 * len(words)


def parse_answer(answer: str | dict | None, min_desc_words: int = 5) -> tuple[dict | None, str]:
    """Validated ``{"keywords": [...], "description": str}`` from a teacher's answer, else (None, why)."""
    if answer is None:
        return None, "no answer"
    obj = answer if isinstance(answer, dict) else _first_object(answer)
    if obj is None:
        return None, "no JSON object"
    kws = obj.get("keywords")
    desc = obj.get("description")
    if not isinstance(kws, list):
        return None, "keywords is not a list"
    clean, seen = [], set()
    for k in kws:
        if not isinstance(k, str):
            continue
        k = " ".join(k.split()).strip(" .,;:-\"'")
        if (not k or len(k) > 60 or "..." in k or "<" in k or k.lower() in seen
                or any(e in k.lower() for e in _ECHO)):
            continue
        seen.add(k.lower())
        clean.append(k)
    if not clean:
        return None, "empty keyword list"
    if not isinstance(desc, str) or len(desc.split()) < min_desc_words:
        return None, f"description missing or shorter than {min_desc_words} words"
    if _repetitive(desc):
        return None, "description is a repetition loop"
    if _mostly_numbers(desc):
        return None, "description is mostly numbers"
    return {"keywords": clean, "description": " ".join(desc.split())}, ""


# ---------------------------------------------------------------- interface
class Teacher:
    name = "teacher"
    batch_size = 1

    def settings(self) -> dict[str, Any]:
        """Everything that changes the answers (never secrets); part of the cache key."""
        raise NotImplementedError

    def prepare(self, clusters: Sequence[Cluster], texts: dict[int, str]) -> None:
        """Optional fit on all clusters and item texts before asking."""

    def ask(self, clusters: Sequence[Cluster], attempt: int) -> list[str | dict | None]:
        raise NotImplementedError


# ---------------------------------------------------------------- hf: local causal LM via transformers
@dataclasses.dataclass
class HFConfig:
    model: str = "backbone"  # "backbone": the backbone stage's converted folder; or any backbone.model spec (tsrec.lm.convert)
    batch_size: int = 16
    max_new_tokens: int = 120
    temperature: float = 0.0  # first attempt; 0 = greedy
    retry_temperature: float = 0.8
    top_p: float = 0.95
    repetition_penalty: float = 1.15  # on answer-text tokens only; JSON syntax tokens are exempt
    constrained: bool = True  # JSON-schema constrained decoding (lm-format-enforcer); False: prefill + stop at "}"
    max_keyword_chars: int = 32  # schema limits (constrained only): bound loops inside strings and lists
    max_desc_chars: int = 180
    n_keywords: int = 6
    desc_words: int = 25
    sample_size: int = 4  # members shown (<= keywords.sample_size)
    desc_chars: int = 0    # 0: titles only


# lm-format-enforcer parser settings: compact JSON (no whitespace runs), keywords before description
ENFORCER = {"max_consecutive_whitespaces": 1, "force_json_field_order": True}


def answer_schema(c: HFConfig) -> dict[str, Any]:
    """The JSON schema a constrained answer must follow (fields in this order, no others)."""
    return {"type": "object", "additionalProperties": False, "required": ["keywords", "description"],
            "properties": {
                "keywords": {"type": "array", "minItems": min(3, c.n_keywords), "maxItems": c.n_keywords,
                             "items": {"type": "string", "minLength": 2, "maxLength": c.max_keyword_chars}},
                "description": {"type": "string", "minLength": 20, "maxLength": c.max_desc_chars}}}


def vocab_pieces(tok) -> list[str]:
    """Every vocabulary id decoded on its own, in one pass (shared by the two helpers below)."""
    return tok.batch_decode([[i] for i in range(len(tok))])


def enforcer_tokenizer_data(tok, pieces: Sequence[str]) -> Any:
    """lm-format-enforcer's per-tokenizer data (what its transformers adapter builds; that adapter
    imports a module transformers 5 removed, so the core API is used)."""
    from lmformatenforcer import TokenEnforcerTokenizerData

    zero = tok.encode("0", add_special_tokens=False)[-1]
    special = set(tok.all_special_ids)
    regular = []
    for i, piece in enumerate(pieces):
        if i in special:
            continue
        after_zero = tok.decode([zero, i])[1:]  # keeps a word-start token's leading space
        regular.append((i, after_zero, len(after_zero) > len(piece)))
    return TokenEnforcerTokenizerData(regular, lambda ids: tok.decode(ids).rstrip("\ufffd"), tok.eos_token_id,
                                      False, len(pieces))


def syntax_token_mask(pieces: Sequence[str], chars: str = '{}[]":, \n') -> Any:
    """Bool mask over the vocabulary: tokens made only of JSON syntax and whitespace."""
    import torch

    allowed = set(chars)
    return torch.tensor([bool(p) and set(p) <= allowed for p in pieces], dtype=torch.bool)


class ContentRepetitionPenalty:
    """transformers' repetition penalty (CTRL) over the generated tokens, except ``exempt`` ones: penalising
    the JSON syntax tokens themselves breaks the object (measured: 15/16 answers broke at 1.2)."""

    def __init__(self, penalty: float, exempt, prompt_len: int):
        self.penalty, self.exempt, self.prompt_len = penalty, exempt, prompt_len

    def __call__(self, input_ids, scores):
        import torch

        gen = input_ids[:, self.prompt_len:]
        if gen.shape[1] == 0 or self.penalty == 1.0:
            return scores
        seen = torch.gather(scores, 1, gen)
        hit = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, gen, torch.where(self.exempt[gen], seen, hit))


class HFTeacher(Teacher):
    """Any local causal LM folder (safetensors); batched left-padded generation, greedy then seeded sampling,
    constrained to the answer schema."""

    name = "hf"

    def __init__(self, cfg: HFConfig, loader: Callable[[], tuple[Any, Any]], seed: int):
        self.cfg, self.batch_size, self.seed = cfg, cfg.batch_size, seed
        self._loader, self.model, self.tok = loader, None, None

    def prepare(self, clusters: Sequence[Cluster], texts: dict[int, str]) -> None:
        """Load the model only when something is left to generate (a fully cached re-run skips it)."""
        if self.model is None:
            model, self.tok = self._loader()
            self.model = model.eval()
            self.tok.padding_side = "left"
            if self.tok.pad_token is None:
                self.tok.pad_token = self.tok.eos_token
            if not self.tok.chat_template:
                self.tok.chat_template = CHATML
            pieces = vocab_pieces(self.tok)
            self.exempt = syntax_token_mask(pieces)
            self.tok_data = enforcer_tokenizer_data(self.tok, pieces) if self.cfg.constrained else None

    def settings(self) -> dict[str, Any]:
        s = dataclasses.asdict(self.cfg)
        s.pop("batch_size")  # batching does not change greedy answers
        return {**s, "prefill": "" if self.cfg.constrained else PREFILL, "seed": self.seed,
                **({"enforcer": ENFORCER} if self.cfg.constrained else {})}

    def _constraint(self) -> dict[str, Any]:
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        parser = JsonSchemaParser(answer_schema(self.cfg))
        enforcer = TokenEnforcer(self.tok_data, parser)  # one per call: its prefix cache stays small
        for k, v in ENFORCER.items():  # TokenEnforcer replaces the parser's config: set these after it
            setattr(parser.config, k, v)
        return {"prefix_allowed_tokens_fn": lambda _, sent: enforcer.get_allowed_tokens(sent.tolist()).allowed_tokens}

    def ask(self, clusters: Sequence[Cluster], attempt: int) -> list[str | dict | None]:
        import torch
        from transformers import LogitsProcessorList

        self.prepare(clusters, {})
        c = self.cfg
        prefill = "" if c.constrained else PREFILL
        prompts = [self.tok.apply_chat_template(
            build_messages(cl, c.n_keywords, c.desc_words, c.sample_size, c.desc_chars),
            add_generation_prompt=True, tokenize=False) + prefill for cl in clusters]
        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        temp = c.temperature if attempt == 0 else c.retry_temperature
        kwargs: dict[str, Any] = dict(
            max_new_tokens=c.max_new_tokens, pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id,
            logits_processor=LogitsProcessorList([ContentRepetitionPenalty(
                c.repetition_penalty, self.exempt, enc["input_ids"].shape[1])]))
        kwargs.update(self._constraint() if c.constrained else dict(stop_strings=["}"], tokenizer=self.tok))
        if temp > 0:
            torch.manual_seed(self.seed + 1000 * attempt)
            kwargs.update(do_sample=True, temperature=temp, top_p=c.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:]
        return [prefill + t for t in self.tok.batch_decode(new, skip_special_tokens=True)]


# ---------------------------------------------------------------- openai: any chat-completions server
@dataclasses.dataclass
class OpenAIConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"
    api_key_env: str = "OPENAI_API_KEY"  # the variable's NAME; its value is never logged or stored
    timeout_s: float = 120.0
    http_retries: int = 4
    backoff_s: float = 2.0
    temperature: float = 0.0
    retry_temperature: float = 0.8
    max_tokens: int = 600
    concurrency: int = 4
    n_keywords: int = 20
    desc_words: int = 80
    sample_size: int = 8
    desc_chars: int = 160


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turn every redirect into an HTTPError (urllib would resend the Authorization header to any host)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _plain_http_remote(url: str) -> bool:
    import ipaddress
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    if u.scheme != "http":
        return False
    host = (u.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


class OpenAITeacher(Teacher):
    """OpenAI-compatible ``POST {base_url}/chat/completions``; API key from an env var, never logged."""

    name = "openai"

    def __init__(self, cfg: OpenAIConfig, seed: int):
        self.cfg, self.seed, self.batch_size = cfg, seed, cfg.concurrency
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._opener = urllib.request.build_opener(_NoRedirect)
        if _plain_http_remote(self.url) and self.cfg.api_key_env and os.environ.get(self.cfg.api_key_env):
            log.warning("keywords.openai.base_url %s is plain http:// to a non-local host: the API key from $%s "
                        "travels unencrypted (use https://)", cfg.base_url, cfg.api_key_env)

    def settings(self) -> dict[str, Any]:
        c = self.cfg
        return {"url": self.url, "model": c.model, "temperature": c.temperature,
                "retry_temperature": c.retry_temperature, "max_tokens": c.max_tokens, "n_keywords": c.n_keywords,
                "desc_words": c.desc_words, "sample_size": c.sample_size, "desc_chars": c.desc_chars,
                "seed": self.seed}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, payload: dict) -> str | None:
        """One chat completion with retries and exponential backoff; None when every try failed."""
        data = json.dumps(payload).encode()
        tries = self.cfg.http_retries + 1
        for i in range(tries):
            if i:
                time.sleep(self.cfg.backoff_s * 2 ** (i - 1))
            req = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            try:
                with self._opener.open(req, timeout=self.cfg.timeout_s) as resp:
                    body = resp.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403, 404):  # configuration problems: retrying cannot help
                    raise TsrecError(f"chat-completions server answered HTTP {exc.code}", file=self.url) from None
                if 300 <= exc.code < 400:  # never follow: the request carries the API key
                    raise TsrecError(f"chat-completions server redirected (HTTP {exc.code}) to "
                                     f"{exc.headers.get('Location')!r}; not followed, the API key is never sent "
                                     "across redirects (set keywords.openai.base_url to the final URL)",
                                     file=self.url) from None
                log.warning("HTTP %s from %s (try %d/%d)", exc.code, self.url, i + 1, tries)
                continue
            except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as exc:
                log.warning("%s: %s (try %d/%d)", self.url, getattr(exc, "reason", exc), i + 1, tries)
                continue
            try:
                return json.loads(body)["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                log.warning("malformed chat-completions reply from %s: %.80r", self.url, body)
                return body  # junk: the parser rejects it and the caller retries at its level
        return None

    def ask(self, clusters: Sequence[Cluster], attempt: int) -> list[str | dict | None]:
        c = self.cfg
        temp = c.temperature if attempt == 0 else c.retry_temperature
        payloads = [{"model": c.model, "temperature": temp, "max_tokens": c.max_tokens, "seed": self.seed + attempt,
                     "messages": build_messages(cl, c.n_keywords, c.desc_words, c.sample_size, c.desc_chars)}
                    for cl in clusters]
        with ThreadPoolExecutor(max_workers=max(1, self.batch_size)) as pool:
            return list(pool.map(self._post, payloads))


# ---------------------------------------------------------------- ctfidf: deterministic, offline
@dataclasses.dataclass
class CtfidfConfig:
    n_keywords: int = 20
    ngram_max: int = 2
    min_df: int = 2
    n_titles: int = 3


class CtfidfTeacher(Teacher):
    """Keywords by class-based TF-IDF of each cluster's text against all items (per SID level)."""

    name = "ctfidf"
    batch_size = 64
    EXTRA_STOP = {"product", "products", "use", "used", "using", "quality", "great", "new", "best", "high",
                  "make", "easy", "perfect", "ideal", "includes", "features", "made", "amazon", "brand"}

    def __init__(self, cfg: CtfidfConfig):
        self.cfg = cfg
        self.scores: dict[str, list[str]] = {}

    def settings(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.cfg), "algo": "ctfidf-v1"}

    def prepare(self, clusters: Sequence[Cluster], texts: dict[int, str]) -> None:
        import numpy as np
        from scipy import sparse
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

        ids = sorted(texts)
        row = {item: i for i, item in enumerate(ids)}
        vec = CountVectorizer(stop_words=sorted(ENGLISH_STOP_WORDS | self.EXTRA_STOP), lowercase=True,
                              ngram_range=(1, self.cfg.ngram_max), min_df=min(self.cfg.min_df, len(ids)),
                              token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
        x = vec.fit_transform([texts[i] for i in ids]).astype(np.float64)
        vocab = vec.get_feature_names_out()
        for level in sorted({c.level for c in clusters}):
            group = [c for c in clusters if c.level == level]
            m = sparse.lil_matrix((len(group), len(ids)))
            for k, c in enumerate(group):
                m[k, [row[i] for i in c.members]] = 1.0
            counts = sparse.csr_matrix(m) @ x  # class x term
            tf = sparse.diags(1.0 / np.maximum(np.asarray(counts.sum(1)).ravel(), 1.0)) @ counts
            avg_words = counts.sum() / len(group)
            idf = np.log1p(avg_words / np.maximum(np.asarray(counts.sum(0)).ravel(), 1.0))
            score = (tf @ sparse.diags(idf)).toarray()
            for k, c in enumerate(group):
                order = np.lexsort((vocab, -score[k]))  # ties broken alphabetically: deterministic
                self.scores[c.token] = [vocab[j] for j in order[: self.cfg.n_keywords * 5] if score[k, j] > 0]

    def _keywords(self, token: str) -> list[str]:
        chosen: list[str] = []
        covered: set[str] = set()
        for term in self.scores.get(token, []):
            words = set(term.split())
            if words <= covered:  # nothing new (e.g. "ink" after "ink cartridges")
                continue
            chosen.append(term)
            covered |= words
            if len(chosen) == self.cfg.n_keywords:
                break
        return chosen

    def ask(self, clusters: Sequence[Cluster], attempt: int) -> list[str | dict | None]:
        out: list[str | dict | None] = []
        for c in clusters:
            kws = self._keywords(c.token)
            if not kws:
                out.append(None)
                continue
            titles = ["; ".join([" ".join(t.split()[:10]) for t, _ in c.sample[: self.cfg.n_titles]])]
            head = ", ".join(kws[:3])
            rest = ", ".join(kws[3:10])
            desc = (f"This product family comprises {len(c.members)} items centred on {head}, for example: "
                    f"{titles[0]}." + (f" Shared features include {rest}." if rest else ""))
            out.append({"keywords": kws, "description": desc})
        return out
