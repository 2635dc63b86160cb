"""Module bookkeeping (minipeft/nn/module.py): dotted names, tied parameters, sub-module lookup
and replacement, train/eval, freezing, parameter counts, state dicts.

PEFT methods find what to adapt by these dotted names and decide what trains by these flags,
so the bookkeeping is tested on its own, on toy modules and on the Transformer.
"""
from __future__ import annotations

import numpy
import pytest

import minipeft
from minipeft.nn import Dropout, Linear, Module, ModuleList, Parameter, Transformer, TransformerConfig

pytestmark = pytest.mark.task_nn

BLOCK_PARAMS = ["ln_1.weight", "ln_1.bias", "attn.q.weight", "attn.q.bias", "attn.k.weight",
                "attn.k.bias", "attn.v.weight", "attn.v.bias", "attn.o.weight", "attn.o.bias",
                "ln_2.weight", "ln_2.bias", "mlp.fc.weight", "mlp.fc.bias", "mlp.proj.weight",
                "mlp.proj.bias"]


def tiny(arch="gpt2", **kw):
    cfg = dict(arch=arch, vocab_size=13, n_ctx=8, d_model=8, n_layer=2, n_head=2)
    cfg.update(kw)
    return Transformer(TransformerConfig(**cfg))


def ids_of(*shape, high=13, seed=0):
    return numpy.random.default_rng(seed).integers(0, high, size=shape)


class Inner(Module):
    def __init__(self):
        self.lin = Linear(3, 2)
        self.gain = Parameter(numpy.ones(2))


class Toy(Module):
    def __init__(self):
        self.first = Linear(4, 3)
        self.inner = Inner()
        self.scale = Parameter(numpy.ones(1))
        self.note = "not a parameter"
        self.array = numpy.zeros(3)           # a plain array is not a parameter either

    def forward(self, x):
        return self.inner.lin(self.first(x)) * self.scale


# ----------------------------------------------------------------------------- names

def test_named_parameters_order_and_dotted_names_on_a_toy_module():
    # a module's own parameters come first, then each child's, children in the order they were set
    names = [n for n, _ in Toy().named_parameters()]
    assert names == ["scale", "first.weight", "first.bias", "inner.gain", "inner.lin.weight",
                     "inner.lin.bias"], names


def test_named_parameters_of_gpt2_follow_gpt2_names_in_order():
    model = tiny("gpt2")
    expected = ["wte.weight", "wpe.weight"] + [f"h.{i}.{n}" for i in range(2) for n in BLOCK_PARAMS] \
        + ["ln_f.weight", "ln_f.bias"]
    names = [n for n, _ in model.named_parameters()]
    assert names == expected, f"first difference at {next(i for i, (a, b) in enumerate(zip(names + [None] * 99, expected)) if a != b)}: {names}"
    assert model.get_submodule("h.1.attn.q").weight is dict(model.named_parameters())["h.1.attn.q.weight"]


def test_named_parameters_of_bert_with_classifier():
    model = tiny("bert", n_labels=3)
    names = [n for n, _ in model.named_parameters()]
    expected = ["mlm_bias", "wte.weight", "wpe.weight", "wtt.weight", "ln_emb.weight", "ln_emb.bias"] \
        + [f"h.{i}.{n}" for i in range(2) for n in BLOCK_PARAMS] \
        + ["mlm_dense.weight", "mlm_dense.bias", "mlm_ln.weight", "mlm_ln.bias", "pooler.weight",
           "pooler.bias", "cls_head.weight", "cls_head.bias"]
    assert names == expected, names
    assert len(set(names)) == len(names)


def test_tied_parameter_is_listed_once_under_its_first_name():
    toy = Toy()
    toy.copy = Linear(4, 3)
    toy.copy.weight = toy.first.weight            # tie: the same Parameter object twice
    names = [n for n, _ in toy.named_parameters()]
    assert "first.weight" in names and "copy.weight" not in names, names
    assert names.count("first.weight") == 1
    assert len(toy.parameters()) == len(names) == 7, names
    # counted once: 4*3 + 3 + 2 + 3*2 + 2 + 1 + (copy.bias) 3
    assert toy.num_parameters() == 12 + 3 + 2 + 6 + 2 + 1 + 3, toy.num_parameters()
    assert list(toy.state_dict()) == names


