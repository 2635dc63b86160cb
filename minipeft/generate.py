"""Text generation with the causal decoder (arch="gpt2"): greedy, beam search and sampling.

    from minipeft.generate import generate
    out = generate(model, [[1, 57, 203], [1, 9]], max_new_tokens=20, method="beam", eos_id=2)
    # out[i] is the list of NEW token ids for prompt i (the prompt is not repeated); it ends
    # with eos_id when the model produced it, and is shorter than max_new_tokens then.

Every method repeats one step: run the model, look at the logits of the LAST position only
(`model.lm_logits(h[:, -1:])`), choose the next token(s), append, repeat. They differ only in
how they choose:
    greedy       the most likely token                                       (deterministic)
    beam search  keep the num_beams best partial sequences by total log-probability
    sampling     draw from the (temperature-scaled, top-k / top-p filtered) distribution

The key/value cache (use_cache=True, the default). Without it, step t re-encodes all t tokens
so far: O(t^2) work per sequence. With it, the first step encodes the prompt and each layer
keeps its keys and values (`model.new_cache(capacity)`, sized for the final length so that its
buffers are filled in place, nn/transformer.cache_append); every later step feeds only the one
new token, whose query attends to the cached keys. Same numbers, far less work. use_cache=False
is kept as the slow reference that the tests compare against. (A model of your own that
generate drives needs new_cache(capacity=None) and encode(ids, prefix, cache, prompt).)

Prompts of different lengths decode as one batch. The model has learned absolute positions
starting at 0 for a sequence's first token, so a batch is padded on the left (every row's newest
token in the last column) with per-row position ids counted from each row's first real token and
an attention mask over the padding keys (see _Stepper). Greedy and sampling drop a row from the
batch when it finishes; beam search keeps the live beams of every prompt in one batch. Every
output is what decoding that prompt alone gives (to float rounding of the logits: a batch of
another shape may sum in another order; tests/test_generate.py checks the tokens).

PEFT inputs. `prefix` (prefix tuning: per layer a (k_p, v_p) pair, each (1 or B, H, P, D)) is
not part of the cache, so it is passed to `model.encode` on EVERY step. `prompt` (prompt tuning:
soft-prompt vectors (1 or B, P, d)) is prepended to the embeddings on the first step only: its
keys and values are then in the cache, and passing it again would insert it twice. Without the
cache, both are passed on every step, since every step re-encodes from scratch. A leading size
of B (one row per prompt) selects each prompt's own prefix / soft prompt.

Context length. The soft prompt, the prompt and max_new_tokens new tokens must all fit in the
model's context: P + len(prompt) + max_new_tokens <= n_ctx, checked before any work; otherwise a
ValueError says by how much to shorten (generation never stops silently because the context ran out).

Host/device transfers (on a GPU, each costs a synchronisation). The logits (B, V) stay on the
device: the choice is computed there and only the chosen ids come back to the host, which needs
them to test for eos and to build the output lists. Per step: greedy brings back B ints;
sampling sends B uniform random numbers up and brings B ints back; beam search brings back its
2 * num_beams best candidates (ids and scores) and sends up the beams' parents and scores.

All decoding runs under `no_grad()` and in eval mode (dropout off); the model's training flags
are restored afterwards.
"""
from __future__ import annotations

import contextlib
import math
import operator

from . import backend, ops
from .autograd import Tensor, no_grad
from .nn.transformer import cache_keep_rows

METHODS = ("greedy", "beam", "sample")


# ----------------------------------------------------------------------------- checks

def _check_model(model) -> None:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "encode") or not hasattr(model, "lm_logits"):
        raise TypeError(f"generate expects a minipeft Transformer, got {type(model).__name__}")
    if cfg.arch != "gpt2":
        raise ValueError(f"generation needs a causal decoder (arch='gpt2'), but this model has "
                         f"arch={cfg.arch!r}: a bidirectional encoder sees the future tokens and "
                         f"cannot generate left to right; use its MLM head (lm_logits) to fill "
                         f"in [MASK] tokens instead")


