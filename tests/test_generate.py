"""Decoding: greedy, beam search and sampling with a key/value cache (minipeft/generate.py).

The reference for every cached run is decoding without the cache (re-encoding the whole sequence
at each step) and, independently, a few-line greedy loop written here on `model(ids)`. The tiny
random models get their weight matrices scaled up so that the next-token distributions are
peaked and argmax decisions are far from ties (float32 rounding cannot flip them).
"""
from __future__ import annotations

import contextlib
import itertools

import pytest

import minipeft
from minipeft import backend as B
from minipeft.autograd import Tensor
from minipeft.generate import (beam_search, generate, generate_text, greedy, sample,
                               sequence_logprob)
from minipeft.nn import Transformer, TransformerConfig

np = B.host()

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8], [9, 10, 11, 12, 13], [14, 15]]  # lengths 3, 2, 3, 5, 2


def make_model(seed=0, scale=30.0, vocab_size=17, n_ctx=32, **kw):
    """A tiny GPT-2 with every weight matrix multiplied by `scale` (peaked distributions)."""
    minipeft.manual_seed(seed)
    m = Transformer(TransformerConfig(vocab_size=vocab_size, n_ctx=n_ctx, d_model=16, n_layer=2,
                                      n_head=2, **kw))
    for _, p in m.named_parameters():
        if p.data.ndim == 2:
            p.data *= scale
    return m


def make_prefix(model, rows=1, length=3, std=3.0, seed=1):
    """Prefix-tuning key/values: per layer (k_p, v_p), each (rows, H, P, D), large enough to matter."""
    cfg = model.config
    g = np.random.default_rng(seed)
    D = cfg.d_model // cfg.n_head
    shape = (rows, cfg.n_head, length, D)
    return [(Tensor(B.to_device(g.normal(0, std, shape).astype(np.float32))),
             Tensor(B.to_device(g.normal(0, std, shape).astype(np.float32)))) for _ in range(cfg.n_layer)]


def make_soft_prompt(model, rows=1, length=2, std=1.0, seed=2):
    g = np.random.default_rng(seed)
    return Tensor(B.to_device(g.normal(0, std, (rows, length, model.config.d_model)).astype(np.float32)))


def ref_greedy(model, ids, n, prefix=None, prompt=None):
    """Greedy decoding the slow, obvious way: the full forward pass at every step."""
    ids, out = list(ids), []
    with minipeft.no_grad():
        for _ in range(n):
            h = model.encode([ids], prefix=prefix, prompt=prompt)
            t = int(B.to_numpy(model.lm_logits(h).data[0, -1]).argmax())
            ids.append(t)
            out.append(t)
    return out


def row(t, i):
    """Row i of a per-prompt prefix / soft prompt, keeping the leading axis."""
    return Tensor(t.data[i:i + 1])


# ----------------------------------------------------------------------------- cache == no cache

def test_greedy_cached_equals_uncached_and_reference(backend):
    m = make_model()
    cached = greedy(m, PROMPTS, 12)
    assert cached == greedy(m, PROMPTS, 12, use_cache=False)
    assert cached == [ref_greedy(m, p, 12) for p in PROMPTS]
    assert len({tuple(o) for o in cached}) > 1 and all(len(set(o)) > 1 for o in cached[:3])  # not degenerate


@pytest.mark.parametrize("eos_id", [None, 16])
def test_beam_cached_equals_uncached(backend, eos_id):
    m = make_model()
    cached = beam_search(m, PROMPTS, 10, eos_id=eos_id, num_beams=3)
    assert cached == beam_search(m, PROMPTS, 10, eos_id=eos_id, num_beams=3, use_cache=False)


