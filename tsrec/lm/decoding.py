"""Constrained beam search over semantic IDs (REFERENCE.md section 5), batched, with the KV cache.

``SidTrie`` is the prefix trie over the SIDs of the index in use, compiled to tensors: at depth ``d``,
``child_tok[d][node]`` lists the token ids that extend the prefix ``node`` (padded with -1) and
``child_node[d][node]`` the nodes they lead to. After a full SID only its fixed end is allowed: the
tokens of ``suffix`` (the training responses' text before EOS, e.g. the authors' "\n"), then EOS.

``beam_search`` reproduces HF ``generate(num_beams=B, num_return_sequences=B, length_penalty=0.0,
do_sample=False, max_new_tokens=depth + 1, prefix_allowed_tokens_fn=trie.allowed)`` (``reference_beam_search``):
every step scores ``log_softmax`` over the FULL vocabulary, then masks to the allowed tokens, and a beam's
score is the sum of its token log-probs (suffix and EOS included). With no EOS before a full SID and a fixed SID
length, HF's early stopping never triggers before the last step, so the search is plain top-B beam search.
What it does differently, for speed only:
  * the prompt is prefilled ONCE per prompt (HF prefills B identical copies), and its KV cache is then
    expanded to the B beams;
  * the first step reads the prefill's logits (one row per prompt) instead of B rows;
  * the trie walk is a tensor gather instead of a Python call per beam and step.

Items sharing one SID (collisions): a SID stands for all its items. The search ranks distinct SIDs;
evaluation compares the generated SID with the target's SID (as the reference implementations do), so an
item whose SID collides with the target's counts as a hit. ``SidTrie.items[sid_id]`` lists the items.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, DynamicCache

from tsrec.core.errors import TsrecError

log = logging.getLogger(__name__)


class SidTrie:
    """Prefix trie over fixed-length SIDs (token id tuples), compiled to per-depth lookup tables.

    ``variable=True``: sequences of any length (item titles, ``from_texts``); a sequence may be a prefix of
    another. ``depth`` is then the longest, ``allowed`` offers both the continuations and the fixed end, and
    only ``reference_beam_search`` (HF ``generate``) decodes it.
    """

    def __init__(self, sids: Sequence[Sequence[int]], eos_id: int, *, names: Sequence[str] | None = None,
                 items: Sequence[Sequence[int]] | None = None, suffix: Sequence[int] = (), variable: bool = False):
        if not sids:
            raise TsrecError("cannot build a SID trie from an empty index")
        depths = {len(s) for s in sids}
        if min(depths) < 1:
            raise TsrecError("empty token sequence given to SidTrie")
        if len(depths) != 1 and not variable:
            raise TsrecError(f"SIDs must all have the same length, got lengths {sorted(depths)}")
        self.variable = bool(variable)
        self.depth = max(depths)
        self.eos_id = int(eos_id)
        self.end = (*map(int, suffix), self.eos_id)  # the forced tokens after a full SID
        names = list(names) if names is not None else ["".join(map(str, s)) for s in sids]
        items = [list(i) for i in items] if items is not None else [[k] for k in range(len(sids))]
        # leaves (SID ids) in sorted token order, so children appear in token-id order at every node
        order = sorted(range(len(sids)), key=lambda k: tuple(int(t) for t in sids[k]))
        self.sids = [tuple(int(t) for t in sids[k]) for k in order]
        self.names = [names[k] for k in order]
        self.items = [items[k] for k in order]
        if len(set(self.sids)) != len(self.sids):
            raise TsrecError("duplicate SIDs given to SidTrie; group colliding items first (SidTrie.from_index)")
        self._leaf = {s: k for k, s in enumerate(self.sids)}  # full sequence -> leaf id (sorted order)
        if set(self.end) & {t for s in self.sids for t in s}:
            raise TsrecError("EOS (or a suffix token) is also a SID token id")
        # node ids per depth: depth d nodes are the distinct length-d prefixes; leaves (depth D) are SID ids
        self._node_of: list[dict[tuple[int, ...], int]] = [{(): 0}]
        for d in range(1, self.depth + 1):
            prefixes = sorted({s[:d] for s in self.sids if len(s) >= d})
            self._node_of.append({p: i for i, p in enumerate(prefixes)})
        self.child_tok: list[torch.Tensor] = []
        self.child_node: list[torch.Tensor] = []
        for d in range(self.depth):
            children: list[list[tuple[int, int]]] = [[] for _ in self._node_of[d]]
            for prefix, child in self._node_of[d + 1].items():
                children[self._node_of[d][prefix[:-1]]].append((prefix[-1], child))
            width = max(max(len(c) for c in children), 1)
            tok = torch.full((len(children), width), -1, dtype=torch.long)
            node = torch.zeros((len(children), width), dtype=torch.long)
            for i, c in enumerate(children):
                c.sort()
                tok[i, :len(c)] = torch.tensor([t for t, _ in c])
                node[i, :len(c)] = torch.tensor([n for _, n in c])
            self.child_tok.append(tok)
            self.child_node.append(node)

    @classmethod
    def from_index(cls, index: Mapping[int, Sequence[str]], tokenizer, suffix: str = "") -> "SidTrie":
        """Trie over an item -> SID-token index; colliding items share one SID (one leaf). ``suffix``: the
        text training put between a SID and EOS (``tasks.prompts.eos_suffix``), tokenized as training did."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for item, toks in sorted(index.items()):
            groups.setdefault(tuple(toks), []).append(int(item))
        vocab = tokenizer.get_vocab()
        missing = sorted({t for toks in groups for t in toks if t not in vocab})
        if missing:
            raise TsrecError(f"{len(missing)} SID tokens are not in the tokenizer vocabulary, e.g. {missing[:5]}; "
                             "was the model trained with this index?")
        if tokenizer.eos_token_id is None:
            raise TsrecError("tokenizer has no EOS token")
        sids = [[vocab[t] for t in toks] for toks in groups]
        suffix_ids: list[int] = []
        if suffix:  # training tokenized "<a_..><b_..><c_..>" + suffix in one piece
            first = next(iter(groups))
            joint = tokenizer("".join(first) + suffix, add_special_tokens=False)["input_ids"]
            if joint[:len(first)] != sids[0]:
                raise TsrecError(f"suffix {suffix!r} merges with the SID tokens when tokenized")
            suffix_ids = joint[len(first):]
        trie = cls(sids, tokenizer.eos_token_id, names=["".join(t) for t in groups], items=list(groups.values()),
                   suffix=suffix_ids)
        n_shared = sum(len(v) > 1 for v in groups.values())
        log.info("SID trie: %d items, %d distinct SIDs (%d shared by several items), depth %d",
                 len(index), len(groups), n_shared, trie.depth)
        return trie

    @classmethod
    def from_texts(cls, texts: Mapping[int, str], tokenizer) -> "SidTrie":
        """Variable-length trie over item texts (e.g. the training response of each item's title), each
        tokenized on its own without special tokens as ``tsrec.model.tasks.encode_pair`` tokenizes a response; EOS
        closes it. Items whose texts tokenize alike share one leaf (``items``)."""
        if tokenizer.eos_token_id is None:
            raise TsrecError("tokenizer has no EOS token")
        groups: dict[tuple[int, ...], list[int]] = {}
        for item, text in sorted(texts.items()):
            ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
            groups.setdefault(ids, []).append(int(item))
        trie = cls(list(groups), tokenizer.eos_token_id, names=[str(v[0]) for v in groups.values()],
                   items=list(groups.values()), variable=True)
        log.info("text trie: %d items, %d distinct token sequences, longest %d tokens", len(texts), len(trie),
                 trie.depth)
        return trie

    def __len__(self) -> int:
        return len(self.sids)

    def sid_id(self, tokens: Sequence[int]) -> int | None:
        """Leaf id of a full SID (token ids), or None if it is not in the index."""
        return self._leaf.get(tuple(int(t) for t in tokens))

    def parse(self, generated: Sequence[int]) -> int | None:
        """Leaf id of a generated sequence (a full sequence followed by the fixed end), or None."""
        gen = tuple(int(t) for t in generated)
        for n in range(1, min(len(gen), self.depth) + 1):
            if gen[n:n + len(self.end)] == self.end and gen[:n] in self._leaf:
                return self._leaf[gen[:n]]
        return None

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens allowed after ``prefix`` (generated ids so far): SID continuations, then the fixed end."""
        prefix = tuple(int(t) for t in prefix)
        d = len(prefix)
        out: list[int] = []
        for done in range(min(len(self.end), d + 1)):  # a full sequence, then ``done`` tokens of the end
            if prefix[:d - done] in self._leaf and prefix[d - done:] == self.end[:done]:
                out.append(self.end[done])
        if d < self.depth and prefix in self._node_of[d]:
            row = self.child_tok[d][self._node_of[d][prefix]]
            out = row[row >= 0].tolist() + out
        return out


@dataclass
class BeamResult:
    sid_ids: torch.Tensor  # [n, B] long: leaf ids of the trie, best first; -1 where fewer than B SIDs exist
    scores: torch.Tensor   # [n, B] float: sum of token log-probs (EOS included); -inf where sid_id == -1


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """HF's position ids for left-padded prompts: cumsum of the mask - 1, pads at 0."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def _last_logits(model, input_ids, attention_mask, position_ids, cache, **kwargs) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True, logits_to_keep=1, **kwargs)
    return out.logits[:, -1, :].float()


