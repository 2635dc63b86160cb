"""The Transformer (minipeft/nn/transformer.py), GPT-2 and BERT layouts, end to end.

- parameter counts equal their closed forms;
- GPT-2 initialisation (N(0, 0.02), zero biases, unit LN gains) gives small logits, loss ~ ln V;
- float64 gradient checks of every parameter through the LM, MLM and classification losses,
  with padding, prefix key/value rows, a soft prompt and dropout;
- causality, padding, the KV cache;
- frozen parameters get no gradient and cost no weight-gradient matmul (`backend.stats`), and no
  product of a backward escapes that count (a plain `@`) or has a frozen weight's shape, watched
  where the work happens (tests/backward_work.py);
- clear errors for bad inputs.

Gradient checks use tiny models (d 8, 2 layers, vocab 11) whose parameters are moved away from
their initial values (N(0, 0.3) added) so that every path carries a sizeable gradient.
"""
from __future__ import annotations

import math

import numpy
import pytest

import minipeft
from minipeft import backend as B
from minipeft import ops
from minipeft.autograd import Tensor
from minipeft.gradcheck import gradcheck
from minipeft.nn import Linear, Transformer, TransformerConfig

pytestmark = pytest.mark.task_transformer

SMALL = dict(vocab_size=11, n_ctx=12, d_model=8, n_layer=2, n_head=2)
BT = (2, 5)                                         # batch, tokens of the gradient checks
MASK = numpy.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])   # the second row has 2 padding tokens
PER_TENSOR = 3                                      # elements checked per parameter tensor


def np_(t):
    return minipeft.to_numpy(t.data if isinstance(t, Tensor) else t)


def ids_of(*shape, high=11, seed=0):
    return numpy.random.default_rng(seed).integers(0, high, size=shape)


def build(arch="gpt2", seed=0, dtype=numpy.float32, spread=0.3, **kw):
    """A tiny model whose parameters are moved off their initial values (N(0, spread) added),
    so that attention is far from uniform and every token visibly depends on its context.
    Parameters are named (gradcheck failures then say which one)."""
    minipeft.manual_seed(seed)
    with B.default_dtype_as(dtype):
        model = Transformer(TransformerConfig(arch=arch, **{**SMALL, **kw}))
    gen = numpy.random.default_rng(seed + 1000)
    for n, p in model.named_parameters():
        p.data = p.data + B.to_device(gen.normal(0.0, spread, size=p.shape).astype(dtype))
        p.name = n
    return model


def build64(arch="gpt2", seed=0, **kw):
    return build(arch, seed, dtype=numpy.float64, **kw)


def mlm_targets(seed=1):
    """-100 (ignored) except at two positions per row, as in masked-LM training."""
    t = numpy.full(BT, -100)
    t[0, [1, 3]] = ids_of(2, seed=seed)
    t[1, [0, 2]] = ids_of(2, seed=seed + 1)
    return t


def check_every_parameter(f, model, extra=(), unused=(), zero_grad=(), name=""):
    """gradcheck f() w.r.t. every parameter of `model` (and `extra` tensors); then check that
    each parameter outside `unused` got a nonzero gradient and the ones in `zero_grad`/`unused` none."""
    gradcheck(lambda *args: f(), *model.parameters(), *extra, max_per_input=PER_TENSOR, name=name)
    silent, leaking = [], []
    for n, p in model.named_parameters():
        g = 0.0 if p.grad is None else float(numpy.abs(np_(p.grad)).max())
        if any(n.startswith(u) for u in unused) or any(n.endswith(z) for z in zero_grad):
            if g > 1e-9:
                leaking.append((n, g))
        elif g < 1e-6:
            silent.append((n, g))
    assert not silent, f"{name}: parameters that the loss should reach got (almost) no gradient: {silent}"
    assert not leaking, f"{name}: parameters that the loss must not reach got a gradient: {leaking}"
    for t in extra:
        assert t.grad is not None and float(numpy.abs(np_(t.grad)).max()) > 1e-6, f"{name}: {t.name} got no gradient"


# softmax is invariant to adding the same number to every score of a query, and q.(k_j + b)
# adds q.b to all of them: the key bias gets exactly no gradient unless prefix rows (which do
# not go through the k projection) are among the keys.
KEY_BIAS = ("attn.k.bias",)
BERT_MLM_HEAD = ("mlm_dense", "mlm_ln", "mlm_bias")


# ----------------------------------------------------------------------------- parameter counts

def gpt2_count(V, n_ctx, d, L, tied=True):
    return V * d + n_ctx * d + L * (12 * d * d + 13 * d) + 2 * d + (0 if tied else V * d)


