"""PASTA (minipeft/peft/pasta.py) and its mechanism, Transformer.encode(block_inputs=...).

The contract tests (test_contract.py) run PASTA's defaults; here: the mechanism's default path,
the ablations (count and behaviour), the exact start at init_std=0, gradients of every variant,
errors.
"""
from __future__ import annotations

import numpy
import pytest

from minipeft import ops
from minipeft.autograd import no_grad
from minipeft.gradcheck import gradcheck
from minipeft.peft import apply, registry
from minipeft.peft.pasta import PastaConfig, encode_inputs
from minipeft.peft.routing import route_of

pytestmark = pytest.mark.task_api

CLS, SEP = 4, 3
IDS = numpy.array([[CLS, 7, 8, SEP, 9, SEP], [7, 8, CLS, 9, 10, 11]])          # (2, 6)
ABLATIONS = {"both": PastaConfig(), "no_cls": PastaConfig(cls_token=None),
             "no_sep": PastaConfig(sep_token=None), "shared": PastaConfig(shared=True)}


def test_block_inputs_none_is_the_plain_forward(tiny, arch):
    model = tiny.model(arch)
    plain = tiny.np(model.encode(IDS))
    assert numpy.array_equal(tiny.np(model.encode(IDS, block_inputs=None)), plain)
    assert numpy.array_equal(tiny.np(model.encode(IDS, block_inputs=[None] * model.config.n_layer)), plain)
    zeros = [tiny.tensor(numpy.zeros((1, 6, 8)))] * model.config.n_layer
    assert numpy.array_equal(tiny.np(model.encode(IDS, block_inputs=zeros)), plain)


def test_block_inputs_are_added_before_the_block(tiny):
    """An addition before block 0 equals the same addition to the embeddings (pre-LN gpt2)."""
    model = tiny.model("gpt2")
    a = numpy.random.default_rng(0).normal(size=(2, 6, 8))
    got = model.encode(IDS, block_inputs=[tiny.tensor(a), None])
    x = model.embed(IDS) + tiny.tensor(a)
    for block in model.h:
        x = block(x)
    assert abs(tiny.np(got) - tiny.np(model.ln_f(x))).max() < 1e-12
    with pytest.raises(ValueError, match=r"block_inputs entry has shape \(2, 7, 8\)"):
        model.encode(IDS, block_inputs=[tiny.tensor(numpy.zeros((2, 7, 8))), None])


@pytest.mark.parametrize("kind", list(ABLATIONS))
def test_count_is_L_S_d(tiny, kind):
    cfg = ABLATIONS[kind]
    S = {"both": 2, "no_cls": 1, "no_sep": 1, "shared": 1}[kind]
    pm = apply(tiny.model("bert"), cfg)
    assert cfg.n_vectors == S
    assert sum(p.size for p in pm.trainable_parameters()) == 2 * S * 8 == pasta_formula(pm, cfg)
    big = registry.METHODS["pasta"].formula(tiny.config("bert", n_layer=24, d_model=1024, n_head=16), cfg)
    assert big["trainable"] == 24 * S * 1024          # BERT-large, both: 49,152


def pasta_formula(pm, cfg):
    return registry.METHODS["pasta"].formula(pm.config, cfg)["trainable"]


@pytest.mark.parametrize("kind", list(ABLATIONS))
def test_vectors_land_on_their_special_tokens_only(tiny, kind):
    cfg = ABLATIONS[kind]
    pm = apply(tiny.model("bert"), cfg)
    tiny.perturb(pm)
    adds = encode_inputs(pm, route_of(pm, None, 2), 2, ids=IDS)["block_inputs"]
    for j, a in enumerate(adds):
        a, m = tiny.np(a), tiny.np(pm.inputs["default"].special_token_embedding[j].weight)
        for b, t in numpy.ndindex(IDS.shape):
            tok = IDS[b, t]
            if tok in cfg.tokens:
                want = m[0] if cfg.shared else m[cfg.tokens.index(tok)]
                assert numpy.array_equal(a[b, t], want), (kind, j, b, t)
            else:                                   # ordinary tokens, and the ablated special token
                assert not a[b, t].any(), f"{kind}: position {(b, t)} (token {tok}) was changed"
    if kind == "shared":
        assert numpy.array_equal(tiny.np(adds[0])[0, 0], tiny.np(adds[0])[0, 3])


def test_without_sep_the_sep_positions_are_untouched(tiny):
    """Causal model: everything before the first adapted special token is the base model's."""
    model = tiny.model("gpt2")
    ids = numpy.array([[7, 8, SEP, 9, CLS, 10]])
    base = tiny.np(model.encode(ids))
    for cfg, first in ((PastaConfig(sep_token=None), 4), (PastaConfig(cls_token=None), 2), (PastaConfig(), 2)):
        pm = apply(model, cfg)
        tiny.perturb(pm)
        h = tiny.np(pm.encode(ids))
        assert numpy.array_equal(h[:, :first], base[:, :first]), cfg
        assert abs(h[:, first] - base[:, first]).max() > 1e-3, cfg
        pm.delete_adapter("default")


def test_init_std_zero_starts_at_the_base_model(tiny, arch):
    model = tiny.model(arch, n_labels=3)
    base = tiny.np(model(IDS)[0]), tiny.np(model.classify(IDS))
    pm = apply(model, PastaConfig(init_std=0.0))
    assert numpy.array_equal(tiny.np(pm(IDS)[0]), base[0]) and numpy.array_equal(tiny.np(pm.classify(IDS)), base[1])
    pm2 = apply(tiny.model(arch, n_labels=3), PastaConfig())
    assert abs(tiny.np(pm2(IDS)[0]) - base[0]).max() > 1e-4, "init_std=0.02 moves the special tokens"


@pytest.mark.parametrize("kind", list(ABLATIONS))
def test_gradcheck_every_variant(tiny, arch, kind):
    pm = apply(tiny.model(arch, n_labels=3), ABLATIONS[kind])
    tiny.perturb(pm)
    y = numpy.array([0, 2])
    loss = lambda *_: ops.cross_entropy(pm.classify(IDS), y)  # noqa: E731
    assert gradcheck(loss, *pm.trainable_parameters(), name=f"pasta {kind} {arch}") < 1e-6


def test_a_kv_cache_step_adds_the_vector_to_a_new_special_token(tiny):
    pm = apply(tiny.model("gpt2"), PastaConfig())
    tiny.perturb(pm)
    ids = numpy.array([[7, 8, CLS, 9, SEP]])
    with no_grad():
        full = tiny.np(pm.encode(ids))
        cache = pm.new_cache()
        pm.encode(ids[:, :3], cache=cache)
        step = tiny.np(pm.encode(ids[:, 3:], cache=cache))
    assert abs(step - full[:, 3:]).max() < 1e-12


def test_errors(tiny):
    with pytest.raises(ValueError, match="both None"):
        PastaConfig(cls_token=None, sep_token=None)
    with pytest.raises(ValueError, match="cls_token and sep_token are both 3"):
        PastaConfig(cls_token=3, sep_token=3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        apply(tiny.model("bert"), PastaConfig(cls_token=101, sep_token=102))