# ---------------------------------------------------------------- shared-prefix attention
SHARED_PREFIX_ATTN = "tsrec_shared_prefix"


@dataclass
class SharedPrefix:
    """The prompts' KV cache, kept ONCE per prompt while its beams decode (no B-fold copy of the prompt)."""
    keys: list[torch.Tensor]    # per layer [n, kv_heads, L, head_dim]
    values: list[torch.Tensor]
    mask: torch.Tensor          # [n, L] bool, False on left padding


def shared_prefix_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                            scaling: float | None = None, shared_prefix: SharedPrefix | None = None, **kwargs):
    """K beams per prompt: attend to the prompt's shared KV + the beam's own KV (causal among its tokens).

    ``query`` [n*K, H, q, d] holds the beam's last q tokens (q = 1 in decoding; the whole completion when
    ``tsrec.model.grpo`` scores it); ``key``/``value`` [n*K, kv_heads, t, d] hold only the t >= q tokens generated so
    far (a separate small cache). Same maths as SDPA over the concatenated keys, without materialising them.
    """
    if shared_prefix is None:
        raise RuntimeError("shared-prefix attention needs shared_prefix=")
    pk, pv = shared_prefix.keys[module.layer_idx], shared_prefix.values[module.layer_idx]
    n, hkv, L, d = pk.shape
    N, H, q_len = query.shape[:3]
    K, g, t = N // n, H // hkv, key.shape[2]
    scaling = scaling if scaling is not None else d ** -0.5
    q = query.reshape(n, K, hkv, g * q_len, d).transpose(1, 2)           # [n, hkv, K, g*q, d]
    s_prompt = torch.matmul(q.reshape(n, hkv, K * g * q_len, d), pk.transpose(-1, -2)) * scaling
    s_prompt = s_prompt.masked_fill(~shared_prefix.mask[:, None, None, :], float("-inf"))
    kb = key.reshape(n, K, hkv, t, d).transpose(1, 2)                     # [n, hkv, K, t, d]
    vb = value.reshape(n, K, hkv, t, d).transpose(1, 2)
    s_beam = (torch.matmul(q, kb.transpose(-1, -2)) * scaling).view(n, hkv, K, g, q_len, t)
    future = torch.ones(q_len, t, dtype=torch.bool, device=query.device).triu(t - q_len + 1)
    s_beam = s_beam.masked_fill(future, float("-inf")).reshape(n, hkv, K * g * q_len, t)
    probs = torch.softmax(torch.cat([s_prompt, s_beam], dim=-1), dim=-1)
    out = torch.matmul(probs[..., :L], pv).reshape(n, hkv, K, g * q_len, d)
    out = out + torch.matmul(probs[..., L:].reshape(n, hkv, K, g * q_len, t), vb)
    out = out.view(n, hkv, K, g, q_len, d).permute(0, 2, 4, 1, 3, 5)     # [n, K, q, hkv, g, d]
    return out.reshape(N, q_len, H, d), None                             # as SDPA returns