def _check_prompts(prompt_ids, vocab_size: int) -> list[list[int]]:
    """prompt_ids: a batch (list of lists, or a 2-D host array) -> list of lists of Python ints."""
    if hasattr(prompt_ids, "tolist"):
        prompt_ids = prompt_ids.tolist()
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, (list, tuple)):
        raise TypeError(f"prompt_ids must be a list of token-id lists (a batch), got "
                        f"{type(prompt_ids).__name__}; encode text with the tokenizer first")
    if not prompt_ids:
        raise ValueError("prompt_ids is empty; expected at least one prompt")
    rows = []
    for i, row in enumerate(prompt_ids):
        if hasattr(row, "tolist"):
            row = row.tolist()
        if not isinstance(row, (list, tuple)):
            raise TypeError(f"prompt_ids[{i}] is {type(row).__name__}, expected a list of token ids; "
                            f"a single prompt must be wrapped as a batch of one: [ids]")
        if not row:
            raise ValueError(f"prompt_ids[{i}] is empty: the model needs at least one token to "
                             f"condition on (start the prompt with the tokenizer's <bos>)")
        ints = []
        for t in row:
            try:
                if isinstance(t, bool):
                    raise TypeError
                t = operator.index(t)      # Python or NumPy integers; not floats, not bools
            except TypeError:
                raise TypeError(f"prompt_ids[{i}] contains {t!r}; token ids must be integers") from None
            if not 0 <= t < vocab_size:
                raise ValueError(f"prompt_ids[{i}] contains token id {t}, outside the model's "
                                 f"vocabulary [0, {vocab_size}); use the tokenizer the model was built for")
            ints.append(t)
        rows.append(ints)
    return rows


def _check_peft_inputs(model, n_prompts: int, prefix, prompt):
    cfg = model.config
    if prefix is not None:
        prefix = list(prefix)
        if len(prefix) != cfg.n_layer:
            raise ValueError(f"prefix has {len(prefix)} entries; expected one (k_p, v_p) pair per "
                             f"layer, n_layer={cfg.n_layer}")
        prefix = [(k if isinstance(k, Tensor) else Tensor(k), v if isinstance(v, Tensor) else Tensor(v))
                  for k, v in prefix]
        for k, v in prefix:
            if k.shape[0] not in (1, n_prompts) or v.shape[0] != k.shape[0]:
                raise ValueError(f"prefix rows have leading size {k.shape[0]}/{v.shape[0]}; expected "
                                 f"1 (shared) or {n_prompts} (one per prompt)")
    if prompt is not None:
        if not isinstance(prompt, Tensor):
            prompt = Tensor(prompt)
        if prompt.ndim != 3 or prompt.shape[0] not in (1, n_prompts) or prompt.shape[2] != cfg.d_model:
            raise ValueError(f"prompt (soft prompt) has shape {tuple(prompt.shape)}; expected "
                             f"(1 or {n_prompts}, P, d_model={cfg.d_model})")
    return prefix, prompt


def _check_length(model, prompts, max_new_tokens: int, prompt) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    n_ctx = model.config.n_ctx
    P = 0 if prompt is None else prompt.shape[1]
    L = max(len(r) for r in prompts)
    if P + L + max_new_tokens > n_ctx:
        soft = f" + {P} soft-prompt vectors" if P else ""
        fix = (f"lower max_new_tokens to at most {n_ctx - P - L} or shorten the prompt" if n_ctx - P - L > 0
               else f"the prompt alone fills the context: shorten it to at most {n_ctx - P - 1} tokens")
        raise ValueError(f"the longest prompt ({L} tokens{soft}) plus max_new_tokens={max_new_tokens} "
                         f"needs {P + L + max_new_tokens} positions, more than the model's context "
                         f"n_ctx={n_ctx}; {fix}")


def _check_eos(eos_id, vocab_size: int):
    if eos_id is not None and (isinstance(eos_id, bool) or not isinstance(eos_id, int)
                               or not 0 <= eos_id < vocab_size):
        raise ValueError(f"eos_id must be None or a token id in [0, {vocab_size}), got {eos_id!r}")


# ----------------------------------------------------------------------------- running the model

def _rows(t, rows):
    """Rows `rows` (a device int array) of a per-prompt Tensor; a shared one (leading size 1) as is."""
    if t is None or t.shape[0] == 1:
        return t
    return Tensor(t.data[rows])