def bert_count(V, n_ctx, d, L, n_types):
    return (V * d + n_ctx * d + n_types * d + 2 * d + L * (12 * d * d + 13 * d)
            + (d * d + d) + 2 * d + V + (d * d + d))


@pytest.mark.parametrize("V,n_ctx,d,L,H", [(50, 16, 16, 2, 2), (2048, 128, 128, 4, 4)])
def test_gpt2_parameter_count_closed_form(V, n_ctx, d, L, H):
    cfg = dict(arch="gpt2", vocab_size=V, n_ctx=n_ctx, d_model=d, n_layer=L, n_head=H)
    got = Transformer(TransformerConfig(**cfg)).num_parameters()
    assert got == gpt2_count(V, n_ctx, d, L), (got, gpt2_count(V, n_ctx, d, L))
    n_labels = 3
    got = Transformer(TransformerConfig(**cfg, n_labels=n_labels)).num_parameters()
    assert got == gpt2_count(V, n_ctx, d, L) + d * n_labels + n_labels, got
    got = Transformer(TransformerConfig(**cfg, tie_embeddings=False)).num_parameters()
    assert got == gpt2_count(V, n_ctx, d, L, tied=False), got


@pytest.mark.parametrize("V,n_ctx,d,L,H,n_types", [(30, 10, 8, 1, 2, 2), (64, 32, 24, 3, 3, 3)])
def test_bert_parameter_count_closed_form(V, n_ctx, d, L, H, n_types):
    cfg = dict(arch="bert", vocab_size=V, n_ctx=n_ctx, d_model=d, n_layer=L, n_head=H, n_types=n_types)
    got = Transformer(TransformerConfig(**cfg)).num_parameters()
    assert got == bert_count(V, n_ctx, d, L, n_types), (got, bert_count(V, n_ctx, d, L, n_types))
    got = Transformer(TransformerConfig(**cfg, n_labels=2)).num_parameters()
    assert got == bert_count(V, n_ctx, d, L, n_types) + 2 * d + 2, got


def test_parameter_count_with_explicit_mlp_width():
    d, f, V, n_ctx, L = 8, 20, 11, 6, 2
    model = Transformer(TransformerConfig(vocab_size=V, n_ctx=n_ctx, d_model=d, n_layer=L, n_head=2, d_ff=f))
    per_block = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
    assert model.num_parameters() == V * d + n_ctx * d + L * per_block + 2 * d, model.num_parameters()


# ----------------------------------------------------------------------------- initialisation

def test_gpt2_initialisation_and_initial_loss(backend):
    V = 2048
    minipeft.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=V, n_ctx=32, d_model=64, n_layer=2, n_head=4))
    for n, p in model.named_parameters():
        a = np_(p)
        if n.endswith("bias"):
            assert not a.any(), f"{n} should start at exactly 0, max |b| = {numpy.abs(a).max()}"
        elif ".ln_" in n or n.startswith("ln_"):
            assert (a == 1).all(), f"LayerNorm gain {n} should start at exactly 1"
        else:
            assert abs(a.std() - 0.02) < 0.002 and abs(a.mean()) < 0.002, \
                f"{n} {a.shape}: mean {a.mean():.5f}, std {a.std():.5f}, expected N(0, 0.02)"
    ids = ids_of(4, 32, high=V, seed=1)
    targets = ids_of(4, 32, high=V, seed=2)
    logits, loss = model(ids, targets=targets)
    lg = np_(logits)
    assert lg.std() < 0.5, f"initial logits should be small, std {lg.std()}"
    assert abs(loss.item() - math.log(V)) < 0.1, f"initial loss {loss.item():.4f}, expected ln {V} = {math.log(V):.4f}"


def test_bert_initialisation(backend):
    model = Transformer(TransformerConfig(arch="bert", vocab_size=512, n_ctx=16, d_model=64, n_layer=1,
                                          n_head=4, n_labels=2))
    for n, p in model.named_parameters():
        a = np_(p)
        if n.endswith("bias"):
            assert not a.any(), n
        elif "ln" in n.split(".")[-2]:
            assert (a == 1).all(), n
        elif a.size >= 4096:
            assert abs(a.std() - 0.02) < 0.002, (n, a.std())


# ----------------------------------------------------------------------------- gradient checks

def test_gradcheck_gpt2_lm_loss(backend):
    model = build64("gpt2")
    ids, targets = ids_of(*BT), ids_of(*BT, seed=1)
    check_every_parameter(lambda: model(ids, targets=targets)[1], model, zero_grad=KEY_BIAS,
                          name="gpt2 LM loss")