AttentionInterface.register(SHARED_PREFIX_ATTN, shared_prefix_attention)


@contextlib.contextmanager
def attention_impl(model, name: str):
    """Temporarily switch the model's attention implementation (the mask is then built by us, not HF)."""
    config = model.config
    old = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = old


def supports_shared_prefix(model) -> bool:
    attn = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")]
    return bool(attn) and getattr(model.config, "sliding_window", None) is None


@torch.inference_mode()
def beam_search(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, trie: SidTrie,
                num_beams: int = 20, *, shared_prefix: bool | None = None) -> BeamResult:
    """Top-``num_beams`` distinct SIDs per (left-padded) prompt, scored like HF beam search (see module doc).

    ``shared_prefix`` (default: when the model supports it) keeps one copy of each prompt's KV cache for
    all its beams; False copies the cache B times, as HF does (same results, slower).
    """
    if num_beams < 1:
        raise ValueError("num_beams must be >= 1")
    if trie.variable:
        raise ValueError("beam_search decodes fixed-length SIDs; a variable-length trie: reference_beam_search")
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError("input_ids and attention_mask must both be [batch, length]")
    if attention_mask.shape[1] and not bool(attention_mask[:, -1].all()):
        raise ValueError("prompts must be LEFT-padded (last column of the attention mask all ones)")
    if shared_prefix is None:
        shared_prefix = supports_shared_prefix(model)
    n, B, dev = input_ids.shape[0], num_beams, input_ids.device
    cache = DynamicCache(config=model.config)
    logits = _last_logits(model, input_ids, attention_mask, positions_from_mask(attention_mask), cache)
    next_pos = attention_mask.long().sum(-1)  # [n]
    mask, extra = attention_mask, {}
    if shared_prefix:
        extra["shared_prefix"] = SharedPrefix([layer.keys for layer in cache.layers],
                                              [layer.values for layer in cache.layers], attention_mask.bool())
        cache, mask = DynamicCache(config=model.config), None  # from now on: only the generated tokens
    node = torch.zeros((n, 1), dtype=torch.long, device=dev)    # current trie node per beam
    score = torch.zeros((n, 1), dtype=torch.float32, device=dev)
    rows = torch.arange(n, device=dev)[:, None]
    with attention_impl(model, SHARED_PREFIX_ATTN) if shared_prefix else contextlib.nullcontext():
        for d in range(trie.depth + len(trie.end)):
            k = node.shape[1]
            logp = torch.log_softmax(logits, dim=-1).view(n, k, -1)  # full-vocabulary normalisation, as HF
            if d >= trie.depth:  # after a full SID only its fixed end (suffix, then EOS) is allowed
                forced = trie.end[d - trie.depth]
                score = score + logp[..., forced]
                if d == trie.depth + len(trie.end) - 1:  # EOS: the beams are complete
                    final, order = score.sort(dim=1, descending=True, stable=True)
                    sid_ids = node.gather(1, order).masked_fill(~torch.isfinite(final), -1)
                    pad = B - k  # fewer live beams than B (tiny tries): pad to a fixed width
                    return BeamResult(sid_ids=torch.nn.functional.pad(sid_ids, (0, pad), value=-1),
                                      scores=torch.nn.functional.pad(final, (0, pad), value=float("-inf")))
                # every beam takes the same forced token: no reordering
                if mask is not None:
                    mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                pos = (next_pos[:, None] + d).expand(-1, k).reshape(-1, 1)
                new_tok = torch.full((n * k, 1), forced, dtype=torch.long, device=dev)
                logits = _last_logits(model, new_tok, mask, pos, cache, **extra)
                continue
            tok = trie.child_tok[d].to(dev)[node]                      # [n, k, C]
            cand = score[..., None] + logp.gather(-1, tok.clamp(min=0))
            cand = cand.masked_fill(tok < 0, float("-inf")).view(n, -1)
            score, flat = cand.topk(min(B, cand.shape[1]), dim=1)      # HF keeps the top B running beams
            width = tok.shape[-1]
            src, slot = flat // width, flat % width                    # parent beam, child slot
            # dead beams (fewer than B valid prefixes) carry -inf and a harmless dummy token
            new_tok = tok.view(n, -1).gather(1, flat).clamp(min=0)
            node = trie.child_node[d].to(dev)[node.gather(1, src), slot]
            parent = (rows * k + src).view(-1)                          # flat row in the current cache
            if cache.get_seq_length() > 0:
                cache.reorder_cache(parent)                             # also expands 1 -> B rows after prefill
            if mask is not None:
                mask = torch.cat([mask.index_select(0, parent), mask.new_ones((parent.numel(), 1))], dim=1)
            pos = (next_pos[:, None] + d).expand(-1, score.shape[1]).reshape(-1, 1)
            logits = _last_logits(model, new_tok.view(-1, 1), mask, pos, cache, **extra)
    raise AssertionError("unreachable")


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> a left-padded batch (input_ids, attention_mask)."""
    width = max(len(e) for e in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, e in enumerate(seqs):
        if not e:
            raise ValueError(f"prompt {i} is empty")
        ids[i, width - len(e):] = torch.tensor(list(e))
        mask[i, width - len(e):] = 1
    return ids.to(device), mask.to(device)


@contextlib.contextmanager
def library_generation_defaults(model):
    """Run HF ``generate`` with the library's defaults instead of the model's ``generation_config``.

    ``generate`` fills every option its caller leaves unset from ``model.generation_config``, i.e. from a
    checkpoint's generation_config.json (do_sample, temperature, top_k, top_p, repetition_penalty, ...).
    That silently turned MiniOneRec's constrained beam search into beam sampling for users whose
    checkpoint set do_sample; inside this block the model's file has no say. (``beam_search`` never
    calls ``generate`` and reads no generation config.)
    """
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


@torch.inference_mode()
def reference_beam_search(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, trie: SidTrie,
                          num_beams: int = 20, *, logits_processor: Sequence | None = None,
                          early_stopping: bool | None = None) -> BeamResult:
    """The reference: HF ``generate`` beam search with a Python ``prefix_allowed_tokens_fn`` over ``trie``.

    Settings for exact beam semantics: ``length_penalty=0.0`` (score = sum of log-probs), ``do_sample=False``,
    ``max_new_tokens=depth + len(trie.end)`` (SID + suffix + EOS), ``early_stopping=True`` (all beams finish together at the EOS
    step, so this flag cannot change the result). HF pads the output with -1e9-scored placeholder beams when
    fewer than B valid SIDs exist; those are dropped here (sid_id -1, score -inf).

    A variable-length trie (titles) decodes here too: ``max_new_tokens`` = the longest sequence + its end,
    ``early_stopping=False`` by default (HF's default: with length_penalty 0 a running beam only loses score,
    so the search is exact), and ``logits_processor`` (e.g. D3's assistant) runs after the trie mask, on
    the log-probs.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    prompt_len = input_ids.shape[1]

    def allowed(_batch_id: int, sent: torch.Tensor) -> list[int]:
        # a variable-length trie: beams that already ended are still shown to the processors; EOS keeps
        # them valid (HF scores them out; ``parse`` checks every returned sequence)
        return trie.allowed(sent[prompt_len:].tolist()) or ([trie.eos_id] if trie.variable else [])

    end = len(trie.end)
    if early_stopping is None:
        early_stopping = not trie.variable
    config = GenerationConfig(num_beams=num_beams, num_return_sequences=num_beams, length_penalty=0.0,
                              do_sample=False, early_stopping=early_stopping, max_new_tokens=trie.depth + end,
                              eos_token_id=trie.eos_id, pad_token_id=trie.eos_id, output_scores=True,
                              return_dict_in_generate=True)
    with library_generation_defaults(model):
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                             prefix_allowed_tokens_fn=allowed, **({"logits_processor": LogitsProcessorList(
                                 logits_processor)} if logits_processor else {}))
    n = input_ids.shape[0]
    gen = out.sequences[:, prompt_len:].tolist()
    scores = out.sequences_scores.float().view(n, num_beams).clone()
    sid_ids = torch.full((n, num_beams), -1, dtype=torch.long)
    for r, seq in enumerate(gen):
        sid = trie.parse(seq)
        if sid is None or scores.view(-1)[r] < -1e8:
            scores.view(-1)[r] = float("-inf")
        else:
            sid_ids.view(-1)[r] = sid
    return BeamResult(sid_ids=sid_ids, scores=scores)