class _Stepper:
    """Runs the model one step at a time and returns the next-token logits (B, V) of each row.

    Rows may have different lengths. They are padded on the LEFT to the longest, so that every
    row's newest token sits in the last column,

        row 0:  <pad> <pad>  t0  t1  t2          pads[0] = 2
        row 1:   t0    t1    t2  t3  t4          pads[1] = 0

    and two inputs keep the padding out of the result: `position_ids` count each row's positions
    from its own first real token (column - pads[b]), and `attention_mask` hides the padding keys
    from every query. A row then computes what it would compute alone, to float rounding. With
    equal lengths nothing is padded and neither input is passed. With a cache, `start` encodes the
    prompts and fills the cache; each `step` feeds one new token per row. A soft prompt (given
    here, or added by a prompt-tuning adapter inside a PeftModel) takes the first P positions and
    P cached keys: P is read off the cache after `start`, as its length minus the token columns.
    """

    PAD = 0                                    # any valid id: padded positions are never attended

    def __init__(self, model, ids, prefix, prompt, use_cache, max_new_tokens: int):
        self.model = model
        self.seqs = [list(r) for r in ids]     # the host copy of every row (prompt + new tokens)
        width = max(len(r) for r in ids)
        self.pads = [width - len(r) for r in ids]
        self.P = 0                             # soft-prompt keys in the cache (known after start)
        self.prefix, self.prompt = prefix, prompt
        # the cache's final length: soft prompts (the caller's, a PeftModel's) + prompt + new tokens
        soft = (0 if prompt is None else prompt.shape[1]) + \
            (model.context_positions() if hasattr(model, "context_positions") else 0)
        self.cache = model.new_cache(capacity=soft + width + max_new_tokens) if use_cache else None

    def _padding(self, width: int):
        """Host arrays for `width` token columns: the mask (B, width), 1 = real token, and the
        token positions (B, width): column - pads[b] (0 on the padding, which no one sees)."""
        np = backend.host()
        col, pads = np.arange(width)[None, :], np.asarray(self.pads)[:, None]
        return (col >= pads).astype(np.int64), np.maximum(col - pads, 0)

    def _logits(self, ids, prompt, **padding):
        h = self.model.encode(ids, prefix=self.prefix, cache=self.cache, prompt=prompt, **padding)  # (B, T, d)
        return self.model.lm_logits(h[:, -1:]).data[:, 0]                                           # (B, V)

    def _encode_all(self):
        """Every row from its first token (the start, and every step without a cache)."""
        rows = [[self.PAD] * p + s for p, s in zip(self.pads, self.seqs)]
        if not any(self.pads):
            return self._logits(rows, self.prompt)
        mask, pos = self._padding(len(rows[0]))
        return self._logits(rows, self.prompt, attention_mask=mask, position_ids=pos)

    def start(self):
        logits = self._encode_all()
        if self.cache is not None:
            self.P = self.cache[0]["k"].shape[2] - len(self.seqs[0]) - self.pads[0]
        return logits

    def keep(self, rows: list[int]) -> None:
        """Continue with these rows of the batch, in this order (repeats allowed): drops finished
        rows in greedy/sampling, copies and reorders beams in beam search."""
        if rows == list(range(len(self.seqs))):
            return
        self.seqs = [list(self.seqs[r]) for r in rows]
        self.pads = [self.pads[r] for r in rows]
        idx = backend.to_device(rows, dtype=backend.int64)  # a few ints up to the device
        if self.prefix is not None:
            self.prefix = [(_rows(k, idx), _rows(v, idx)) for k, v in self.prefix]
        self.prompt = _rows(self.prompt, idx)
        if self.cache is not None:
            for layer in self.cache:
                cache_keep_rows(layer, idx)

    def step(self, tokens: list[int]):
        for s, t in zip(self.seqs, tokens):
            s.append(t)
        if self.cache is None:          # re-encode everything, the soft prompt included
            return self._encode_all()
        new = [[t] for t in tokens]     # only the new tokens; the soft prompt's keys are cached
        if not any(self.pads):
            return self._logits(new, None)
        mask, pos = self._padding(len(self.seqs[0]) + self.pads[0])
        np = backend.host()
        keys = np.concatenate([np.ones((len(new), self.P), np.int64), mask], axis=1)   # (B, P + width)
        return self._logits(new, None, attention_mask=keys, position_ids=pos[:, -1:] + self.P)