@pytest.mark.parametrize("per_prompt", [False, True])
def test_prefix_cached_equals_uncached(backend, per_prompt):
    m = make_model()
    prefix = make_prefix(m, rows=len(PROMPTS) if per_prompt else 1)
    out = greedy(m, PROMPTS, 10, prefix=prefix)
    assert out != greedy(m, PROMPTS, 10)                             # the prefix changes the output
    assert out == greedy(m, PROMPTS, 10, prefix=prefix, use_cache=False)
    assert out == [ref_greedy(m, p, 10, prefix=[(row(k, i), row(v, i)) for k, v in prefix] if per_prompt
                              else prefix) for i, p in enumerate(PROMPTS)]
    beams = beam_search(m, PROMPTS, 8, num_beams=3, prefix=prefix)
    assert beams == beam_search(m, PROMPTS, 8, num_beams=3, prefix=prefix, use_cache=False)


@pytest.mark.parametrize("per_prompt", [False, True])
def test_soft_prompt_cached_equals_uncached(backend, per_prompt):
    m = make_model()
    soft = make_soft_prompt(m, rows=len(PROMPTS) if per_prompt else 1)
    out = greedy(m, PROMPTS, 10, prompt=soft)
    assert out != greedy(m, PROMPTS, 10)
    assert out == greedy(m, PROMPTS, 10, prompt=soft, use_cache=False)
    assert out == [ref_greedy(m, p, 10, prompt=row(soft, i) if per_prompt else soft)
                   for i, p in enumerate(PROMPTS)]
    beams = beam_search(m, PROMPTS, 8, num_beams=3, prompt=soft)
    assert beams == beam_search(m, PROMPTS, 8, num_beams=3, prompt=soft, use_cache=False)


def test_per_prompt_prefix_and_soft_prompt_follow_rows_that_stop(backend):
    m = make_model()
    prefix = make_prefix(m, rows=len(PROMPTS))
    soft = make_soft_prompt(m, rows=len(PROMPTS))
    free = greedy(m, PROMPTS, 10, prefix=prefix, prompt=soft)
    eos = free[0][2]                                    # row 0 stops early and leaves the batch
    out = greedy(m, PROMPTS, 10, eos_id=eos, prefix=prefix, prompt=soft)
    assert len(out[0]) == 3 and any(len(o) == 10 for o in out)
    for use_cache in (True, False):
        assert out == greedy(m, PROMPTS, 10, eos_id=eos, prefix=prefix, prompt=soft, use_cache=use_cache)
    for i, p in enumerate(PROMPTS):
        mine = [(row(k, i), row(v, i)) for k, v in prefix]
        expect = greedy(m, [p], 10, eos_id=eos, prefix=mine, prompt=row(soft, i))[0]
        assert out[i] == expect == ref_greedy(m, p, len(expect), prefix=mine, prompt=row(soft, i))


def test_prefix_and_soft_prompt_together(backend):
    m = make_model()
    prefix, soft = make_prefix(m), make_soft_prompt(m)
    for method in ("greedy", "beam"):
        out = generate(m, PROMPTS, 9, method=method, prefix=prefix, prompt=soft)
        assert out == generate(m, PROMPTS, 9, method=method, prefix=prefix, prompt=soft, use_cache=False)
    assert generate(m, PROMPTS, 9, prefix=prefix, prompt=soft) == \
        [ref_greedy(m, p, 9, prefix=prefix, prompt=soft) for p in PROMPTS]


def test_cache_feeds_one_token_prefix_every_step_soft_prompt_once(monkeypatch):
    m = make_model()
    prefix, soft = make_prefix(m), make_soft_prompt(m)
    calls, encode = [], m.encode

    def spy(ids, **kw):
        calls.append((np.asarray(ids).shape, kw.get("prefix") is not None, kw.get("prompt") is not None))
        return encode(ids, **kw)

    monkeypatch.setattr(m, "encode", spy)
    greedy(m, [[1, 2, 3, 4]], 6, prefix=prefix, prompt=soft)
    assert calls[0] == ((1, 4), True, True)
    assert calls[1:] == [((1, 1), True, False)] * 5


# ----------------------------------------------------------------------------- one batch for all lengths