def test_gradcheck_gpt2_lm_loss_untied_head(backend):
    model = build64("gpt2", tie_embeddings=False)
    ids, targets = ids_of(*BT), ids_of(*BT, seed=1)
    check_every_parameter(lambda: model(ids, targets=targets)[1], model, zero_grad=KEY_BIAS,
                          name="gpt2 LM loss, untied head")


def test_gradcheck_bert_mlm_loss_with_padding(backend):
    model = build64("bert")
    ids, targets = ids_of(*BT), mlm_targets()
    types = numpy.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    check_every_parameter(lambda: model(ids, targets=targets, attention_mask=MASK, token_type_ids=types)[1],
                          model, unused=("pooler",), zero_grad=KEY_BIAS, name="bert MLM loss")


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_gradcheck_classification_loss_with_padding(backend, arch):
    model = build64(arch, n_labels=3)
    ids, labels = ids_of(*BT), numpy.array([2, 0])

    def f():
        return ops.cross_entropy(model.classify(ids, attention_mask=MASK), labels)

    unused = BERT_MLM_HEAD if arch == "bert" else ()
    check_every_parameter(f, model, unused=unused, zero_grad=KEY_BIAS, name=f"{arch} classification")


def prefix_rows(model, batch, P=2, seed=5):
    """Per-layer (k_p, v_p) Tensors (batch, H, P, D), float64, requires_grad."""
    cfg = model.config
    H, D = cfg.n_head, cfg.d_model // cfg.n_head
    gen = numpy.random.default_rng(seed)
    out = []
    for i in range(cfg.n_layer):
        pair = tuple(Tensor(B.to_device(gen.normal(0, 1, size=(batch, H, P, D))), requires_grad=True,
                            name=f"prefix {i} {kv}") for kv in "kv")
        out.append(pair)
    return out


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
@pytest.mark.parametrize("batch", [1, BT[0]], ids=["shared", "per-example"])
def test_gradcheck_with_prefix(backend, arch, batch):
    model = build64(arch, n_labels=3)
    prefix = prefix_rows(model, batch)
    ids = ids_of(*BT)
    extra = [t for pair in prefix for t in pair]
    if arch == "gpt2":
        targets = ids_of(*BT, seed=1)
        f = lambda: model(ids, targets=targets, attention_mask=MASK, prefix=prefix)[1]  # noqa: E731
        unused = ("cls_head",)
    else:
        f = lambda: model(ids, targets=mlm_targets(), attention_mask=MASK, prefix=prefix)[1]  # noqa: E731
        unused = ("pooler", "cls_head")
    # with prefix rows among the keys the key bias does get a gradient
    check_every_parameter(f, model, extra=extra, unused=unused, name=f"{arch} with prefix (batch {batch})")


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
@pytest.mark.parametrize("head", ["lm", "cls"])
def test_gradcheck_with_soft_prompt(backend, arch, head):
    model = build64(arch, n_labels=3)
    P, d = 3, model.config.d_model
    prompt = Tensor(B.to_device(numpy.random.default_rng(7).normal(0, 1, size=(1, P, d))),
                    requires_grad=True, name="prompt")
    ids = ids_of(*BT)
    if head == "lm":
        targets = numpy.concatenate([numpy.full((BT[0], P), -100),
                                     ids_of(*BT, seed=1) if arch == "gpt2" else mlm_targets()], axis=1)
        f = lambda: model(ids, targets=targets, attention_mask=MASK, prompt=prompt)[1]  # noqa: E731
        unused = ("cls_head", "pooler")
    else:
        labels = numpy.array([1, 2])
        f = lambda: ops.cross_entropy(model.classify(ids, attention_mask=MASK, prompt=prompt), labels)  # noqa: E731
        unused = BERT_MLM_HEAD
    check_every_parameter(f, model, extra=[prompt], unused=unused, zero_grad=KEY_BIAS,
                          name=f"{arch} {head} with a soft prompt")


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_gradcheck_with_dropout(backend, arch):
    model = build64(arch, dropout=0.3)
    ids = ids_of(*BT)
    targets = ids_of(*BT, seed=1) if arch == "gpt2" else mlm_targets()

    def f():
        B.manual_seed(0)                 # the same dropout masks at every evaluation
        return model(ids, targets=targets)[1]

    # dropout is really on: two different seeds give different losses
    B.manual_seed(1)
    other = model(ids, targets=targets)[1].item()
    assert abs(f().item() - other) > 1e-6, "dropout=0.3 had no effect in training mode"
    check_every_parameter(f, model, unused=("pooler",), zero_grad=KEY_BIAS, name=f"{arch} with dropout")