@contextlib.contextmanager
def _eval_mode(model):
    """`model.eval_mode()` (dropout off, each module's training flag restored afterwards) and, for
    a PeftModel, its inference_session: the adapters' prefix and effective weights are built once
    per generate call, not once per new token. A stand-in model without modules (the tests' table
    LM) has nothing to switch."""
    with (model.eval_mode() if hasattr(model, "eval_mode") else contextlib.nullcontext()), \
            (model.inference_session() if hasattr(model, "inference_session") else contextlib.nullcontext()):
        yield


def _prepare(model, prompt_ids, max_new_tokens, eos_id, prefix, prompt):
    _check_model(model)
    prompts = _check_prompts(prompt_ids, model.config.vocab_size)
    prefix, prompt = _check_peft_inputs(model, len(prompts), prefix, prompt)
    _check_length(model, prompts, max_new_tokens, prompt)
    _check_eos(eos_id, model.config.vocab_size)
    return prompts, prefix, prompt


def _decode(model, prompts, max_new_tokens, eos_id, choose, use_cache, prefix, prompt):
    """The loop shared by greedy and sampling; `choose(logits (B, V)) -> B host ints` is the
    only difference between them. All prompts form one batch (left-padded, see _Stepper); a
    row leaves the batch when it has produced eos_id."""
    out = [[] for _ in prompts]
    if max_new_tokens == 0:
        return out
    with no_grad(), _eval_mode(model):
        stepper = _Stepper(model, prompts, prefix, prompt, use_cache, max_new_tokens)
        live = list(range(len(prompts)))     # the output row of each batch row
        logits = stepper.start()
        for step in range(max_new_tokens):
            tokens = choose(logits)
            for r, t in zip(live, tokens):
                out[r].append(t)
            going = [i for i, t in enumerate(tokens) if t != eos_id]
            if not going or step == max_new_tokens - 1:
                break
            live = [live[i] for i in going]
            stepper.keep(going)              # finished rows leave the batch (and the cache)
            logits = stepper.step([tokens[i] for i in going])
    return out


# ----------------------------------------------------------------------------- greedy

def _argsort_desc(a):
    """Indices that sort the last axis in descending order, ties in index order (as argmax)."""
    if backend.name == "numpy":
        return backend.xp.argsort(-a, axis=-1, kind="stable")
    return backend.xp.argsort(-a, axis=-1)                      # CuPy's sort is always stable



def _top_desc(a, n: int):
    """Indices of the n largest entries of the 1-D array a, largest first, ties in index order:
    the first n of `_argsort_desc(a)`, without sorting all of a (beam search needs 2K of K V)."""
    xp = backend.xp
    if n >= a.size:
        return _argsort_desc(a)
    kth = xp.partition(a, a.size - n)[a.size - n]           # the n-th largest value
    idx = xp.flatnonzero(a >= kth)                          # all at least as large, in index order
    return idx[_argsort_desc(a[idx])][:n]                   # (ties at kth: the lowest indices)


def _argmax(logits) -> list[int]:
    return backend.to_numpy(backend.xp.argmax(logits, axis=-1)).tolist()   # B ints to the host


def greedy(model, prompt_ids, max_new_tokens: int, eos_id: int | None = None, use_cache: bool = True,
           prefix=None, prompt=None) -> list[list[int]]:
    """Greedy decoding: at every step append the single most likely next token.

    Fast and deterministic, but myopic: a likely first token can lead into a sequence whose
    total probability is lower than that of a path starting with a less likely token (beam
    search looks further). A row stops after producing eos_id (included in its output).
    """
    prompts, prefix, prompt = _prepare(model, prompt_ids, max_new_tokens, eos_id, prefix, prompt)
    return _decode(model, prompts, max_new_tokens, eos_id, _argmax, use_cache, prefix, prompt)


# ----------------------------------------------------------------------------- sampling

def _check_sampling(temperature, top_k, top_p) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) \
            or not temperature >= 0 or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = no top-k filter), got {top_k!r}")
    if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus filter), got {top_p!r}")