def test_prompts_of_different_lengths_decode_as_one_left_padded_batch(monkeypatch):
    m = make_model()
    calls, encode = [], m.encode

    def spy(ids, **kw):
        calls.append((np.asarray(ids).shape, kw.get("attention_mask") is not None))
        return encode(ids, **kw)

    monkeypatch.setattr(m, "encode", spy)
    out = greedy(m, PROMPTS, 6)
    assert calls == [((5, 5), True)] + [((5, 1), True)] * 5      # 6 forward calls, not 6 per length
    monkeypatch.undo()
    assert out == [greedy(m, [p], 6)[0] for p in PROMPTS]


@pytest.mark.parametrize("eos_id", [None, 16])
def test_batched_beam_search_equals_each_prompt_alone(backend, eos_id):
    m = make_model()
    prefix, soft = make_prefix(m, rows=len(PROMPTS)), make_soft_prompt(m, rows=len(PROMPTS))
    for kw in ({}, {"prefix": prefix}, {"prompt": soft}):
        out = beam_search(m, PROMPTS, 9, eos_id=eos_id, num_beams=3, **kw)
        alone = []
        for i, p in enumerate(PROMPTS):
            mine = {k: ([(row(a, i), row(b, i)) for a, b in v] if k == "prefix" else row(v, i)) for k, v in kw.items()}
            alone.append(beam_search(m, [p], 9, eos_id=eos_id, num_beams=3, **mine)[0])
        assert out == alone, kw
        assert out == beam_search(m, PROMPTS, 9, eos_id=eos_id, num_beams=3, use_cache=False, **kw)


@pytest.mark.parametrize("method", ["lora", "prefix", "prompt", "infix"])
def test_adapted_models_decode_mixed_lengths_in_one_batch_as_alone(backend, method):
    """A PeftModel adds its own prefix rows or soft prompt inside encode: the batch must still
    give each prompt what it gives alone (the stepper reads the soft prompt's length off the cache)."""
    from minipeft.peft import LoraConfig, PrefixConfig, PromptConfig, apply
    m = make_model()
    cfg = {"lora": LoraConfig(r=2, target_modules=("q", "v", "fc")),
           "prefix": PrefixConfig(num_virtual_tokens=3, prefix_projection=False),
           "prompt": PromptConfig(num_virtual_tokens=2),
           "infix": PrefixConfig(num_virtual_tokens=3, prefix_projection=False, variant="infix",
                                 infix_token=3)}[method]
    pm = apply(m, cfg)
    g = np.random.default_rng(0)
    for name, p in pm.named_parameters():
        if p.requires_grad:                            # trained-looking adapter weights
            p.data = B.to_device(g.normal(0, 3.0, p.shape).astype(np.float32))
    prompts = PROMPTS if method != "infix" else [[1, 3, 2], [4, 3], [6, 7, 3, 8], [9, 3, 11, 12, 13], [3, 15]]
    for decode in (lambda ps: greedy(pm, ps, 8), lambda ps: beam_search(pm, ps, 6, num_beams=3)):
        out = decode(prompts)
        assert out == [decode([p])[0] for p in prompts], method
    with pm.disable_adapter():
        plain = greedy(pm, prompts, 8)
    assert greedy(pm, prompts, 8) != plain                                 # the adapter matters