def test_gpt2_lm_head_is_the_token_embedding(backend):
    """Tied embeddings: there is no separate lm_head; the LM loss reaches every row of wte.weight,
    also rows of tokens that never appear in the input (they are output classes)."""
    model = tiny("gpt2")
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("lm_head") for n in names), names
    ids = numpy.array([[1, 2, 3, 1]])                 # tokens 0 and 4..12 never appear as inputs
    _, loss = model(ids, targets=numpy.array([[2, 3, 1, 2]]))
    loss.backward()
    g = minipeft.to_numpy(model.wte.weight.grad)
    unused_rows = numpy.abs(g[[0] + list(range(4, 13))]).sum(axis=1)
    assert (unused_rows > 0).all(), f"rows of tokens absent from the input got no LM-head gradient: {unused_rows}"

    untied = tiny("gpt2", tie_embeddings=False)
    assert "lm_head.weight" in dict(untied.named_parameters())
    assert untied.num_parameters() - model.num_parameters() == 13 * 8, \
        (untied.num_parameters(), model.num_parameters())


def test_named_modules_parents_first_with_dotted_paths():
    model = tiny("gpt2", n_layer=1)
    names = [n for n, _ in model.named_modules()]
    expected = ["", "wte", "wpe", "drop", "h", "h.0", "h.0.ln_1", "h.0.attn", "h.0.attn.q",
                "h.0.attn.k", "h.0.attn.v", "h.0.attn.o", "h.0.ln_2", "h.0.mlp", "h.0.mlp.fc",
                "h.0.mlp.proj", "h.0.drop", "ln_f"]
    assert names == expected, names
    mods = dict(model.named_modules())
    assert mods[""] is model and mods["h.0.mlp.fc"] is model.h[0].mlp.fc


# ----------------------------------------------------------------------------- get/set submodule

def test_get_submodule_returns_the_object_and_errors_list_existing_names():
    model = tiny("gpt2")
    assert model.get_submodule("h.1.attn.v") is model.h[1].attn.v
    assert model.get_submodule("") is model
    with pytest.raises(KeyError) as e:
        model.get_submodule("h.5.attn")
    msg = str(e.value)
    assert "'h.5.attn'" in msg and "'5'" in msg, msg
    for existing in ("h.0.attn.q", "h.1.mlp.fc", "ln_f"):
        assert existing in msg, f"the error should list existing module {existing!r}: {msg}"
    with pytest.raises(KeyError):
        model.get_submodule("h.0.attn.n_head")          # an attribute, but not a module


def test_set_submodule_replaces_and_the_new_module_is_used(backend):
    model = tiny("gpt2")
    ids = ids_of(2, 5)
    before, _ = model(ids)
    new = Linear(32, 8)                                  # d_ff = 4 d -> d
    new.weight.data = new.weight.data * 0
    model.set_submodule("h.1.mlp.proj", new)
    assert model.h[1].mlp.proj is new
    assert dict(model.named_parameters())["h.1.mlp.proj.weight"] is new.weight
    after, _ = model(ids)
    diff = float(numpy.abs(minipeft.to_numpy(after.data) - minipeft.to_numpy(before.data)).max())
    assert diff > 1e-6, f"replacing h.1.mlp.proj did not change the output (max diff {diff})"
    with pytest.raises(KeyError):
        model.set_submodule("h.1.mlp.nothing", Linear(8, 8))
    with pytest.raises(KeyError):
        model.set_submodule("h.7.mlp.proj", Linear(8, 8))


# ----------------------------------------------------------------------------- modes and freezing