def _sample_step(logits, temperature: float, top_k: int, top_p: float, rng) -> list[int]:
    """Draw one token per row from softmax(logits / temperature), restricted to the top_k most
    likely tokens and then to the nucleus: the fewest most likely tokens whose probability adds
    up to top_p. Everything happens in descending order of probability, on the device:

        order = argsort(-logits);  p = exp((z - z_max) / T) in that order   (unnormalised)
        top-k:  p[k:] = 0
        top-p:  drop token i when the mass before it, sum_{j<i} p_j, is >= top_p * sum p
        draw:   u ~ U[0, 1) on the host;  i = first index with cumsum(p)_i >= u * sum p

    The most likely token is always kept, so top_k=1 or a tiny top_p is greedy decoding.
    Uniforms come from the host generator, so NumPy and CuPy draw the same numbers.
    """
    xp = backend.xp
    if temperature == 0:
        return _argmax(logits)
    B = logits.shape[0]
    order = _argsort_desc(logits)                                # (B, V)
    z = xp.take_along_axis(logits, order, axis=-1)               # (B, V), descending
    p = xp.exp((z - z[:, :1]) / logits.dtype.type(temperature))  # p[:, 0] == 1
    if top_k:
        p[:, top_k:] = 0
    if top_p < 1:
        c = xp.cumsum(p, axis=-1)
        p[(c - p) >= logits.dtype.type(top_p) * c[:, -1:]] = 0
    cdf = xp.cumsum(p, axis=-1)                                  # (B, V)
    u = rng.uniform((B, 1), dtype=logits.dtype) * cdf[:, -1:]    # B numbers up to the device
    pos = xp.minimum((cdf < u).sum(axis=-1), p.shape[1] - 1)     # (B,) index into `order`
    return backend.to_numpy(order[xp.arange(B), pos]).tolist()   # B ints back to the host


def sample(model, prompt_ids, max_new_tokens: int, eos_id: int | None = None, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, seed: int | None = None, use_cache: bool = True,
           prefix=None, prompt=None) -> list[list[int]]:
    """Ancestral sampling: draw each next token from the model's distribution.

    temperature T divides the logits: T < 1 sharpens the distribution (T -> 0 is greedy; T = 0
    is greedy exactly), T > 1 flattens it. top_k keeps the k most likely tokens (0 = all). top_p
    keeps the nucleus (Holtzman et al. 2020): the smallest set of most likely tokens whose
    probability reaches top_p (1 = all). Both filters renormalise what they keep. The same seed
    gives the same tokens (seed=None: fresh randomness).
    """
    _check_sampling(temperature, top_k, top_p)
    prompts, prefix, prompt = _prepare(model, prompt_ids, max_new_tokens, eos_id, prefix, prompt)
    rng = backend.RNG(seed)

    def choose(logits):
        return _sample_step(logits, float(temperature), top_k, float(top_p), rng)

    return _decode(model, prompts, max_new_tokens, eos_id, choose, use_cache, prefix, prompt)


# ----------------------------------------------------------------------------- beam search

def _log_softmax(z):
    """log softmax over the last axis of a raw array (the op's forward; no graph under no_grad)."""
    return ops.log_softmax(Tensor(z)).data


class _Search:
    """The beam search of one prompt: its live beams with their sums of log-probabilities, its
    finished hypotheses, and the rows of the batch that hold its beams."""

    def __init__(self, row: int):
        self.beams, self.scores = [[]], [0.0]       # all beams start from the prompt
        self.finished = []                          # (tokens ending in eos, sum of log-probabilities)
        self.rows = [row]

    def extend(self, logp, K: int, eos_id):
        """One step: the best K extensions of the live beams, from logp (beams, V), the
        log-probabilities of the next token after each beam. Returns (parents, tokens)."""
        V = logp.shape[-1]
        # score of every one-token extension of every beam: (beams, V), flattened
        total = backend.to_device(self.scores, dtype=logp.dtype)[:, None] + logp
        flat = total.reshape(-1)
        top = _top_desc(flat, 2 * K)                 # the 2K best candidates, best first
        cand = zip(backend.to_numpy(top).tolist(), backend.to_numpy(flat[top]).tolist())
        parents, tokens, scores = [], [], []
        for rank, (i, s) in enumerate(cand):
            b, t = divmod(i, V)
            if t == eos_id:                          # a beam ends: a finished hypothesis
                if rank < K:                         # (only if it ranks among the K best)
                    self.finished.append((self.beams[b] + [t], s))
                continue
            parents.append(b)
            tokens.append(t)
            scores.append(s)
            if len(parents) == K:
                break
        self.beams = [self.beams[b] + [t] for b, t in zip(parents, tokens)]
        self.scores = scores
        return parents, tokens

    def best(self, K: int, length_penalty: float):
        """The hypothesis with the best length-normalised score, score / length ** length_penalty."""
        pool = self.finished if len(self.finished) >= K else self.finished + list(zip(self.beams, self.scores))
        return max(pool, key=lambda h: h[1] / len(h[0]) ** length_penalty)[0]