def test_a_generate_call_builds_the_adapters_inputs_once_not_once_per_token(monkeypatch):
    """Inside generate a PeftModel's prefix (k_p, v_p) per layer, a parametrised method's
    W0 + Delta and the list of adapter layers are built on the first step and reused: the same
    tokens as rebuilding them at every step, one build per call, and a later call sees parameters
    changed in between."""
    from minipeft.peft import PeftModel, PrefixConfig, apply, parametrize, prefix
    from minipeft.peft.lt_sft import LTSFTConfig
    pm = apply(make_model(), PrefixConfig(num_virtual_tokens=3, prefix_projection=True))
    pm.add_adapter("sparse", LTSFTConfig(density=0.2))
    pm.set_adapter(["default", "sparse"])
    g = np.random.default_rng(0)
    for name, p in pm.named_parameters():
        if p.requires_grad:
            p.data = B.to_device(g.normal(0, 3.0, p.shape).astype(np.float32))
    calls = {"prefix": 0, "sum": 0, "walk": 0}

    def counted(key, fn):
        def wrapped(*a, **kw):
            calls[key] += 1
            return fn(*a, **kw)
        return wrapped
    monkeypatch.setattr(prefix, "_per_layer", counted("prefix", prefix._per_layer))
    monkeypatch.setattr(parametrize, "_holders", counted("sum", parametrize._holders))
    monkeypatch.setattr(PeftModel, "modules", counted("walk", PeftModel.modules))
    n = 6
    once = {"greedy": greedy(pm, PROMPTS, n), "beam": beam_search(pm, PROMPTS, n, num_beams=3)}
    assert calls["prefix"] == 2 and calls["sum"] == 2, calls            # one build per call
    walks = calls["walk"]
    greedy(pm, PROMPTS, 2 * n)
    assert calls["walk"] - walks == walks / 2, calls                   # tree walks: per call, not per token
    with monkeypatch.context() as mp:                                  # rebuilt at every step: same tokens
        mp.setattr(PeftModel, "inference_session", lambda self: contextlib.nullcontext())
        assert greedy(pm, PROMPTS, n) == once["greedy"]
        assert beam_search(pm, PROMPTS, n, num_beams=3) == once["beam"]
        assert calls["prefix"] > 2 * n and calls["sum"] > 2 * n
    assert pm._session is None
    with pm.disable_adapter():
        plain = greedy(pm, PROMPTS, n)
    assert once["greedy"] != plain                                     # the adapters matter
    for name, p in pm.named_parameters():                              # train "a step": the next call sees it
        if p.requires_grad:
            p.data = B.to_device(g.normal(0, 3.0, p.shape).astype(np.float32))
    fresh = greedy(pm, PROMPTS, n)
    with monkeypatch.context() as mp:
        mp.setattr(PeftModel, "inference_session", lambda self: contextlib.nullcontext())
        assert fresh == greedy(pm, PROMPTS, n) != once["greedy"]


# ----------------------------------------------------------------------------- beam search

def test_beam_size_one_is_greedy(backend):
    m = make_model()
    assert beam_search(m, PROMPTS, 12, num_beams=1) == greedy(m, PROMPTS, 12)
    eos = greedy(m, PROMPTS, 12)[0][4]                 # a token greedy produces: rows stop at it
    out = beam_search(m, PROMPTS, 12, num_beams=1, eos_id=eos)
    assert out == greedy(m, PROMPTS, 12, eos_id=eos)
    assert out[0][-1] == eos and len(out[0]) <= 5


class TableLM:
    """A stand-in 'language model' whose next-token probabilities are written in a table, keyed by
    the tokens generated so far. It keeps its history in the key/value cache as the Transformer
    keeps keys and values (so a wrongly reordered beam cache shows up as a wrong history)."""

    def __init__(self, table, vocab_size, prompt_len):
        self.config = TransformerConfig(vocab_size=vocab_size, n_ctx=16, d_model=4, n_layer=1, n_head=1)
        self.table, self.prompt_len = table, prompt_len

    def new_cache(self, capacity=None):
        return [dict()]

    def encode(self, ids, prefix=None, cache=None, prompt=None):
        ids = np.asarray(ids)
        if cache is not None:
            if "k" in cache[0]:
                ids = np.concatenate([B.to_numpy(cache[0]["k"])[:, 0, :, 0], ids], axis=1)
            cache[0]["k"] = cache[0]["v"] = B.to_device(ids[:, None, :, None])
        V = self.config.vocab_size
        h = np.full((ids.shape[0], 1, V), np.log(1.0 / V), dtype=np.float32)
        for b, seq in enumerate(ids):
            probs = self.table.get(tuple(seq[self.prompt_len:].tolist()))
            if probs is not None:
                h[b, 0] = np.log(np.maximum(np.asarray(probs, dtype=np.float32), 1e-30))
        return Tensor(B.to_device(h))

    def lm_logits(self, h):
        return h