# ----------------------------------------------------------------------------- causality and padding

def test_gpt2_is_causal_and_bert_is_not(backend):
    ids = ids_of(2, 8)
    changed = ids.copy()
    changed[:, 5] = (changed[:, 5] + 3) % 11
    for arch in ("gpt2", "bert"):
        model = build64(arch)                 # float64, weights spread out: attention is far from uniform
        a, b = np_(model(ids)[0]), np_(model(changed)[0])
        past = numpy.abs(a[:, :5] - b[:, :5]).max()
        future = numpy.abs(a[:, 5:] - b[:, 5:]).max()
        assert future > 1e-4, f"{arch}: changing token 5 did not change its own logits ({future})"
        if arch == "gpt2":
            assert past < 1e-12, f"gpt2: changing token 5 changed earlier logits by {past}"
        else:
            assert past > 1e-4, f"bert is bidirectional: earlier logits should change, max diff {past}"


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_padding_does_not_affect_real_tokens(backend, arch):
    """A right-padded batch with attention_mask gives every real token the output it has alone."""
    model = build(arch, n_labels=3)
    lengths = [6, 3, 4]
    T = 8
    rows = [ids_of(1, n, seed=10 + i) for i, n in enumerate(lengths)]
    padded = numpy.stack([numpy.concatenate([r[0], ids_of(T - len(r[0]), seed=20 + i)])   # random junk as pads
                          for i, r in enumerate(rows)])
    mask = (numpy.arange(T)[None, :] < numpy.array(lengths)[:, None]).astype(numpy.int64)
    batch_logits = np_(model(padded, attention_mask=mask)[0])
    batch_cls = np_(model.classify(padded, attention_mask=mask))
    for i, r in enumerate(rows):
        n = lengths[i]
        alone = np_(model(r)[0])[0]
        err = numpy.abs(batch_logits[i, :n] - alone).max()
        assert err < 1e-5, f"{arch} row {i}: padded logits differ from the unpadded sequence by {err}"
        cls_err = numpy.abs(batch_cls[i] - np_(model.classify(r))[0]).max()
        assert cls_err < 1e-5, f"{arch} row {i}: padded classification differs by {cls_err}"
    # without the mask the pads do leak into bert's real tokens (the mask is what protects them)
    if arch == "bert":
        leak = numpy.abs(np_(model(padded)[0])[1, :3] - batch_logits[1, :3]).max()
        assert leak > 1e-4, f"bert without a mask should see the pads (diff {leak})"


@pytest.mark.parametrize("side", ["right", "left"])
def test_gpt2_classifier_pools_the_last_real_token(backend, side):
    model = build("gpt2", n_labels=2)
    ids = ids_of(3, 6)
    mask = numpy.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    lasts = [3, 5, 1]
    if side == "left":                                      # the tokenizer offers padding_side="left"
        mask, lasts = mask[:, ::-1].copy(), [5, 5, 5]
    h = model.encode(ids, attention_mask=mask)
    expected = np_(model.cls_head(h))                       # (B, T, n_labels): head at every position
    got = np_(model.classify(ids, attention_mask=mask))
    for i, last in enumerate(lasts):
        err = numpy.abs(got[i] - expected[i, last]).max()
        others = [j for j in range(6) if numpy.abs(got[i] - expected[i, j]).max() < 1e-6]
        assert err < 1e-6, f"{side} padding, row {i}: classify should pool position {last}, pooled {others}"


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_padding_with_prefix_and_prompt(backend, arch):
    """Prefix rows and prompt tokens stay visible while padding stays invisible."""
    model = build(arch, n_labels=2)
    prefix = [tuple(Tensor(B.to_device(numpy.random.default_rng(i).normal(0, 1, (1, 2, 2, 4)).astype(numpy.float32)))
                    for _ in "kv") for i in range(2)]
    prompt = Tensor(B.to_device(numpy.random.default_rng(3).normal(0, 1, (1, 2, 8)).astype(numpy.float32)))
    r = ids_of(1, 3)
    padded = numpy.concatenate([r, ids_of(1, 3, seed=9)], axis=1)
    mask = numpy.array([[1, 1, 1, 0, 0, 0]])
    for kw in (dict(prefix=prefix), dict(prompt=prompt)):
        P = 2 if "prompt" in kw else 0
        alone = np_(model(r, **kw)[0])
        batch = np_(model(padded, attention_mask=mask, **kw)[0])
        err = numpy.abs(batch[0, :P + 3] - alone[0]).max()
        assert err < 1e-5, f"{arch} {list(kw)}: padded output differs by {err}"
        cls_err = numpy.abs(np_(model.classify(padded, attention_mask=mask, **kw)) - np_(model.classify(r, **kw))).max()
        assert cls_err < 1e-5, f"{arch} {list(kw)}: padded classification differs by {cls_err}"