def _beam_batch(model, prompts, max_new_tokens, eos_id, K, length_penalty, use_cache, prefix, prompt):
    """Beam search for every prompt at once: the batch holds the live beams of all prompts that
    are still searching, each prompt's beams in consecutive rows. Each prompt chooses among its
    own candidates exactly as it would alone; a prompt that is done leaves the batch."""
    stepper = _Stepper(model, prompts, prefix, prompt, use_cache, max_new_tokens)
    logits = stepper.start()                         # (N, V): one row per prompt
    searches = [_Search(i) for i in range(len(prompts))]
    live = list(range(len(prompts)))
    for step in range(max_new_tokens):
        logp = _log_softmax(logits)                  # (rows, V)
        rows, tokens, still = [], [], []
        for i in live:
            s = searches[i]
            parents, new = s.extend(logp[s.rows[0]:s.rows[-1] + 1], K, eos_id)
            if len(s.finished) >= K or not s.beams or step == max_new_tokens - 1:
                continue                             # done: its rows leave the batch
            first = len(rows)
            rows += [s.rows[b] for b in parents]     # the parents' rows, copied/reordered below
            tokens += new
            s.rows = list(range(first, len(rows)))
            still.append(i)
        live = still
        if not live:
            break
        stepper.keep(rows)                           # copy/reorder the cache rows of the parents
        logits = stepper.step(tokens)
    return [s.best(K, length_penalty) for s in searches]


def beam_search(model, prompt_ids, max_new_tokens: int, eos_id: int | None = None, num_beams: int = 4,
                length_penalty: float = 1.0, use_cache: bool = True, prefix=None,
                prompt=None) -> list[list[int]]:
    """Beam search: keep the num_beams partial sequences with the highest total log-probability.

    Each step extends every live beam by every token, scores each candidate by its beam's sum of
    log-probabilities plus log p(token), and keeps the best 2 * num_beams candidates. Among them,
    in order: a candidate ending in eos_id becomes a finished hypothesis if it ranks among the
    best num_beams (otherwise it is dropped); the others become the new beams until there are
    num_beams. The search stops when num_beams hypotheses have finished (as fairseq and Hugging
    Face's early_stopping=True do) or after max_new_tokens steps, when the live beams join the
    finished ones. The answer is the hypothesis with the best length-normalised score

        score / length ** length_penalty        (length = new tokens, eos included)

    as in Hugging Face transformers: sums of log-probabilities are negative and shrink with every
    token, so length_penalty > 0 favours longer sequences, 0 compares raw sums, < 0 favours
    shorter ones. (GNMT, Wu et al. 2016, divides by ((5 + length) / 6) ** alpha instead.)

    num_beams=1 is greedy decoding. With num_beams >= V ** max_new_tokens the search is exhaustive.
    All prompts are searched at once, their beams together forming the batch; each prompt's
    result is the one it gets alone.
    """
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1 (1 = greedy), got {num_beams!r}")
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool) \
            or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
    prompts, prefix, prompt = _prepare(model, prompt_ids, max_new_tokens, eos_id, prefix, prompt)
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    with no_grad(), _eval_mode(model):
        return _beam_batch(model, prompts, max_new_tokens, eos_id, num_beams, float(length_penalty),
                           use_cache, prefix, prompt)


# ----------------------------------------------------------------------------- one entry point