def test_beam_beats_myopic_greedy(backend):
    # first token: A (0) 0.6, B (1) 0.4. After A every token is equally likely (0.25), after B
    # C (2) has 0.9. Greedy takes A and ends with p = 0.6 * 0.25 = 0.15; beam search keeps B too
    # and finds B C with p = 0.4 * 0.9 = 0.36.
    table = {(): [0.6, 0.4, 0.0, 0.0], (1,): [0.05, 0.05, 0.9, 0.0]}
    lm = TableLM(table, vocab_size=4, prompt_len=1)
    assert greedy(lm, [[3]], 2) == [[0, 0]]
    for use_cache in (True, False):
        assert beam_search(lm, [[3]], 2, num_beams=2, use_cache=use_cache) == [[1, 2]]
    assert beam_search(lm, [[3]], 2, num_beams=1) == [[0, 0]]


def test_length_penalty_counts_eos_in_the_length(backend):
    # eos = 3. "3" right away: p = 0.5, log -0.69. "0 3": 0.5 * 0.8 = 0.4, log -0.92.
    # length_penalty 0 compares raw sums: "3" wins. length_penalty 1 divides by the length, eos
    # included: -0.69 / 1 against -0.92 / 2 = -0.46, "0 3" wins (it would lose, -0.92 / 1, if
    # the eos token were not counted).
    table = {(): [0.5, 0.0, 0.0, 0.5], (0,): [0.1, 0.05, 0.05, 0.8]}
    lm = TableLM(table, vocab_size=4, prompt_len=1)
    assert beam_search(lm, [[2]], 3, eos_id=3, num_beams=2, length_penalty=0.0) == [[3]]
    assert beam_search(lm, [[2]], 3, eos_id=3, num_beams=2, length_penalty=1.0) == [[0, 3]]


def test_beam_bookkeeping_around_eos(backend):
    # num_beams=1 with eos second (p 0.4): the search goes on with the best token, as greedy does.
    lm = TableLM({(): [0.6, 0.0, 0.0, 0.4]}, vocab_size=4, prompt_len=1)
    assert beam_search(lm, [[2]], 2, eos_id=3, num_beams=1) == greedy(lm, [[2]], 2, eos_id=3) == [[0, 0]]
    # A finished beam does not take a live beam's place: 2 * num_beams candidates are kept so that
    # "1" (third, p 0.25) still continues next to "0" and leads to the best answer "1 3".
    table = {(): [0.4, 0.25, 0.0, 0.35], (1,): [0.0, 0.0, 0.0, 1.0]}
    lm = TableLM(table, vocab_size=4, prompt_len=1)
    assert beam_search(lm, [[2]], 2, eos_id=3, num_beams=2, length_penalty=1.0) == [[1, 3]]
    # An eos candidate ranked below the num_beams best is not a finished hypothesis. Step 2 ranks
    # "0 3" (0.45, finished), "1 0" (0.30), "1 3" (0.20, third: dropped), "0 0" ... Had "1 3"
    # counted, two hypotheses would be finished and the search would stop before "1 0 3" (0.30),
    # the best answer with length_penalty 2: log(0.3) / 9 = -0.134 > log(0.45) / 4 = -0.200.
    table = {(): [0.5, 0.5, 0.0, 0.0], (0,): [0.05, 0.05, 0.0, 0.9], (1,): [0.6, 0.0, 0.0, 0.4],
             (1, 0): [0.0, 0.0, 0.0, 1.0]}
    lm = TableLM(table, vocab_size=4, prompt_len=1)
    assert beam_search(lm, [[2]], 3, eos_id=3, num_beams=2, length_penalty=2.0) == [[1, 0, 3]]