def test_bert_token_types_matter(backend):
    model = build("bert")
    ids = ids_of(1, 5)
    a = np_(model(ids)[0])
    b = np_(model(ids, token_type_ids=numpy.array([[0, 0, 1, 1, 1]]))[0])
    assert numpy.abs(a - b).max() > 1e-4
    assert numpy.array_equal(a, np_(model(ids, token_type_ids=numpy.zeros((1, 5), int))[0]))


# ----------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("dtype,tol", [(numpy.float32, 1e-5), (numpy.float64, 1e-10)])
@pytest.mark.parametrize("with_prefix", [False, True], ids=["plain", "prefix"])
@pytest.mark.parametrize("capacity", [None, 9, 6], ids=["no_capacity", "capacity", "too_small"])
def test_kv_cache_matches_full_forward(backend, dtype, tol, with_prefix, capacity):
    model = build("gpt2", dtype=dtype, n_ctx=16)
    prefix = None
    if with_prefix:
        gen = numpy.random.default_rng(4)
        prefix = [tuple(Tensor(B.to_device(gen.normal(0, 1, (1, 2, 3, 4)).astype(dtype))) for _ in "kv")
                  for _ in range(2)]
    ids = ids_of(2, 9)
    with minipeft.no_grad():
        full = np_(model(ids, prefix=prefix)[0])
        cache = model.new_cache(capacity)        # 6 < 9 positions: it grows by concatenation past 6
        steps = [np_(model(ids[:, :4], prefix=prefix, cache=cache)[0])]
        for t in range(4, 9):
            steps.append(np_(model(ids[:, t:t + 1], prefix=prefix, cache=cache)[0]))
    inc = numpy.concatenate(steps, axis=1)
    assert inc.dtype == dtype and inc.shape == full.shape, (inc.dtype, inc.shape, full.shape)
    err = numpy.abs(inc - full).max()
    assert err < tol, f"incremental decoding differs from the full forward by {err} (tolerance {tol})"
    assert all(c["k"].shape == (2, 2, 9, 4) and c["v"].shape == (2, 2, 9, 4) for c in cache), \
        [c["k"].shape for c in cache]


def test_a_cache_with_capacity_appends_in_place_and_keeps_rows_like_indexing(backend):
    """With a capacity, the past is never copied by an append (cache["k"] is a view of one buffer
    for the whole generation), and keeping rows (beam search's reorder, with repeats; greedy's
    dropping of finished rows) gives exactly what indexing the concatenated cache gives."""
    from minipeft.nn.transformer import cache_append, cache_keep_rows
    gen = numpy.random.default_rng(0)
    new = lambda B_, T: [B.to_device(gen.normal(size=(B_, 2, T, 4)).astype(numpy.float32)) for _ in "kv"]  # noqa: E731
    plain, fast = {}, {"capacity": 12}
    for step, (B_, T, keep) in enumerate([(3, 4, [2, 0, 0, 1]), (4, 1, [3, 3, 1]), (3, 1, None), (3, 1, [1])]):
        k, v = new(B_, T)
        want = cache_append(plain, k, v)
        got = cache_append(fast, k, v)
        assert all(numpy.array_equal(np_(g), np_(w)) for g, w in zip(got, want)), f"step {step}"
        if step >= 1:        # the buffer of this batch size exists: the append wrote into it
            assert numpy.shares_memory(np_(fast["k"]), np_(fast["k_buf"])) if B.name == "numpy" else True
        if keep is not None:
            rows = B.to_device(numpy.asarray(keep), dtype=B.int64)
            cache_keep_rows(plain, rows)
            cache_keep_rows(fast, rows)
            assert numpy.array_equal(np_(fast["k"]), np_(plain["k"])) and numpy.array_equal(np_(fast["v"]), np_(plain["v"]))
    assert fast["k"].shape == (1, 2, 7, 4) and fast["k_buf"].shape == (4, 2, 12, 4)