# options that only one method reads, with their defaults
_METHOD_OPTIONS = {"num_beams": ("beam", 4), "length_penalty": ("beam", 1.0), "temperature": ("sample", 1.0),
                   "top_k": ("sample", 0), "top_p": ("sample", 1.0), "seed": ("sample", None)}


def generate(model, prompt_ids, max_new_tokens: int, method: str = "greedy", eos_id: int | None = None,
             num_beams: int = 4, length_penalty: float = 1.0, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, use_cache: bool = True, prefix=None,
             prompt=None) -> list[list[int]]:
    """Continue each prompt in `prompt_ids` (a list of token-id lists) by up to max_new_tokens.

    Returns one list of new token ids per prompt (the prompt not included; eos_id included when
    produced). method: "greedy", "beam" (num_beams, length_penalty) or "sample" (temperature,
    top_k, top_p, seed); setting an option that the chosen method does not read is an error.
    prefix / prompt: prefix-tuning key/values and soft-prompt vectors (see the module docstring).
    """
    if method not in METHODS:
        raise ValueError(f"unknown generation method {method!r}; expected one of {METHODS}")
    given = {"num_beams": num_beams, "length_penalty": length_penalty, "temperature": temperature,
             "top_k": top_k, "top_p": top_p, "seed": seed}
    for name, value in given.items():
        owner, default = _METHOD_OPTIONS[name]
        if owner != method and value != default:
            raise ValueError(f"{name}={value!r} only applies to method={owner!r}, but method={method!r}")
    common = dict(eos_id=eos_id, use_cache=use_cache, prefix=prefix, prompt=prompt)
    if method == "greedy":
        return greedy(model, prompt_ids, max_new_tokens, **common)
    if method == "beam":
        return beam_search(model, prompt_ids, max_new_tokens, num_beams=num_beams,
                           length_penalty=length_penalty, **common)
    return sample(model, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                  seed=seed, **common)


def sequence_logprob(model, prompt_ids: list[int], new_ids: list[int], prefix=None, prompt=None) -> float:
    """log p(new_ids | prompt_ids) under the model: the sum of each new token's log-probability,
    by one uncached forward pass (the score that beam search maximises, before normalisation)."""
    _check_model(model)
    if not new_ids:
        return 0.0
    ids = list(prompt_ids) + list(new_ids)
    with no_grad(), _eval_mode(model):
        h = model.encode([ids], prefix=prefix, prompt=prompt)                 # (1, P + T, d)
        logp = _log_softmax(model.lm_logits(h).data[0])                       # (P + T, V)
    n = len(new_ids)
    rows = backend.xp.arange(logp.shape[0] - n - 1, logp.shape[0] - 1)     # positions that predict new_ids
    picked = logp[rows, backend.to_device(list(new_ids), dtype=backend.int64)]
    return float(backend.to_numpy(picked).astype(backend.float64).sum())


# ----------------------------------------------------------------------------- text in, text out (CLI)

_TOKENIZER_EOS = "tokenizer"


def generate_text(model, tokenizer, texts, max_new_tokens: int = 50, add_bos: bool | None = None,
                  eos_id: int | None | str = _TOKENIZER_EOS, **kw) -> list[str]:
    """Encode `texts`, generate, and decode the continuations (special tokens dropped).

    Returns one string per text: the generated continuation only (the text itself is not
    repeated). add_bos: start each prompt with <bos>; None = when the tokenizer has one.
    eos_id: "tokenizer" (default) = the tokenizer's eos token; None = never stop early.
    Other keywords go to `generate` (method, num_beams, temperature, top_k, top_p, seed, ...).
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if add_bos is None:
        add_bos = tokenizer.bos_id is not None
    if eos_id == _TOKENIZER_EOS:
        eos_id = tokenizer.eos_id
    prompts = [tokenizer.encode(t, add_bos=add_bos) for t in texts]
    for t, p in zip(texts, prompts):
        if not p:
            raise ValueError(f"text {t!r} encodes to no tokens and the tokenizer has no <bos> to start "
                             f"from; give a non-empty prompt")
    outs = generate(model, prompts, max_new_tokens, eos_id=eos_id, **kw)
    return [tokenizer.decode(o) for o in outs]