def _brute_force(m, prompt, V, steps, eos_id, alpha):
    """Best sequence by score / len**alpha over all sequences that stop at eos or at `steps`,
    scored by full forward passes (independent of generate.py)."""
    best, best_score = None, -np.inf
    with minipeft.no_grad():
        for n in range(1, steps + 1):
            for seq in itertools.product(range(V), repeat=n):
                if eos_id in seq[:-1] or (n < steps and seq[-1] != eos_id):
                    continue
                logits = B.to_numpy(m.lm_logits(m.encode([list(prompt) + list(seq)])).data[0]).astype(np.float64)
                logp = logits - logits.max(-1, keepdims=True)
                logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
                s = sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(seq))
                if s / n ** alpha > best_score:
                    best, best_score = list(seq), s / n ** alpha
    return best, best_score


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_beam_with_all_sequences_is_exhaustive_search(alpha):
    V, steps, eos = 4, 3, 3
    m = make_model(seed=8, scale=10.0, vocab_size=V, n_ctx=16)
    prompt = [0, 1]
    best, best_score = _brute_force(m, prompt, V, steps, eos, alpha)
    out = beam_search(m, [prompt], steps, eos_id=eos, num_beams=V ** steps, length_penalty=alpha)[0]
    got = sequence_logprob(m, prompt, out) / len(out) ** alpha
    assert got == pytest.approx(best_score, abs=1e-4)
    assert out == best


def test_sequence_logprob_matches_greedy_choices():
    m = make_model()
    out = greedy(m, [[1, 2, 3]], 5)[0]
    lp = sequence_logprob(m, [1, 2, 3], out)
    assert lp < 0
    # changing any one greedy choice (to another token) can only lower that step's term
    assert sequence_logprob(m, [1, 2, 3], out[:1]) >= sequence_logprob(m, [1, 2, 3], [(out[0] + 1) % 17])


# ----------------------------------------------------------------------------- sampling

def test_sampling_reproducible_and_seed_dependent(backend):
    m = make_model(scale=5.0)                                # flat enough that draws differ
    a = sample(m, PROMPTS, 12, seed=123)
    assert a == sample(m, PROMPTS, 12, seed=123)
    assert a == sample(m, PROMPTS, 12, seed=123, use_cache=False)
    assert a != sample(m, PROMPTS, 12, seed=124)
    assert a != greedy(m, PROMPTS, 12)


def test_sampling_limits_are_greedy(backend):
    m = make_model(scale=5.0)
    g = greedy(m, PROMPTS, 12)
    assert sample(m, PROMPTS, 12, top_k=1, seed=0) == g
    assert sample(m, PROMPTS, 12, top_p=1e-6, seed=0) == g
    assert sample(m, PROMPTS, 12, temperature=0, seed=0) == g
    assert sample(m, PROMPTS, 12, temperature=1e-3, seed=0) == g


def _next_token_probs(m, prompt):
    with minipeft.no_grad():
        z = B.to_numpy(m.lm_logits(m.encode([prompt])).data[0, -1]).astype(np.float64)
    p = np.exp(z - z.max())
    return p / p.sum()


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (2.0, 0, 1.0), (1.0, 3, 1.0),
                                                       (1.0, 0, 0.6), (0.5, 4, 0.9)])
def test_sampling_frequencies_match_filtered_distribution(temperature, top_k, top_p):
    m = make_model(scale=5.0)
    prompt, n = [1, 2, 3], 10000
    p = _next_token_probs(m, prompt) ** (1 / temperature)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, dtype=bool)
    mass = 0.0
    for rank, i in enumerate(order):                        # top-k, then the nucleus of what is left
        if top_k and rank >= top_k:
            break
        keep[i] = True
        mass += p[i]
    q = np.where(keep, p, 0)
    q /= q.sum()
    before = np.cumsum(q[order]) - q[order]
    nucleus = np.zeros_like(keep)
    nucleus[order[before < top_p]] = True
    q = np.where(nucleus, q, 0)
    q /= q.sum()
    draws = np.array(sample(m, [prompt] * n, 1, temperature=temperature, top_k=top_k, top_p=top_p, seed=5))[:, 0]
    freq = np.bincount(draws, minlength=len(q)) / n
    assert not freq[q == 0].any()                            # filtered tokens never drawn
    assert np.abs(freq - q).max() < 4 * np.sqrt(0.25 / n) + 1e-3  # 4 sigma of the worst case


