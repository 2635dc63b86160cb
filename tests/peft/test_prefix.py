"""Prefix-tuning (minipeft/peft/prefix.py) and the attention op's prefix_start (infix rows).

Every test asserts something that could fail: gradients against central differences, frozen base
weights, counts against the closed form, eject / save-load / per-sample routing / KV-cache
equivalences, the words initialisation, the infix's visibility, and clear config errors.
"""
from __future__ import annotations

import pytest

from minipeft import backend as B, ops
from minipeft.autograd import Tensor, no_grad
from minipeft.generate import greedy
from minipeft.gradcheck import gradcheck
from minipeft.peft import PeftModel, PrefixConfig, apply
from minipeft.peft import prefix as prefix_method

from soft_inputs import SEP, base_state, batch, train_to_token, trainable, wide

np = B.host()
pytestmark = pytest.mark.task_prefix


# ----------------------------------------------------------------------------- the attention op

def _ref(q, k, v, kp, vp, start):
    """softmax(Q [Kp; K]^T / sqrt(D) + mask) [Vp; V], causal, prefix row p blocked for i < start[p]."""
    Bn, H, T, D = q.shape
    P = kp.shape[2]
    kk = np.concatenate([np.broadcast_to(kp, (Bn, H, P, D)), k], axis=2)
    vv = np.concatenate([np.broadcast_to(vp, (Bn, H, P, D)), v], axis=2)
    s = q @ kk.swapaxes(-1, -2) / np.sqrt(D)
    i = np.arange(T)
    blocked = np.concatenate([np.broadcast_to(i[None, :, None] < start[:, None, :], (Bn, T, P)),
                              np.broadcast_to(i[None, None, :] > i[None, :, None], (Bn, T, T))], axis=-1)
    s = np.where(blocked[:, None], -np.inf, s)
    a = np.exp(s - s.max(-1, keepdims=True))
    return (a / a.sum(-1, keepdims=True)) @ vv