def test_kv_cache_after_a_soft_prompt(backend):
    """Generation after a prompt-tuned context: the prompt goes in with the first call only."""
    model = build("gpt2")
    prompt = Tensor(B.to_device(numpy.random.default_rng(3).normal(0, 1, (1, 2, 8)).astype(numpy.float32)))
    ids = ids_of(1, 6)
    with minipeft.no_grad():
        full = np_(model(ids, prompt=prompt)[0])
        cache = model.new_cache()
        steps = [np_(model(ids[:, :2], prompt=prompt, cache=cache)[0])]
        steps += [np_(model(ids[:, t:t + 1], cache=cache)[0]) for t in range(2, 6)]
    err = numpy.abs(numpy.concatenate(steps, axis=1) - full).max()
    assert err < 1e-5, f"cached decoding after a prompt differs by {err}"


# ----------------------------------------------------------------------------- frozen parameters cost nothing

N_LINEAR = 6        # q, k, v, o, fc, proj in each block
ATTN_BWD = 4        # attention backward: A^T G (dV), G V^T (dA), dS K (dQ), dS^T Q (dK)


def backward_matmuls(loss):
    before = B.stats["matmul"]
    loss.backward()
    return B.stats["matmul"] - before


def lm_loss(model, seed=0):
    return model(ids_of(2, 6, seed=seed), targets=ids_of(2, 6, seed=seed + 1))[1]


def test_frozen_linear_weights_skip_exactly_their_weight_gradient_matmul(backend):
    """Every trainable Linear costs 2 backward matmuls (dx = G W, dW = G^T x), attention 4, the
    tied LM head 2. Freezing block 0's Linear layers (weights and biases) while the embeddings
    below still train saves exactly one matmul per frozen Linear: dx is still needed."""
    L = 2
    model = build("gpt2")
    full = backward_matmuls(lm_loss(model))
    assert full == 2 + L * (2 * N_LINEAR + ATTN_BWD), f"full backward ran {full} matmuls"

    for lin in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj"):
        model.get_submodule(f"h.0.{lin}").freeze()
    model.zero_grad()
    partial = backward_matmuls(lm_loss(model))
    assert partial == full - N_LINEAR, f"frozen block-0 Linears: {partial} matmuls, expected {full} - {N_LINEAR}"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert len(frozen) == 2 * N_LINEAR and all(model.get_submodule(n.rsplit(".", 1)[0]) for n in frozen)
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    assert all(p.grad is not None for n, p in model.named_parameters() if n not in frozen)

    # freezing only the weights (biases train, as in BitFit) saves the same matmuls: db is a sum
    model = build("gpt2")
    for lin in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj"):
        model.get_submodule(f"h.0.{lin}").weight.requires_grad_(False)
    assert backward_matmuls(lm_loss(model)) == full - N_LINEAR


def test_training_only_the_last_block_skips_the_frozen_blocks_entirely(backend):
    """Everything frozen except the last block: below it nothing needs a gradient, so the earlier
    blocks record no graph at all (no dW and no dx matmuls), and the tied head (wte frozen) only
    computes dh = G W."""
    L = 2
    model = build("gpt2")
    model.freeze()
    model.h[L - 1].requires_grad_(True)
    n = backward_matmuls(lm_loss(model))
    expected = 1 + (2 * N_LINEAR + ATTN_BWD)
    assert n == expected, f"{n} backward matmuls, expected {expected} (head dx + the last block)"
    for name, p in model.named_parameters():
        if name.startswith(f"h.{L - 1}."):
            assert p.grad is not None, name
        else:
            assert p.grad is None, f"frozen {name} got a gradient"


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_head_only_training_does_no_matmul_for_the_body(backend, arch):
    model = build(arch, n_labels=3)
    model.freeze()
    model.cls_head.requires_grad_(True)
    loss = ops.cross_entropy(model.classify(ids_of(2, 6), attention_mask=numpy.ones((2, 6), int)),
                             numpy.array([0, 2]))
    n = backward_matmuls(loss)
    assert n == 1, f"{arch}: a trainable classification head over a frozen body needs 1 matmul (dW), ran {n}"
    assert [nm for nm, p in model.named_parameters() if p.grad is not None] == ["cls_head.weight", "cls_head.bias"]