def shard_batches(lengths: Sequence[int], batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The prompt positions of each length-sorted batch that process ``rank`` of ``world`` searches: the batches
    of one process, dealt round-robin. A batch is the same whatever ``world``, so its bits are too."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    return batches[rank::world]


def search_batches(model, prompts: Sequence[Sequence[int]], trie: SidTrie, *, pad_id: int, num_beams: int = 20,
                   batch_size: int = 8, progress: Callable[[int], None] | None = None,
                   shard: tuple[int, int] = (0, 1)) -> BeamResult:
    """``beam_search`` over many tokenized prompts, in length-sorted left-padded batches; results in prompt order.
    ``shard = (rank, world)``: only this process's batches (``shard_batches``); the other rows stay -1 / -inf."""
    dev = next(model.parameters()).device
    sid_ids = torch.full((len(prompts), num_beams), -1, dtype=torch.long)
    scores = torch.full((len(prompts), num_beams), float("-inf"))
    for idx in shard_batches([len(p) for p in prompts], batch_size, *shard):
        ids, mask = left_pad([prompts[i] for i in idx], pad_id, device=dev)
        res = beam_search(model, ids, mask, trie, num_beams)
        sid_ids[idx] = res.sid_ids.cpu()
        scores[idx] = res.scores.cpu()
        if progress is not None:
            progress(len(idx))
    return BeamResult(sid_ids=sid_ids, scores=scores)


# ---------------------------------------------------------------- encoder-decoder models (TIGER)
@torch.inference_mode()
def seq2seq_beam_search(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, trie: SidTrie,
                        num_beams: int = 20, *, decoder_start_token_id: int) -> BeamResult:
    """``beam_search`` for an encoder-decoder model (T5, as in TIGER): top-``num_beams`` distinct SIDs per row.

    Same search and scores as HF ``generate(num_beams=B, num_return_sequences=B, length_penalty=0.0,
    do_sample=False, max_new_tokens=depth + 1, prefix_allowed_tokens_fn=trie.allowed)``: full-vocabulary
    ``log_softmax`` at every step, masked to the trie's tokens, beam score = sum of token log-probs (EOS
    included), top B running beams. The encoder runs ONCE per row (padding side does not matter: the
    attention mask covers it); the decoder keeps its cache (self-attention and the cross-attention keys and
    values, computed once per row at the first step), reordered to the surviving beams at every step.
    """
    if num_beams < 1:
        raise ValueError("num_beams must be >= 1")
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError("input_ids and attention_mask must both be [batch, length]")
    from transformers.modeling_outputs import BaseModelOutput

    if len(trie.end) != 1:
        raise ValueError("seq2seq_beam_search supports no suffix between the SID and EOS")
    n, B, dev = input_ids.shape[0], num_beams, input_ids.device
    enc = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [n, L, d]
    last = torch.full((n, 1), int(decoder_start_token_id), dtype=torch.long, device=dev)  # newest token per beam
    node = torch.zeros((n, 1), dtype=torch.long, device=dev)
    score = torch.zeros((n, 1), dtype=torch.float32, device=dev)
    rows = torch.arange(n, device=dev)[:, None]
    cache, enc_k, mask_k = None, enc, attention_mask
    for d in range(trie.depth + 1):
        k = node.shape[1]
        if enc_k.shape[0] != n * k:  # beams per row changed (1 -> B after the first step)
            enc_k, mask_k = enc.repeat_interleave(k, 0), attention_mask.repeat_interleave(k, 0)
        out = model(encoder_outputs=BaseModelOutput(last_hidden_state=enc_k), attention_mask=mask_k,
                    decoder_input_ids=last.view(n * k, 1), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).view(n, k, -1)
        if d == trie.depth:  # only EOS after a full SID
            final = score + logp[..., trie.eos_id]
            final, order = final.sort(dim=1, descending=True, stable=True)
            sid_ids = node.gather(1, order).masked_fill(~torch.isfinite(final), -1)
            pad = B - k
            return BeamResult(sid_ids=torch.nn.functional.pad(sid_ids, (0, pad), value=-1),
                              scores=torch.nn.functional.pad(final, (0, pad), value=float("-inf")))
        tok = trie.child_tok[d].to(dev)[node]                          # [n, k, C]
        cand = score[..., None] + logp.gather(-1, tok.clamp(min=0))
        cand = cand.masked_fill(tok < 0, float("-inf")).view(n, -1)
        score, flat = cand.topk(min(B, cand.shape[1]), dim=1)
        width = tok.shape[-1]
        src, slot = flat // width, flat % width                        # parent beam, child slot
        last = tok.view(n, -1).gather(1, flat).clamp(min=0)            # dead beams (-inf) carry a dummy token
        node = trie.child_node[d].to(dev)[node.gather(1, src), slot]
        cache.reorder_cache((rows * k + src).view(-1))                 # also expands 1 -> B rows after step 0
    raise AssertionError("unreachable")