def test_train_and_eval_propagate_to_every_module(backend):
    model = tiny("gpt2", dropout=0.5)
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for _, m in model.named_modules()), \
        [n for n, m in model.named_modules() if m.training]
    ids = ids_of(2, 6)
    a, b = model(ids)[0], model(ids)[0]
    assert numpy.array_equal(minipeft.to_numpy(a.data), minipeft.to_numpy(b.data)), "eval() must turn dropout off"
    model.h[0].train()                                   # a sub-tree can be switched alone
    assert model.h[0].drop.training and model.h[0].attn.q.training and not model.h[1].drop.training
    model.train()
    assert all(m.training for m in model.modules())
    a, b = model(ids)[0], model(ids)[0]
    diff = float(numpy.abs(minipeft.to_numpy(a.data) - minipeft.to_numpy(b.data)).max())
    assert diff > 1e-4, f"in training mode dropout(0.5) should make two calls differ (max diff {diff})"
    assert model.train(False) is model and not model.drop.training


def test_eval_mode_restores_each_modules_own_flag(backend):
    model = tiny(dropout=0.5)
    model.h[1].eval()                                    # a mixed tree: h.1 in eval, the rest training
    before = {n: m.training for n, m in model.named_modules()}
    assert not before["h.1"] and not before["h.1.drop"] and before[""] and before["h.0.drop"]
    with model.eval_mode() as m:
        assert m is model
        assert not any(m.training for m in model.modules()), \
            [n for n, m in model.named_modules() if m.training]
    assert {n: m.training for n, m in model.named_modules()} == before
    with pytest.raises(RuntimeError, match="inside"):    # restored when the block raises too
        with model.eval_mode():
            raise RuntimeError("inside")
    assert {n: m.training for n, m in model.named_modules()} == before
    model.eval()                                         # all in eval: stays all in eval
    with model.eval_mode():
        pass
    assert not any(m.training for m in model.modules())


def test_freeze_requires_grad_and_trainable_counts():
    model = tiny("gpt2")
    d, total = 8, model.num_parameters()
    assert model.num_parameters(trainable_only=True) == total
    assert model.freeze() is model
    assert all(not p.requires_grad for p in model.parameters())
    assert model.num_parameters(trainable_only=True) == 0
    assert model.trainable_parameters() == []
    assert model.num_parameters() == total, "freezing must not change the total count"
    model.h[1].requires_grad_(True)
    trainable = [n for n, _ in model.named_parameters(include_frozen=False)]
    assert trainable == [f"h.1.{n}" for n in BLOCK_PARAMS], trainable
    assert model.num_parameters(trainable_only=True) == 12 * d * d + 13 * d, \
        (model.num_parameters(trainable_only=True), 12 * d * d + 13 * d)
    assert len(model.trainable_parameters()) == len(BLOCK_PARAMS)
    model.requires_grad_(True)
    assert model.num_parameters(trainable_only=True) == total


def test_frozen_parameter_gets_no_grad_and_zero_grad_clears(backend):
    model = tiny("gpt2")
    model.wpe.freeze()
    model.h[0].attn.q.weight.requires_grad_(False)
    _, loss = model(ids_of(2, 5), targets=ids_of(2, 5, seed=1))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["wpe.weight"] is None and grads["h.0.attn.q.weight"] is None
    missing = [n for n, g in grads.items() if g is None and n not in ("wpe.weight", "h.0.attn.q.weight")]
    assert not missing, f"trainable parameters without a gradient: {missing}"
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_to_casts_every_parameter():
    model = tiny("bert", n_labels=2)
    assert {p.dtype for p in model.parameters()} == {numpy.dtype(numpy.float32)}
    model.to(numpy.float64)
    assert {p.dtype for p in model.parameters()} == {numpy.dtype(numpy.float64)}


def test_module_list_names_indexing_and_append():
    ml = ModuleList([Linear(2, 2), Linear(2, 3)])
    assert len(ml) == 2 and ml[-1].n_out == 3 and [m.n_out for m in ml] == [2, 3]
    ml.append(Dropout(0.1))
    assert len(ml) == 3 and [n for n, _ in ml.named_children()] == ["0", "1", "2"]
    assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    ml[0] = Linear(2, 5)
    assert ml[0].n_out == 5


def test_repr_shows_the_tree():
    text = repr(tiny("gpt2", n_layer=1))
    for piece in ("Transformer(", "(h): ModuleList(", "(q): Linear(8 -> 8, bias=True)", "(ln_f): LayerNorm(8"):
        assert piece in text, f"{piece!r} missing from repr:\n{text}"