# ----------------------------------------------------------------------------- stopping

def test_eos_stops_each_row_independently(backend):
    m = make_model()
    free = greedy(m, PROMPTS, 12)
    eos = free[0][3]
    assert eos not in free[0][:3]
    out = greedy(m, PROMPTS, 12, eos_id=eos)
    for o, f in zip(out, free):
        expect = f[:f.index(eos) + 1] if eos in f else f
        assert o == expect
    assert out[0] == free[0][:4] and any(eos not in f for f in free)  # one row stops, another runs on
    s = sample(m, PROMPTS, 12, eos_id=eos, top_k=1, seed=0)
    assert s == out


def test_beam_output_ends_at_eos_or_max_length():
    m = make_model()
    eos = greedy(m, PROMPTS, 12)[0][2]
    for o in beam_search(m, PROMPTS, 12, eos_id=eos, num_beams=4):
        assert (o[-1] == eos and eos not in o[:-1]) or (len(o) == 12 and eos not in o)


def test_context_limit_is_a_clear_error():
    m = make_model(n_ctx=16)
    ok = greedy(m, [[1, 2, 3, 4]], 12)                        # 4 + 12 = n_ctx: fits exactly
    assert ok == greedy(m, [[1, 2, 3, 4]], 12, use_cache=False) and len(ok[0]) == 12
    with pytest.raises(ValueError, match=r"n_ctx=16.*at most 12"):
        greedy(m, [[1, 2, 3, 4]], 13)
    with pytest.raises(ValueError, match=r"soft-prompt.*at most 10"):
        beam_search(m, [[1, 2, 3, 4]], 12, prompt=make_soft_prompt(m, length=2))
    with pytest.raises(ValueError, match=r"the prompt alone fills the context: shorten it to at most 15 tokens"):
        greedy(m, [list(range(1, 17))], 1)


def test_zero_new_tokens():
    m = make_model()
    for method in ("greedy", "beam", "sample"):
        assert generate(m, PROMPTS, 0, method=method) == [[]] * len(PROMPTS)


def test_dropout_is_off_and_training_flag_restored():
    m = make_model(dropout=0.5)
    m.train()
    out = greedy(m, PROMPTS, 8)
    assert m.training and all(mod.training for mod in m.modules())
    m.eval()
    assert out == greedy(m, PROMPTS, 8)
    assert not m.training


def test_only_small_arrays_come_back_to_the_host(monkeypatch):
    m = make_model()
    sizes, to_numpy = [], B.to_numpy

    def spy(a):
        sizes.append(getattr(a, "size", 1))
        return to_numpy(a)

    monkeypatch.setattr(B, "to_numpy", spy)
    greedy(m, PROMPTS, 6)
    assert sizes and max(sizes) <= len(PROMPTS)              # a token id per row, never logits
    sizes.clear()
    beam_search(m, PROMPTS, 6, num_beams=3)
    assert sizes and max(sizes) <= 2 * 3                     # the 2K best candidates
    sizes.clear()
    sample(m, PROMPTS, 6, seed=0)
    assert sizes and max(sizes) <= len(PROMPTS)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kw, match", [
    (dict(method="beam", num_beams=0), "num_beams must be an integer >= 1"),
    (dict(method="sample", top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(method="sample", top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(method="sample", temperature=-1.0), "temperature must be"),
    (dict(method="sample", top_k=-2), "top_k must be"),
    (dict(method="nucleus"), "unknown generation method"),
    (dict(method="greedy", num_beams=3), "num_beams=3 only applies to method='beam'"),
    (dict(method="beam", top_k=5), "top_k=5 only applies to method='sample'"),
    (dict(eos_id=99), "eos_id must be"),
])
def test_bad_arguments(kw, match):
    m = make_model()
    with pytest.raises(ValueError, match=match):
        generate(m, PROMPTS, 4, **kw)


