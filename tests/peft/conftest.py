"""Shared fixtures and markers of the PEFT tests (the backend fixture lives in tests/conftest.py).

    pytest -m task_api       the PEFT API: named adapters, routing, modules_to_save, save/load,
                             config errors, optimizer state, every method lowers the loss
    pytest -m task_lora      LoRA: gradients, exact start, scaling, merge/unmerge, HF file layout
    pytest -m task_adapter   bottleneck adapters: Houlsby, Pfeiffer, parallel (ffn/attn)
    pytest -m task_bitfit    BitFit and full fine-tuning (top-k layers, layer-wise lr decay)
    pytest -m task_count     parameter counts: formula vs counted, print_trainable_parameters,
                             `minipeft count` against the published arithmetic
    pytest -m task_prefix    prefix tuning (MLP reparametrisation, infix, layer subsets, cache)
    pytest -m task_prompt    prompt tuning (the three inits, routing, cached decoding)
    pytest -m task_ia3       IA3: exact start, scaled layers, gradients, merge/unmerge, counts

Models are tiny (vocab 13, d 8, 2 layers, 2 heads) in both layouts, arch="gpt2" and arch="bert".
The `tiny` fixture runs its test in float64 (gradient checks, exact comparisons) on every backend;
`tiny32` runs it in float32 (file sizes, optimizer bytes). The default dtype must be set before a
PEFT method is applied: the method's new parameters (LoRA A/B, adapter weights) take it.

    def test_x(tiny, arch):
        model = tiny.model(arch, n_labels=3)        # parameters moved off their initial values
        pm = apply(model, LoraConfig(r=2))
        tiny.perturb(pm)                            # B != 0, so the adapter does something
        logits, _ = pm(tiny.ids())
"""
from __future__ import annotations

import numpy
import pytest

import minipeft
from minipeft import backend as _backend
from minipeft.autograd import Tensor
from minipeft.nn import Transformer, TransformerConfig

PEFT_MARKERS = {
    "task_api": "the PEFT API: apply, named adapters, per-sample routing (inference and training), "
                "modules_to_save, save/load, config errors, optimizer state, loss goes down",
    "task_lora": "LoRA: gradient checks, exact start, scaling, dropout, merge/unmerge, HF file layout",
    "task_adapter": "bottleneck adapters: Houlsby, Pfeiffer, parallel (ffn/attn), near-identity start",
    "task_bitfit": "BitFit (biases, LayerNorm gains) and full fine-tuning (top-k layers, lr decay)",
    "task_count": "parameter counts: formula vs counted, print_trainable_parameters, minipeft count",
    "task_sparse": "W = W0 + Delta methods: sparse deltas, diff pruning, LT-SFT, FISH, Child-Tuning",
    "task_ia3": "IA3: exact start, scaled layers, gradient checks, no weight-gradient matmul, merge/unmerge",
    "task_prefix": "prefix tuning: gradients, the MLP reparametrisation, infix rows, layer subsets, cache",
    "task_prompt": "prompt tuning: gradients, the three inits, routing, several prompts, cached decoding",
}

SMALL = dict(vocab_size=13, n_ctx=12, d_model=8, n_layer=2, n_head=2)
ARCHS = ("gpt2", "bert")


def pytest_configure(config):
    for name, what in PEFT_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")


class Tiny:
    """Tiny models and inputs on the current backend, in the current default dtype."""

    vocab = SMALL["vocab_size"]

    def __init__(self, backend):
        self.backend = backend

    def config(self, arch="gpt2", **kw) -> TransformerConfig:
        return TransformerConfig(arch=arch, **{**SMALL, **kw})

    def model(self, arch="gpt2", seed=0, spread=0.3, **kw) -> Transformer:
        """A tiny Transformer whose parameters are moved off GPT-2 init (N(0, spread) added), so
        that every path carries a sizeable gradient. Same seed, same weights."""
        minipeft.manual_seed(seed)
        model = Transformer(self.config(arch, **kw))
        gen = numpy.random.default_rng(seed + 1000)
        dtype = _backend.default_dtype()
        for name, p in model.named_parameters():
            p.data = p.data + _backend.to_device(gen.normal(0.0, spread, size=p.shape).astype(dtype))
            p.name = name
        return model

    def ids(self, batch=4, tokens=5, seed=0):
        """Host token ids (batch, tokens)."""
        return numpy.random.default_rng(seed).integers(0, self.vocab, size=(batch, tokens))

    def labels(self, batch=4, n_labels=3, seed=0):
        return numpy.random.default_rng(seed + 7).integers(0, n_labels, size=batch)

    def perturb(self, pm_or_params, std=0.3, seed=1):
        """Move every trainable parameter off its initial value (LoRA's B = 0, adapters' 1e-3
        weights), so that the method visibly changes the model and its gradients are not zero."""
        params = pm_or_params.trainable_parameters() if hasattr(pm_or_params, "trainable_parameters") \
            else list(pm_or_params)
        gen = numpy.random.default_rng(seed)
        for p in params:
            p.data = p.data + _backend.to_device(gen.normal(0.0, std, size=p.shape).astype(p.data.dtype))
        return params

    @staticmethod
    def np(t) -> numpy.ndarray:
        """A host copy of a Tensor or array."""
        return numpy.array(minipeft.to_numpy(t.data if isinstance(t, Tensor) else t))

    def snapshot(self, module) -> dict:
        """name -> host copy of every parameter (for bit-identical comparisons after training)."""
        return {n: self.np(p) for n, p in module.named_parameters()}

    @staticmethod
    def maxdiff(a, b) -> float:
        a, b = Tiny.np(a), Tiny.np(b)
        assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
        return float(numpy.abs(a - b).max()) if a.size else 0.0

    def tensor(self, a) -> Tensor:
        return Tensor(_backend.to_device(numpy.asarray(a, dtype=_backend.default_dtype())))


@pytest.fixture(params=ARCHS)
def arch(request):
    """Both layouts: "gpt2" (pre-LN causal decoder) and "bert" (post-LN encoder, MLM head, pooler)."""
    return request.param


@pytest.fixture
def tiny(backend):
    """Tiny models in float64 on the test's backend (see `Tiny`)."""
    with _backend.default_dtype_as(numpy.float64):
        yield Tiny(backend)


@pytest.fixture
def tiny32(backend):
    """Tiny models in float32 on the test's backend (see `Tiny`)."""
    with _backend.default_dtype_as(numpy.float32):
        yield Tiny(backend)


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory):
    """A small BPE tokenizer (291 ids) trained on a few sentences, for the init-from-text tests."""
    from minipeft.data.tokenizer import train_tokenizer
    d = tmp_path_factory.mktemp("tok")
    (d / "c.txt").write_text("table to text\nthe movie was great\nthe movie was terrible\n" * 20)
    train_tokenizer(d / "c.txt", vocab_size=300, out_path=d / "tokenizer.json")
    return str(d / "tokenizer.json")