def test_lm_head_only_training(backend):
    # gpt2 with an untied LM head: only dW of the head
    model = build("gpt2", tie_embeddings=False)
    model.freeze()
    model.lm_head.requires_grad_(True)
    n = backward_matmuls(lm_loss(model))
    assert n == 1, f"gpt2 untied LM head only: {n} backward matmuls, expected 1"
    # bert MLM head (dense, LN, output bias) over a frozen body and frozen tied wte:
    # output layer dh = G wte (1), dense dW (1), no dx into the frozen body
    model = build("bert")
    model.freeze()
    for name in ("mlm_dense", "mlm_ln"):
        model.get_submodule(name).requires_grad_(True)
    model.mlm_bias.requires_grad_(True)
    loss = model(ids_of(2, 6), targets=numpy.where(ids_of(2, 6, seed=3) > 5, ids_of(2, 6), -100))[1]
    n = backward_matmuls(loss)
    assert n == 2, f"bert MLM head only: {n} backward matmuls, expected 2"
    assert sorted(nm for nm, p in model.named_parameters() if p.grad is not None) == \
        ["mlm_bias", "mlm_dense.bias", "mlm_dense.weight", "mlm_ln.bias", "mlm_ln.weight"]


def test_frozen_model_cannot_backward(backend):
    model = build("gpt2").freeze()
    with pytest.raises(RuntimeError, match="frozen"):
        lm_loss(model).backward()


# ----------------------------------------------------------------------------- input errors and config

def test_out_of_range_ids_name_the_bad_id(backend):
    model = build("gpt2")
    for bad in (11, 40, -1):
        ids = numpy.array([[1, 2, bad, 3]])
        with pytest.raises(ValueError) as e:
            model(ids)
        assert str(bad) in str(e.value) and "11" in str(e.value), str(e.value)
    with pytest.raises(ValueError, match="token_type_ids"):
        build("bert")(numpy.array([[1, 2]]), token_type_ids=numpy.array([[0, 5]]))
    with pytest.raises(TypeError, match="integers"):
        model(numpy.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"\(batch, tokens\)"):
        model(numpy.array([1, 2, 3]))


def test_too_long_sequences_raise(backend):
    model = build("gpt2")                                 # n_ctx 12
    with pytest.raises(ValueError) as e:
        model(ids_of(1, 13))
    assert "13" in str(e.value) and "n_ctx=12" in str(e.value), str(e.value)
    prompt = Tensor(B.to_device(numpy.zeros((1, 4, 8), numpy.float32)))
    with pytest.raises(ValueError, match="n_ctx=12"):
        model(ids_of(1, 10), prompt=prompt)               # 4 prompt + 10 tokens
    cache = model.new_cache()
    with minipeft.no_grad():
        model(ids_of(1, 12), cache=cache)
        with pytest.raises(ValueError, match="n_ctx=12"):
            model(ids_of(1, 1), cache=cache)              # the 13th position


def test_config_errors_and_round_trip():
    with pytest.raises(ValueError) as e:
        TransformerConfig(d_model=10, n_head=3)
    assert "10" in str(e.value) and "3" in str(e.value), str(e.value)
    with pytest.raises(ValueError, match="arch"):
        TransformerConfig(arch="t5")
    with pytest.raises(ValueError, match="n_layer"):
        TransformerConfig(n_layer=0)
    cfg = TransformerConfig(arch="bert", vocab_size=50, d_model=16, n_head=4, n_labels=2)
    assert cfg.d_ff == 64
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="n_layers"):
        TransformerConfig.from_dict({**cfg.to_dict(), "n_layers": 3})


def test_classify_without_head_raises():
    with pytest.raises(ValueError, match="n_labels"):
        build("gpt2").classify(ids_of(1, 3))


def test_linear_is_the_linear_layer():
    # the attention projections are plain Linear layers (PEFT methods replace them by name)
    model = build("gpt2")
    assert all(isinstance(model.get_submodule(f"h.0.attn.{x}"), Linear) for x in "qkvo")


def test_position_ids_give_each_row_its_own_positions(backend):
    """A left-padded row with positions counted from its first real token computes what the row
    computes alone (a soft prompt given with it takes positions 0 .. P-1 first)."""
    minipeft.manual_seed(0)
    m = Transformer(TransformerConfig(vocab_size=17, n_ctx=16, d_model=16, n_layer=2, n_head=2))
    soft = Tensor(B.rng.normal((1, 2, 16), std=1.0))
    with minipeft.no_grad():
        for prompt in (None, soft):
            alone = B.to_numpy(m.encode([[4, 5, 6]], prompt=prompt).data)
            padded = B.to_numpy(m.encode([[0, 0, 4, 5, 6]], attention_mask=[[0, 0, 1, 1, 1]],
                                         position_ids=[[0, 0, 0, 1, 2]], prompt=prompt).data)
            P = 0 if prompt is None else 2
            numpy.testing.assert_allclose(padded[:, P + 2:], alone[:, P:], rtol=1e-5, atol=1e-5)
            if P:
                numpy.testing.assert_allclose(padded[:, :P], alone[:, :P], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="position_ids has shape"):
        m.encode([[4, 5]], position_ids=[[0, 1, 2]])
    with pytest.raises(ValueError, match="n_ctx=16 positions"):
        m.encode([[4, 5]], position_ids=[[0, 16]])