@pytest.mark.task_fused
def test_attention_prefix_start_matches_reference_and_gradcheck(backend, rand):
    q, k, v = rand(2, 2, 5, 4, name="q"), rand(2, 2, 5, 4, name="k"), rand(2, 2, 5, 4, name="v")
    kp, vp = rand(1, 2, 3, 4, name="k_prefix"), rand(1, 2, 3, 4, name="v_prefix")
    start = np.array([[0, 2, 2], [4, 4, 1 << 40]])               # per sample, per row; last row never
    out = ops.attention(q, k, v, kp, vp, causal=True, prefix_start=start)
    ref = _ref(*(t.numpy() for t in (q, k, v, kp, vp)), start)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-12)
    gradcheck(lambda *ts: ops.attention(*ts, causal=True, prefix_start=start), q, k, v, kp, vp,
              name="attention with prefix_start")
    # start 0 everywhere is a plain prefix; "never" everywhere is no prefix at all
    plain = ops.attention(q, k, v, kp, vp, causal=True).numpy()
    np.testing.assert_array_equal(ops.attention(q, k, v, kp, vp, prefix_start=np.zeros((1, 3), int)).numpy(), plain)
    none = ops.attention(q, k, v, kp, vp, prefix_start=np.full((1, 3), 1 << 40)).numpy()
    np.testing.assert_allclose(none, ops.attention(q, k, v).numpy(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="prefix_start has shape"):
        ops.attention(q, k, v, kp, vp, prefix_start=np.zeros((2, 2), int))


# ----------------------------------------------------------------------------- gradients, training

@pytest.mark.parametrize("arch", ["gpt2", "bert"])
@pytest.mark.parametrize("projection", [True, False])
def test_gradcheck_end_to_end(backend, arch, projection):
    pm = apply(wide(arch), PrefixConfig(num_virtual_tokens=3, prefix_projection=projection, encoder_hidden_size=8))
    ids = batch(2, 5)
    params = trainable(pm)
    assert len(params) == (5 if projection else 1)
    gradcheck(lambda *_: pm(ids)[0], *params, max_per_input=6, name=f"prefix {arch}")


@pytest.mark.parametrize("projection", [True, False])
def test_training_changes_only_the_prefix_and_lowers_the_loss(backend, projection):
    model = wide(dtype=np.float32, scale=5.0)              # weights of a trained model's size, not 0.02
    before = base_state(model)
    pm = apply(model, PrefixConfig(num_virtual_tokens=4, encoder_hidden_size=32, prefix_projection=projection))
    losses = train_to_token(pm, 42)                        # the task: always predict token 42
    assert losses[-1] < losses[0] - 0.3, losses
    after = base_state(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a frozen base weight changed"


# ----------------------------------------------------------------------------- counts and eject

@pytest.mark.parametrize("cfg", [PrefixConfig(num_virtual_tokens=5, encoder_hidden_size=12),
                                 PrefixConfig(num_virtual_tokens=4, prefix_projection=False),
                                 PrefixConfig(num_virtual_tokens=3, encoder_hidden_size=7, layers=(1,),
                                              modules_to_save=("cls_head",))])
def test_counted_parameters_equal_formula_before_and_after_eject(backend, cfg):
    model = wide(n_labels=3)
    mc = model.config
    pm = apply(model, cfg)
    f = prefix_method.formula(mc, cfg)
    n, P, d, mid = len(cfg.layers or range(mc.n_layer)), cfg.num_virtual_tokens, mc.d_model, cfg.encoder_hidden_size
    heads = (d * 3 + 3) if cfg.modules_to_save else 0
    assert f["kept"] == 2 * n * P * d + heads                            # L_p * 2 * n_layer * d
    mlp = P * d + d * mid + mid + mid * 2 * n * d + 2 * n * d
    assert f["trainable"] == (mlp if cfg.prefix_projection else 2 * n * P * d) + heads
    assert sum(p.size for p in pm.adapter_parameters("default").values()) == f["trainable"]
    assert pm.trainable_summary()["trainable"] == f["trainable"]
    text = pm.print_trainable_parameters()
    assert f"{f['trainable']:,} trained / {f['kept']:,} kept" in text
    if cfg.prefix_projection:
        prefix_method.eject(pm, "default")
        assert sum(p.size for p in pm.adapter_parameters("default").values()) == f["kept"]
        assert pm.trainable_summary()["trainable"] == f["kept"]


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_eject_keeps_outputs_identical(backend, arch):
    pm = apply(wide(arch), PrefixConfig(num_virtual_tokens=4, encoder_hidden_size=10))
    ids = batch(2, 6)
    before = pm(ids)[0].numpy()
    p = prefix_method.eject(pm, "default")
    assert p.shape == (4, 2 * 2 * 16) and p.requires_grad
    assert pm.peft_config["default"].prefix_projection is False
    np.testing.assert_array_equal(pm(ids)[0].numpy(), before)
    with pytest.raises(ValueError, match="no MLP to drop"):
        prefix_method.eject(pm, "default")


@pytest.mark.parametrize("projection", [True, False])
def test_save_load_round_trip_reproduces_outputs(backend, tmp_path, projection):
    pm = apply(wide(), PrefixConfig(num_virtual_tokens=3, prefix_projection=projection, encoder_hidden_size=8))
    for p in trainable(pm):                                   # move away from the initial values
        p.data = p.data + B.rng.normal(p.shape, std=0.1, dtype=p.dtype)
    ids = batch(2, 6)
    out = pm(ids)[0].numpy()
    pm.save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(wide(), str(tmp_path))           # same seed: same base
    np.testing.assert_array_equal(loaded(ids)[0].numpy(), out)
    assert not any(p.requires_grad for p in loaded.parameters())         # loaded frozen, as in HF
    if projection:
        prefix_method.eject(pm, "default")                                # the ejected form travels too
    pm.save_pretrained(str(tmp_path / "ejected"))
    again = PeftModel.from_pretrained(wide(), str(tmp_path / "ejected"))
    assert list(again.adapter_parameters("default")) == ["inputs.prompt_embeddings"]
    np.testing.assert_allclose(again(ids)[0].numpy(), out, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- several adapters

def _alone(pm, ids, names):
    rows = []
    for i, n in enumerate(names):
        if n is None:
            with pm.disable_adapter():
                rows.append(pm(ids[i:i + 1])[0].numpy())
        else:
            pm.set_adapter(n)
            rows.append(pm(ids[i:i + 1])[0].numpy())
    return np.concatenate(rows)


def test_per_sample_routing_equals_each_sample_alone(backend):
    pm = apply(wide(), PrefixConfig(num_virtual_tokens=3, encoder_hidden_size=8))
    pm.add_adapter("short", PrefixConfig(num_virtual_tokens=2, prefix_projection=False))
    pm.add_adapter("top", PrefixConfig(num_virtual_tokens=4, prefix_projection=False, layers=(1,)))
    pm.add_adapter("infix", PrefixConfig(num_virtual_tokens=2, variant="infix", infix_token=SEP))
    ids = batch(6, 7, sep_at=[2, 3, 1, 4, 2, 5])
    names = ["default", "short", None, "infix", "top", "default"]
    mixed = pm(ids, adapter_names=names)[0].numpy()
    np.testing.assert_allclose(mixed, _alone(pm, ids, names), rtol=1e-10, atol=1e-12)
    gradcheck(lambda *_: pm(ids, adapter_names=names)[0], *trainable(pm), max_per_input=3, name="routed")


def test_active_adapters_concatenate_along_P(backend):
    pm = apply(wide(), PrefixConfig(num_virtual_tokens=3, encoder_hidden_size=8))
    pm.add_adapter("b", PrefixConfig(num_virtual_tokens=2, prefix_projection=False))
    pm.set_adapter(["default", "b"])
    ids = batch(2, 5)
    a, b = prefix_method.per_layer(pm, "default"), prefix_method.per_layer(pm, "b")
    manual = [(ops.concat([a[l][0], b[l][0]], axis=2), ops.concat([a[l][1], b[l][1]], axis=2)) for l in range(2)]
    expected = pm.model.lm_logits(pm.model.encode(ids, prefix=manual)).numpy()
    np.testing.assert_array_equal(pm(ids)[0].numpy(), expected)
    assert not np.allclose(expected, (pm.set_adapter("default"), pm(ids)[0].numpy())[1])


def test_a_callers_prefix_joins_a_layer_subset_or_infix_adapter(backend):
    """pm.encode(ids, prefix=...) while a prefix adapter is active: the caller's rows come first,
    then the adapter's, in every layer that has them; an infix keeps its visibility."""
    gen = np.random.default_rng(5)
    extra = [(Tensor(B.to_device(gen.normal(size=(1, 2, 2, 8)))), Tensor(B.to_device(gen.normal(size=(1, 2, 2, 8)))))
             for _ in range(2)]                                                # (1, H, 2, D) per layer
    pm = apply(wide(), PrefixConfig(num_virtual_tokens=3, prefix_projection=False, layers=(1,)))
    ids = batch(3, 6, sep_at=[1, 2, 4])
    kv = prefix_method.per_layer(pm, "default")
    manual = [extra[0], (ops.concat([extra[1][0], kv[1][0]], axis=2), ops.concat([extra[1][1], kv[1][1]], axis=2))]
    np.testing.assert_array_equal(pm.encode(ids, prefix=extra).numpy(), pm.model.encode(ids, prefix=manual).numpy())
    pm.add_adapter("infix", PrefixConfig(num_virtual_tokens=2, prefix_projection=False, variant="infix",
                                         infix_token=SEP))
    pm.set_adapter("infix")
    kv = prefix_method.per_layer(pm, "infix")
    start = np.concatenate([np.zeros((3, 2), dtype=np.int64), np.repeat(np.array([[1], [2], [4]]), 2, axis=1)], axis=1)
    manual = [(ops.concat([extra[l][0], kv[l][0]], axis=2), ops.concat([extra[l][1], kv[l][1]], axis=2), start)
              for l in range(2)]
    got = pm.encode(ids, prefix=extra).numpy()
    np.testing.assert_array_equal(got, pm.model.encode(ids, prefix=manual).numpy())
    assert not np.allclose(got, pm.encode(ids).numpy())                        # the caller's rows count


# ----------------------------------------------------------------------------- generation

@pytest.mark.parametrize("variant", ["prefix", "infix"])
def test_cached_greedy_equals_uncached(backend, variant):
    pm = apply(wide(scale=30.0, dtype=np.float32), PrefixConfig(num_virtual_tokens=3, encoder_hidden_size=8,
                                                                variant=variant, infix_token=SEP))
    with no_grad():
        for p in trainable(pm):
            p.data = p.data * 3
    prompts = [[9, 12, SEP], [40, 5, SEP], [7, SEP, 20, 21]]
    cached = greedy(pm, prompts, max_new_tokens=6, use_cache=True)
    assert cached == greedy(pm, prompts, max_new_tokens=6, use_cache=False)
    with pm.disable_adapter():
        assert cached != greedy(pm, prompts, max_new_tokens=6)          # the prefix matters
    pm.add_adapter("other", PrefixConfig(num_virtual_tokens=2, prefix_projection=False, variant=variant,
                                         infix_token=SEP))
    names, cache, ids = ["other", "default"], pm.new_cache(), prompts[:2]
    with no_grad():                                                    # routed, two cached steps
        h = pm.encode(ids, cache=cache, adapter_names=names)
        nxt = [[int(t)] for t in np.argmax(B.to_numpy(pm.lm_logits(h[:, -1:]).data[:, 0]), axis=-1)]
        h2 = pm.encode(nxt, cache=cache, adapter_names=names)
        full = pm.encode([a + b for a, b in zip(ids, nxt)], adapter_names=names)
    np.testing.assert_allclose(h2.numpy()[:, 0], full.numpy()[:, -1], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- infix

def test_infix_is_seen_only_from_the_separator_on(backend):
    model = wide()
    pm = apply(model, PrefixConfig(num_virtual_tokens=2, prefix_projection=False, variant="infix", infix_token=SEP))
    seps = [2, 4, 0]
    ids = batch(3, 7, sep_at=seps)
    ids[2, 5] = SEP                                                       # only the first one counts
    h = pm.encode(ids).numpy()
    base = model.encode(ids).numpy()
    for b, s in enumerate(seps):
        np.testing.assert_array_equal(h[b, :s], base[b, :s])             # the source x: untouched
        assert np.abs(h[b, s:] - base[b, s:]).max(axis=-1).min() > 1e-6    # the separator and y: changed
    # an infix before the very first token is a prefix: every token sees it
    kv = prefix_method.per_layer(pm, "default")
    as_prefix = model.encode(ids[2:], prefix=[kv[0], kv[1]]).numpy()
    np.testing.assert_allclose(h[2:], as_prefix, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="sample\\(s\\) \\[1\\] have none"):
        pm(np.array([[9, SEP, 9], [9, 9, 9]]))


# ----------------------------------------------------------------------------- initialisation

@pytest.mark.parametrize("projection", [False, True])
def test_words_init_starts_at_the_words_activations(backend, tokenizer_path, projection):
    from minipeft.data.tokenizer import Tokenizer
    model = wide()
    cfg = PrefixConfig(num_virtual_tokens=5, prefix_projection=projection, encoder_hidden_size=16,
                       init="words", init_text="table to text", tokenizer_path=tokenizer_path)
    pm = apply(model, cfg)
    ids = Tokenizer.from_file(tokenizer_path).encode("table to text")      # 3 tokens, repeated to 5
    ids = (ids * 2)[:5]
    cache = model.new_cache()
    model.encode([ids], cache=cache)
    got = prefix_method.per_layer(pm, "default")
    for l in range(2):
        np.testing.assert_allclose(got[l][0].numpy(), B.to_numpy(cache[l]["k"]), rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(got[l][1].numpy(), B.to_numpy(cache[l]["v"]), rtol=1e-7, atol=1e-9)


def test_random_init_distribution(backend):
    pm = apply(wide(), PrefixConfig(num_virtual_tokens=64, prefix_projection=False))
    theta = pm.inputs["default"].prompt_embeddings.numpy()              # N(0, 1), documented
    assert abs(theta.mean()) < 0.05 and abs(theta.std() - 1.0) < 0.05
    pm2 = apply(wide(), PrefixConfig(num_virtual_tokens=64))
    e = pm2.inputs["default"].embedding.weight.numpy()                  # P' ~ N(0, 1)
    assert abs(e.std() - 1.0) < 0.05


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kw, match", [
    (dict(num_virtual_tokens=0), "num_virtual_tokens must be a positive integer"),
    (dict(num_virtual_tokens=2.5), "num_virtual_tokens must be a positive integer"),
    (dict(encoder_hidden_size=0), "encoder_hidden_size must be a positive integer"),
    (dict(init="zeros"), "init must be 'random' or 'words'"),
    (dict(init="words"), "needs init_text"),
    (dict(init_text="table"), "only used with init='words'"),
    (dict(init="words", init_text="x", num_virtual_tokens=9, encoder_hidden_size=4), "encoder_hidden_size >= num"),
    (dict(variant="suffix"), "variant must be 'prefix' or 'infix'"),
    (dict(variant="infix"), "needs infix_token"),
    (dict(layers=()), "layers is empty"),
])
def test_config_errors_are_clear(kw, match):
    with pytest.raises(ValueError, match=match):
        PrefixConfig(**kw)


def test_model_dependent_errors(backend):
    with pytest.raises(ValueError, match="model has layers 0..1"):
        apply(wide(), PrefixConfig(layers=(0, 5)))
    with pytest.raises(ValueError, match="needs a causal model"):
        apply(wide("bert"), PrefixConfig(variant="infix", infix_token=SEP))