def test_bad_inputs():
    m = make_model()
    with pytest.raises(ValueError, match="causal decoder"):
        generate(make_model(arch="bert"), PROMPTS, 4)
    with pytest.raises(TypeError, match=r"wrapped as a batch of one: \[ids\]"):
        generate(m, [1, 2, 3], 4)
    with pytest.raises(ValueError, match="is empty"):
        generate(m, [[1], []], 4)
    with pytest.raises(ValueError, match=r"token id 17, outside.*\[0, 17\)"):
        generate(m, [[1, 17]], 4)
    with pytest.raises(TypeError, match="must be integers"):
        generate(m, [[1, 2.0]], 4)
    with pytest.raises(ValueError, match="one .* pair per layer"):
        generate(m, PROMPTS, 4, prefix=make_prefix(m)[:1])
    with pytest.raises(ValueError, match="leading size 2"):
        generate(m, PROMPTS, 4, prefix=make_prefix(m, rows=2))
    with pytest.raises(ValueError, match="max_new_tokens must be"):
        generate(m, PROMPTS, -1)


def test_numpy_prompt_array_accepted():
    m = make_model()
    assert generate(m, np.array([[1, 2, 3], [6, 7, 8]]), 5) == generate(m, [[1, 2, 3], [6, 7, 8]], 5)


# ----------------------------------------------------------------------------- text in, text out

@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from minipeft.data.tokenizer import train_tokenizer
    path = tmp_path_factory.mktemp("gen") / "train.txt"
    path.write_text("the cat sat on the mat. the dog sat on the log.\n" * 50, encoding="utf-8")
    return train_tokenizer([path], vocab_size=300)


def test_generate_text(tok):
    m = make_model(vocab_size=tok.vocab_size, scale=10.0)
    texts = ["the cat", "the dog sat on"]
    out = generate_text(m, tok, texts, max_new_tokens=6, method="beam", num_beams=2)
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(s, str) for s in out)
    ids = beam_search(m, [tok.encode(t, add_bos=True) for t in texts], 6, eos_id=tok.eos_id, num_beams=2)
    assert out == [tok.decode(i) for i in ids]
    assert generate_text(m, tok, "the cat", max_new_tokens=6, method="beam", num_beams=2) == out[:1]
    assert generate_text(m, tok, [""], max_new_tokens=3, eos_id=None)[0] == \
        tok.decode(greedy(m, [[tok.bos_id]], 3)[0])


def test_top_candidates_without_a_full_sort_match_the_stable_sort_ties_included():
    from minipeft.generate import _argsort_desc, _top_desc
    g = np.random.default_rng(0)
    for _ in range(200):
        a = B.to_device(g.integers(0, 5, size=int(g.integers(1, 40))).astype(np.float32))   # many ties
        n = int(g.integers(1, 12))
        assert B.to_numpy(_top_desc(a, n)).tolist() == B.to_numpy(_argsort_desc(a)[:n]).tolist(), (a, n)


def test_length_normalisation_divides_by_the_length_exactly(backend):
    # eos = 3. "3": log 0.5 = -0.693 over length 1. "0 3": log(0.5 * 0.602) = -1.200 over length 2 =
    # -0.600: it wins. Dividing by length + 1 instead would rank them the other way (-0.347 against
    # -0.400), and so would dividing by the length without the eos token (-0.693 against -1.200).
    table = {(): [0.5, 0.0, 0.0, 0.5], (0,): [0.3, 0.05, 0.048, 0.602]}
    lm = TableLM(table, vocab_size=4, prompt_len=1)
    assert beam_search(lm, [[2]], 3, eos_id=3, num_beams=2, length_penalty=1.0) == [[0, 3]]
    assert beam_search(lm, [[2]], 3, eos_id=3, num_beams=2, length_penalty=0.0) == [[3]]
