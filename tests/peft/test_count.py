"""Parameter counting: formulas vs counted, print_trainable_parameters, `minipeft count`.

- every method's closed-form `formula(...)["trainable"]` equals the parameters that actually
  train on tiny models of both layouts and two shapes (ranks, targets incl. fc/proj, layer
  subsets, adapter sizes and placements, BitFit's LayerNorm option, top-k, embeddings frozen,
  with and without a classification head in modules_to_save);
- `print_trainable_parameters()` prints `trainable params: N || all params: M || trainable%: P`
  with HF's denominator (M includes the adapter);
- `count_params` and the CLI reproduce the published counts (the papers' tables, named in
  PUBLISHED; Hugging Face's totals in BASE_TOTALS) for the real-size architectures, and bad
  arguments exit with status 2 and one `minipeft: error:` line.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from minipeft import cli, peft
from minipeft.cli import count_params
from minipeft.peft import AdapterConfig, BitFitConfig, FullConfig, LoraConfig, api, apply
from minipeft.peft.count import ARCHS, base_params, block_params, head_params

pytestmark = pytest.mark.task_count

SHAPES = {
    "d8_L2": dict(),
    "d16_L3_ff24_untied": dict(vocab_size=17, d_model=16, n_layer=3, n_head=2, d_ff=24, tie_embeddings=False),
}
HEAD = ("cls_head",)
CONFIGS = {
    "lora_r1_qv": lambda h: LoraConfig(r=1, modules_to_save=h),
    "lora_r4_ko": lambda h: LoraConfig(r=4, target_modules=("k", "o"), modules_to_save=h),
    "lora_r2_fc_proj": lambda h: LoraConfig(r=2, target_modules=("fc", "proj"), modules_to_save=h),
    "lora_r3_all_layer1": lambda h: LoraConfig(r=3, target_modules=("q", "k", "v", "o", "fc", "proj"), layers=(1,),
                                               use_rslora=True, modules_to_save=h),
    "lora_r2_v_layer0": lambda h: LoraConfig(r=2, target_modules=("v",), layers=(0,), modules_to_save=h),
    "houlsby_m1": lambda h: AdapterConfig(size=1, modules_to_save=h),
    "houlsby_m5_layer1": lambda h: AdapterConfig(size=5, layers=(1,), modules_to_save=h),
    "pfeiffer_m3": lambda h: AdapterConfig(size=3, placement="pfeiffer", modules_to_save=h),
    "parallel_ffn_m4": lambda h: AdapterConfig(size=4, placement="parallel", scaling=4.0, modules_to_save=h),
    "parallel_attn_m2": lambda h: AdapterConfig(size=2, placement="parallel", parallel_site="attn", modules_to_save=h),
    "bitfit": lambda h: BitFitConfig(modules_to_save=h),
    "bitfit_ln": lambda h: BitFitConfig(with_layernorm=True, modules_to_save=h),
    "full": lambda h: FullConfig(),
    "full_no_embeddings": lambda h: FullConfig(train_embeddings=False),
    "top1": lambda h: FullConfig(top_k_layers=1),
    "top2": lambda h: FullConfig(top_k_layers=2),
}


def counted_trainable(pm):
    return sum(p.size for p in pm.trainable_parameters())


# ----------------------------------------------------------------------------- formula vs counted

@pytest.mark.parametrize("head", ["no_head", "head_frozen", "head_saved"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("method", list(CONFIGS))
def test_counted_trainable_equals_formula(tiny, arch, shape, method, head):
    n_labels = 0 if head == "no_head" else 3
    model = tiny.model(arch, n_labels=n_labels, **SHAPES[shape])
    cfg = CONFIGS[method](HEAD if head == "head_saved" else ())
    pm = apply(model, cfg)
    module = api.method_of(cfg)
    f = module.formula(pm.config, cfg)
    counted = counted_trainable(pm)
    assert counted == f["trainable"], f"{method} on {arch} {shape} {head}: counted {counted}, formula {f['trainable']}"
    kept = sum(p.size for p in pm.adapter_parameters("default").values())
    assert kept == f["kept"], f"saved parameters {kept}, formula kept {f['kept']}"
    base = base_params(pm.config)
    # methods that add parameters add `kept`; BitFit and full train the base's own, plus a head copy
    heads = head_params(pm.config) if "cls_head" in getattr(cfg, "modules_to_save", ()) else 0
    added = heads if getattr(module, "EXCLUSIVE", False) else f["kept"]
    assert pm.num_parameters() == base + added, f"all params {pm.num_parameters()} != base {base} + {added}"


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("n_labels", [0, 2])
def test_base_params_is_the_model_count(tiny, arch, shape, n_labels):
    model = tiny.model(arch, n_labels=n_labels, **SHAPES[shape])
    assert model.num_parameters() == base_params(model.config)
    d, f = model.config.d_model, model.config.d_ff
    assert sum(p.size for p in model.h[0].parameters()) == block_params(model.config) == 4 * d * d + 2 * d * f + 9 * d + f


# ----------------------------------------------------------------------------- the printed report

LINE = re.compile(r"^trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| trainable%: (\d+\.\d{4})")


@pytest.mark.parametrize("method", ["lora_r2_fc_proj", "houlsby_m1", "bitfit_ln", "top1"])
def test_print_trainable_parameters(tiny, arch, method, capsys):
    model = tiny.model(arch, n_labels=3)
    base = model.num_parameters()
    cfg = CONFIGS[method](HEAD)
    pm = apply(model, cfg)
    text = pm.print_trainable_parameters()
    assert capsys.readouterr().out.strip() == text.strip()
    m = LINE.match(text)
    assert m, f"first line does not read 'trainable params: N || all params: M || trainable%: P': {text!r}"
    n, total, pct = int(m.group(1).replace(",", "")), int(m.group(2).replace(",", "")), m.group(3)
    f = api.method_of(cfg).formula(pm.config, cfg)
    assert n == f["trainable"] == counted_trainable(pm)
    heads = head_params(pm.config) if "cls_head" in getattr(cfg, "modules_to_save", ()) else 0
    added = heads if isinstance(cfg, (BitFitConfig, FullConfig)) else f["kept"]
    assert total == base + added, f"HF's denominator is base {base} + adapter {added}, printed {total}"
    assert pct == f"{100 * n / total:.4f}"
    assert f"counted {n:,}, formula {f['trainable']:,}" in text
    assert f"% of base: {100 * n / base:.4f}" in text


def test_print_trainable_parameters_numbers_by_hand(tiny):
    """LoRA r=2 on q, v of a d=8, 2-layer GPT-2 layout: 2 layers x 2 matrices x 2 r d = 128."""
    model = tiny.model("gpt2")
    base = 13 * 8 + 12 * 8 + 2 * (12 * 64 + 13 * 8) + 2 * 8
    assert model.num_parameters() == base == 1960
    text = apply(model, LoraConfig(r=2)).print_trainable_parameters()
    assert text.startswith("trainable params: 128 || all params: 2,088 || trainable%: 6.1303"), text


# ----------------------------------------------------------------------------- real sizes, published numbers

BASE_TOTALS = {"bert-base": 109_482_240, "bert-large": 335_141_888, "roberta-base": 124_645_632,
               "roberta-large": 355_359_744, "gpt2": 124_439_808, "gpt2-medium": 354_823_168,
               "gpt2-large": 774_030_080}

PUBLISHED = [  # (arch, method, options, trainable), from the LoRA, adapter and BitFit papers
    ("roberta-base", "lora", dict(r=8, targets="q,v"), 294_912),       # LoRA Table 2 "0.3M"
    ("roberta-large", "lora", dict(r=8, targets="q,v"), 786_432),      # "0.8M"
    ("bert-large", "lora", dict(r=8, targets="q,v"), 786_432),
    ("gpt2-medium", "lora", dict(r=4, targets="q,v"), 393_216),        # Table 8 setting (0.39M, not 0.35M)
    ("gpt2-large", "lora", dict(r=4, targets="q,v"), 737_280),
    ("bert-large", "adapter", dict(size=64, placement="houlsby"), 6_343_680),
    ("roberta-large", "adapter", dict(size=64, placement="houlsby"), 6_343_680),
    ("roberta-large", "adapter", dict(size=8, placement="houlsby"), 835_968),    # Adpt^H 0.8M
    ("roberta-large", "adapter", dict(size=16, placement="pfeiffer"), 811_392),  # Adpt^P 0.8M
    ("bert-large", "bitfit", dict(), 272_384),                         # BitFit's 0.08%
    ("bert-large", "bitfit", dict(with_layernorm=True), 322_560),      # the slide's 0.32M
    ("gpt2-medium", "bitfit", dict(), 271_360),
    ("gpt2-medium", "bitfit", dict(with_layernorm=True), 321_536),
    ("roberta-base", "bitfit", dict(), 102_912),                       # LoRA Table 2 BitFit 0.1M
    ("gpt2-medium", "full", dict(top_k=2), 25_194_496),                # FT^Top2 25.19M
]


@pytest.mark.parametrize("arch,total", list(BASE_TOTALS.items()))
def test_base_totals(arch, total):
    r = count_params(arch, "none")
    assert (r["trainable"], r["total"], r["base"]) == (0, total, total)
    full = count_params(arch, "full")
    assert full["trainable"] == full["total"] == total, full


def test_block_is_12d2_plus_13d():
    for cfg in ARCHS.values():
        d = cfg.d_model
        assert block_params(cfg) == 12 * d * d + 13 * d


@pytest.mark.parametrize("arch,method,options,trainable", PUBLISHED,
                         ids=[f"{a}-{m}-{'-'.join(f'{k}{v}' for k, v in o.items())}" for a, m, o, _ in PUBLISHED])
def test_published_counts(arch, method, options, trainable):
    r = count_params(arch, method, **options)
    assert r["trainable"] == trainable, f"{arch} {method} {options}: {r['trainable']:,}, published {trainable:,}"
    adds = method in ("lora", "adapter")
    assert r["total"] == BASE_TOTALS[arch] + (trainable if adds else 0)
    assert r["optimizer_state_bytes_fp32"] == 8 * trainable
    assert r["pct_of_base"] == pytest.approx(100 * trainable / BASE_TOTALS[arch])


def test_published_percentages():
    assert f"{count_params('bert-large', 'bitfit')['pct_of_base']:.2f}" == "0.08"
    assert f"{count_params('bert-large', 'bitfit', with_layernorm=True)['pct_of_base']:.3f}" == "0.096"
    assert f"{count_params('roberta-large', 'lora')['trainable_pct']:.3f}" == "0.221"
    bitfit = count_params("bert-large", "bitfit", with_layernorm=True)
    assert (bitfit["biases"], bitfit["layernorm_gains"]) == (272_384, 50_176)


def test_prefix_and_prompt_counts_when_present():
    if not (hasattr(peft, "PrefixConfig") and hasattr(peft, "PromptConfig")):
        pytest.skip("prefix/prompt tuning are not in minipeft.peft yet")
    for arch in ("roberta-large", "bert-large", "gpt2-medium"):
        assert count_params(arch, "prompt", length=20)["trainable"] == 20_480, arch
    assert count_params("gpt2-medium", "prefix", length=10)["kept"] == 491_520
    assert count_params("gpt2-medium", "prefix", length=5)["kept"] == 245_760


# ----------------------------------------------------------------------------- the command line

def run_cli(capsys, *args):
    rc = cli.main(["count", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("arch,method,options,trainable", PUBLISHED[:3] + PUBLISHED[5:11],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_cli_json(capsys, arch, method, options, trainable):
    flags = {"r": "--r", "targets": "--targets", "size": "--size", "placement": "--placement", "top_k": "--top-k"}
    args = ["--arch", arch, "--method", method, "--json"]
    for k, v in options.items():
        args += ["--with-layernorm"] if k == "with_layernorm" else [flags[k], str(v)]
    rc, out, err = run_cli(capsys, *args)
    assert rc == 0 and err == "", err
    res = json.loads(out)
    assert res["trainable"] == trainable and res["total"] == res["base"] + (trainable if method in ("lora", "adapter") else 0)


def test_cli_plain_text(capsys):
    rc, out, _ = run_cli(capsys, "--arch", "roberta-base", "--method", "lora", "--r", "8", "--targets", "q,v")
    assert rc == 0
    assert out.strip() == "roberta-base + lora: trainable params: 294,912 || all params: 124,940,544 || trainable%: 0.2360"


def test_cli_as_a_subprocess():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MINIPEFT_DEBUG", None)
    ok = subprocess.run([sys.executable, "-m", "minipeft.cli", "count", "--arch", "bert-large", "--method", "adapter",
                         "--size", "64", "--json"], capture_output=True, text=True, env=env, cwd=root, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["trainable"] == 6_343_680
    bad = subprocess.run([sys.executable, "-m", "minipeft.cli", "count", "--arch", "gpt5", "--method", "lora"],
                         capture_output=True, text=True, env=env, cwd=root, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("minipeft: error: unknown --arch 'gpt5'") and bad.stderr.count("\n") == 1, bad.stderr


@pytest.mark.parametrize("args,words", [
    (["--arch", "gpt5", "--method", "lora"], ["unknown --arch 'gpt5'", "gpt2-medium"]),
    (["--arch", "gpt2", "--method", "dora"], ["unknown --method 'dora'", "lora", "bitfit"]),
    (["--arch", "gpt2", "--method", "lora", "--targets", "q,c_attn"], ["'c_attn'", "target_modules"]),
    (["--arch", "gpt2", "--method", "lora", "--r", "0"], ["LoraConfig.r"]),
    (["--arch", "gpt2", "--method", "adapter", "--placement", "middle"], ["placement", "houlsby"]),
    (["--arch", "gpt2", "--method", "adapter", "--size", "0"], ["AdapterConfig.size"]),
    (["--arch", "gpt2", "--method", "full", "--top-k", "13"], ["top_k_layers=13", "12 layers"]),
])
def test_cli_errors_exit_2_with_one_line(capsys, monkeypatch, args, words):
    monkeypatch.delenv("MINIPEFT_DEBUG", raising=False)
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2 and out == ""
    assert err.startswith("minipeft: error: ") and err.count("\n") == 1, err
    assert all(w in err for w in words), err