def test_empty_ids_are_one_clear_error():
    m = Transformer(TransformerConfig(vocab_size=17, n_ctx=16, d_model=16, n_layer=1, n_head=2))
    for shape, what in (((1, 0), "no tokens"), ((0, 3), "no rows")):
        with pytest.raises(ValueError, match=what):
            m(numpy.zeros(shape, dtype=numpy.int64))


def test_bert_pooling_reads_the_cls_position(backend):
    """pooled = tanh(W h[:, 0] + b): the [CLS] position, not any other (each position differs here)."""
    minipeft.manual_seed(0)
    with B.default_dtype_as(numpy.float64):
        m = Transformer(TransformerConfig(arch="bert", vocab_size=11, n_ctx=8, d_model=8, n_layer=1, n_head=2,
                                          n_labels=2))
    with minipeft.no_grad():
        h = m.encode(numpy.array([[4, 5, 6, 7], [4, 8, 9, 3]]))
        got = B.to_numpy(m.pooled(h).data)
    H, W, b = (B.to_numpy(t) for t in (h.data, m.pooler.weight.data, m.pooler.bias.data))
    numpy.testing.assert_allclose(got, numpy.tanh(H[:, 0] @ W.T + b), rtol=1e-12, atol=1e-12)
    assert numpy.abs(numpy.tanh(H[:, 1] @ W.T + b) - got).max() > 1e-3     # another position would show


# ----------------------------------------------------------------------------- the work, where it happens

def test_a_backward_runs_no_product_outside_the_counted_matmul(backend):
    """Function.backward works on raw arrays: a `@` there would be a product backend.stats never
    counts (a dW computed that way and thrown away would pass the matmul-count tests above). Every
    product of a backward must go through backend.matmul or the attention op's counted blocks."""
    from backward_work import raw_products
    for arch in ("gpt2", "bert"):
        model = build(arch)
        loss = lm_loss(model)
        seen = raw_products(loss.backward)
        assert seen == [], f"{arch}: a plain `@` ran during the backward at {seen}"


def test_the_probe_sees_a_weight_gradient_computed_with_a_plain_matmul_and_thrown_away():
    """The mutation the matmul count cannot see: dW = G^T x with `@`, then dropped."""
    from backward_work import raw_products
    from minipeft.autograd import Function

    class Wasteful(Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return B.matmul(x, w.T)

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved
            gw = g.T @ x                                   # computed for a frozen weight ...
            return B.matmul(g, w), (gw if ctx.needs_input_grad[1] else None)   # ... and thrown away

    x = Tensor(numpy.ones((3, 4)), requires_grad=True)
    w = Tensor(numpy.ones((2, 4)), requires_grad=False)
    y = Wasteful.apply(x, w).sum()
    here = __file__.rsplit("/", 1)[0]
    seen = raw_products(y.backward, where=here)
    assert [line for _, line in seen] and all(f.endswith("test_transformer.py") for f, _ in seen), seen


def test_no_product_of_a_backward_has_the_shape_of_a_frozen_weight(monkeypatch):
    """Counted at numpy itself (every product ends there): with block 0's Linear weights frozen,
    no product of the backward yields an array shaped like one of them, while with them trainable
    the same backward computes their dW (so the probe can see what it looks for)."""
    from backward_work import product_shapes
    if B.name != "numpy":
        pytest.skip("counts the products at numpy, so it needs the NumPy backend")
    names = [f"h.0.{lin}.weight" for lin in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj")]

    def backward_shapes(freeze):
        model = build("gpt2")
        params = dict(model.named_parameters())
        for n in names:
            params[n].requires_grad_(not freeze)
        loss = lm_loss(model)
        return product_shapes(loss.backward, monkeypatch), {tuple(params[n].shape) for n in names}

    trained, shapes = backward_shapes(freeze=False)
    assert shapes <= set(trained), f"the probe did not see dW of {shapes - set(trained)}"
    frozen, _ = backward_shapes(freeze=True)
    # (block 1's Linear layers share the shapes and still train: count them, not their presence)
    want = {s: trained.count(s) - sum(tuple(dict(build("gpt2").named_parameters())[n].shape) == s for n in names)
            for s in shapes}
    got = {s: frozen.count(s) for s in shapes}
    assert got == want, f"products shaped like a frozen weight: {got}, expected only block 1's {want}"