def test_forward_not_defined_raises():
    with pytest.raises(NotImplementedError, match="Inner"):
        Inner()(1)


# ----------------------------------------------------------------------------- state dicts

def _np(a):
    return minipeft.to_numpy(a)


def test_state_dict_holds_the_parameter_arrays_in_name_order(backend):
    model = tiny("gpt2")
    sd = model.state_dict()
    assert list(sd) == [n for n, _ in model.named_parameters()]
    assert sd["h.0.attn.q.weight"] is model.h[0].attn.q.weight.data


def test_state_dict_round_trip_reproduces_the_model(backend):
    minipeft.manual_seed(1)
    a = tiny("bert", n_labels=2)
    minipeft.manual_seed(2)
    b = tiny("bert", n_labels=2)
    ids = ids_of(2, 6)
    la, lb = _np(a(ids)[0].data), _np(b(ids)[0].data)
    assert numpy.abs(la - lb).max() > 1e-4, "two seeds gave the same model: the test would prove nothing"
    host_state = {k: _np(v).copy() for k, v in a.state_dict().items()}
    b.load_state_dict(host_state)
    for name, p in b.named_parameters():
        assert numpy.array_equal(_np(p.data), host_state[name]), name
        assert p.dtype == numpy.float32, (name, p.dtype)
    assert numpy.array_equal(_np(b(ids)[0].data), la)
    assert numpy.array_equal(_np(b.classify(ids).data), _np(a.classify(ids).data))
    # loading copies: changing the source afterwards leaves the model alone
    host_state["wte.weight"][:] = 0
    assert numpy.abs(_np(b.wte.weight.data)).max() > 0


def test_strict_load_lists_every_problem_at_once(backend):
    from minipeft.checkpoint import CheckpointError
    model = tiny("gpt2")
    state = {k: _np(v).copy() for k, v in model.state_dict().items()}
    del state["h.1.mlp.fc.bias"]                                  # missing
    state["h.9.attn.q.weight"] = numpy.zeros((8, 8), numpy.float32)  # unexpected
    state["wpe.weight"] = numpy.zeros((4, 8), numpy.float32)      # wrong shape: (8, 8) expected
    state["ln_f.bias"] = state["ln_f.bias"].astype(numpy.float64)  # wrong dtype
    state["wte.weight"] = state["wte.weight"] + 1.0               # a good entry, must not be loaded
    before = _np(model.wte.weight.data).copy()
    with pytest.raises(CheckpointError) as e:
        model.load_state_dict(state)
    msg = str(e.value)
    for piece in ("h.1.mlp.fc.bias", "h.9.attn.q.weight", "wpe.weight", "(4, 8)", "(8, 8)", "ln_f.bias",
                  "float64", "float32"):
        assert piece in msg, f"{piece!r} missing from the strict-load error:\n{msg}"
    assert isinstance(e.value, ValueError)
    assert numpy.array_equal(_np(model.wte.weight.data), before), "a failed strict load must load nothing"


def test_non_strict_load_allows_missing_and_unexpected_keys_only(backend):
    from minipeft.checkpoint import CheckpointError
    model = tiny("gpt2")
    old_wpe = _np(model.wpe.weight.data).copy()
    state = {"wte.weight": numpy.full((13, 8), 0.5, numpy.float32),   # loaded
             "nonsense.weight": numpy.zeros(3, numpy.float32)}         # unknown: ignored
    model.load_state_dict(state, strict=False)                        # the rest is missing: fine
    assert numpy.array_equal(_np(model.wte.weight.data), state["wte.weight"])
    assert numpy.array_equal(_np(model.wpe.weight.data), old_wpe)
    # a wrong shape can never be loaded, strict or not, and nothing is loaded then
    bad = {"wte.weight": numpy.zeros((13, 8), numpy.float32), "wpe.weight": numpy.zeros((4, 8), numpy.float32)}
    with pytest.raises(CheckpointError, match="wpe.weight"):
        model.load_state_dict(bad, strict=False)
    assert numpy.array_equal(_np(model.wte.weight.data), state["wte.weight"])
