"""What a frozen shipped model already knows, before any fine-tuning.

A PEFT effect can only show on a model that already computes the task. LoRA, adapters, prefix
and prompt tuning train a few parameters on top of frozen weights: they can steer, select and
re-read what the pretrained network computes, but a tiny update cannot build a missing skill.
So before reading a PEFT result, measure the frozen model. Four measurements, all without
training any weight of the model:

reference_loss    the model's loss on the E2E / WebNLG dev references as PLAIN TEXT (no MR or
                  triples in front). Does the model know the language the targets are written
                  in? Decoder: mean next-token NLL (nats/token) over `<bos> ref <eos>`. Encoder:
                  masked-LM loss on `<cls> ref`, 15% of positions masked from a fixed seed, as
                  the held-out MLM loss of pretraining is. Reported with its ratio to the
                  checkpoint's held-out loss (metrics.json): near 1, the targets are text of
                  the kind the model was trained on; the goal set for the shipped models is
                  ratio <= 1.5.
linear_probe      do the frozen hidden states already separate SST-2 sentiment? Features of
                  `<cls> sentence <sep>` (what tasks.py's "sst2" head reads), one vector per
                  sentence: "cls" = tanh(pooler(h[:, 0])) (encoder), "mean" = mean over the real
                  tokens, "last" = the last real token (decoder); then a logistic regression
                  fitted on the host. This is what a classification head can get without
                  changing the body. keyword_baseline (count positive minus negative words)
                  is the bar: a probe below it reads less than word counts.
zero_shot_sst2    does the LM head already have an opinion? `<bos> sentence All in all, it was`
                  and the next-token logits of " terrible" / " great" (tasks.sst2-lm, the
                  prompt-based way of PET); the encoder fills `<cls> sentence All in all, it was
                  <mask>.` with the same two words. positive_fraction shows a constant predictor
                  (0.5 accuracy with 0.0 or 1.0 predicted positive is no skill).
translation_icl   in-context learning in a format never seen in pretraining (the corpus names
                  the word pairs only in prose): "Translate English to French:", k lines
                  "cheese => fromage", then "bread =>"; greedy decoding, first word, exact match.
                  Decoders only.

corpus_verdicts, a diagnostic outside measure(): the held-out reviews of the corpus itself, ended
by the model with one of its five verdict words; tells "cannot read sentiment at all" from "cannot
carry it into SST-2's wording".

`measure(name)` runs all that applies to a checkpoint and returns one dict; `write_capability`
stores it as capability.json beside the checkpoint, `read_capability` reads it back.

    minipeft capability gpt2-m            # a readable table
    minipeft capability bert-m --json     # the dict
    minipeft capability gpt2-m --write    # also write capability.json into the checkpoint folder

Everything is read from the checkpoint (config.json, metrics.json) and the data files (data/, or
a folder laid out like it: data_dir, `--data DIR`); sizes are moderate (see DEFAULTS) so that all
shipped models are measured in well under a minute on 2 cores. First, measure re-computes the
held-out loss of pretraining: if it is not the one in metrics.json, the tokenizer or corpus has
changed since the model was trained (tokenizer_matches False), the table says so, and such a
result is never written as capability.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

from . import backend, ops
from .autograd import no_grad
from .data.tokenizer import pad_rows
from .pretrain import DATA, REPO, load_pretrained, mask_tokens
from .tasks import LABEL_WORDS, LM_TEMPLATE, cls_batches, label_word_ids, label_word_scores, load_task

SHIPPED = os.path.join(DATA, "checkpoints")     # capability.json here is never replaced unasked
CAPABILITY_FILE = "capability.json"
TRANSLATION_FILE = os.path.join(DATA, "translation", "en_fr.tsv")
TASK_LINE = "Translate English to French:"      # GPT-3's task description, before the demonstrations
MASK_SEED = 1234                                # the fixed MLM masks of reference_loss (as pretrain's held-out)
FEATURES = {"bert": ("cls", "mean"), "gpt2": ("mean", "last")}   # the probe features measured per arch

# sizes of a measurement (measure records them, so that a re-run can use the same)
DEFAULTS = {"max_texts": 400, "train_size": 2000, "dev_size": 500, "n_queries": 100,
            "shots": [0, 1, 4], "seed": 0}
FAST = dict(DEFAULTS, max_texts=100, train_size=500, dev_size=200, n_queries=30)


# ----------------------------------------------------------------------------- small helpers

def _chunks(items, size: int):
    return [items[i:i + size] for i in range(0, len(items), size)]


def checkpoint_dir(name_or_dir: str) -> str:
    """The folder of a checkpoint given as a shipped name ("gpt2-m") or a directory (as load_pretrained)."""
    return name_or_dir if os.path.isdir(name_or_dir) else os.path.join(SHIPPED, name_or_dir)


def tokenizer_of(model, data_dir: str | None = None):
    """The tokenizer of a checkpoint: data_dir/tokenizer.json when a data folder is given, else the
    one its config names (extra.tokenizer, relative to the repository), else data/tokenizer.json."""
    from .data.tokenizer import Tokenizer
    if data_dir is not None:
        return Tokenizer.from_file(os.path.join(data_dir, "tokenizer.json"))
    rel = (model.config.extra or {}).get("tokenizer") or os.path.join("data", "tokenizer.json")
    return Tokenizer.from_file(rel if os.path.isabs(rel) else os.path.join(REPO, rel))


# ----------------------------------------------------------------------------- 1. reference loss

def text_loss(model, tok, texts, batch_size: int = 32, seed: int = MASK_SEED) -> dict:
    """Token-weighted mean loss (nats/token) of plain texts under the frozen model.

    gpt2: next-token NLL over `<bos> text <eos>` (ids = all but the last, targets = all but the
    first). bert: MLM loss on `<cls> text`, 15% of positions chosen by pretrain.mask_tokens from
    one generator seeded `seed`, drawn text by text in order (a text's mask does not depend on the
    batching). Texts are cut to the context. Batches group texts of similar length, right-padded
    with targets -100 and an attention mask over the padding.
    Returns {"loss", "tokens" (predicted tokens), "texts"}."""
    hostnp = backend.host()
    n_ctx = model.config.n_ctx
    inputs, targets = [], []
    if model.config.arch == "gpt2":
        for t in texts:
            row = ([tok.bos_id] + tok.encode(t) + [tok.eos_id])[:n_ctx + 1]
            inputs.append(row[:-1])
            targets.append(row[1:])
    else:
        gen = hostnp.random.default_rng(seed)
        for t in texts:
            row = hostnp.asarray([[tok.cls_id] + tok.encode(t)[:n_ctx - 1]], dtype=hostnp.int64)  # (1, T)
            x, y = mask_tokens(row, tok, tok.vocab_size, gen)
            inputs.append(x[0].tolist())
            targets.append(y[0].tolist())
    order = sorted(range(len(texts)), key=lambda i: len(inputs[i]))        # less padding
    total, count = 0.0, 0
    with no_grad():
        for idx in _chunks(order, batch_size):
            b = pad_rows([inputs[i] for i in idx], tok.pad_id)
            ids, mask = b.ids, b.attention_mask                             # (B, T)
            tgt = pad_rows([targets[i] for i in idx], -100, ids.shape[1]).ids   # (B, T), -100: not scored
            rows, cols = hostnp.nonzero(tgt != -100)                        # (N,), (N,) predicted positions
            if len(rows) == 0:
                continue
            h = model.encode(ids, mask)                                     # (B, T, d)
            logits = model.lm_logits(h[backend.to_device(rows), backend.to_device(cols)])   # (N, V)
            total += float(ops.cross_entropy(logits, tgt[rows, cols]).item()) * len(rows)
            count += len(rows)
    return {"loss": total / max(count, 1), "tokens": count, "texts": len(texts)}


def reference_loss(model, tok, task: str, split: str = "dev", max_texts: int | None = DEFAULTS["max_texts"],
                   data_dir: str | None = None) -> dict:
    """text_loss of the references of an E2E / WebNLG split as plain text (no source in front):
    every reference of every example in file order, the first max_texts of them (None: all).
    data_dir: a folder laid out like data/ (default: the shipped data/), as for load_task."""
    refs = [r for e in load_task(task, split, data_dir) for r in e.refs][:max_texts]
    return dict(text_loss(model, tok, refs), task=task, split=split)


# ----------------------------------------------------------------------------- 2. linear probe

def sst2_features(model, tok, examples, features=("mean",), batch_size: int = 64) -> dict:
    """Frozen features of `<cls> sentence <sep>` for the encoder (tasks.cls_batches, as the "sst2"
    head task reads it) and of `<bos> sentence` for a decoder (as it read text in pretraining):
    {kind: host float64 array (N, d)} for kind in "cls" (encoder: tanh(pooler(h[:, 0]))), "mean"
    (mean over the real tokens), "last" (the last real token's hidden state)."""
    hostnp = backend.host()
    if "cls" in features and model.config.arch != "bert":
        raise ValueError("feature 'cls' is the encoder's pooled [CLS] vector; a decoder has no pooler: "
                         "use 'last' or 'mean'")
    unknown = set(features) - {"cls", "mean", "last"}
    if unknown:
        raise ValueError(f"unknown probe feature(s) {sorted(unknown)}; choose from 'cls', 'mean', 'last'")
    out = {f: [] for f in features}
    if model.config.arch == "bert":
        batches = cls_batches(tok, examples, batch_size, model.config.n_ctx, seed=None, endless=False)
    else:                     # a decoder reads text as it was pretrained on it: <bos> sentence
        batches = []
        for chunk in _chunks(examples, batch_size):
            b = pad_rows([[tok.bos_id] + tok.encode(e.sentence)[:model.config.n_ctx - 1] for e in chunk],
                         tok.pad_id)
            batches.append({"ids": b.ids, "attention_mask": b.attention_mask})
    with no_grad():
        for b in batches:
            mask = b["attention_mask"]                                       # (B, T)
            h = model.encode(b["ids"], mask)                                 # (B, T, d)
            for f in features:
                if f == "cls":
                    v = ops.tanh(model.pooler(h[:, 0]))
                elif f == "mean":
                    v = model.mean_pooled(h, mask)
                else:
                    last = backend.to_device(mask.sum(axis=1) - 1)
                    v = h[backend.xp.arange(h.shape[0]), last]
                out[f].append(backend.to_numpy(v.data))                      # (B, d)
    return {f: hostnp.concatenate(v).astype(hostnp.float64) for f, v in out.items()}


def fit_logistic(x, y, l2: float = 1e-2, max_steps: int = 50):
    """L2-regularised logistic regression by Newton's method, on the host in float64.

    x (N, d) features (standardised), y (N,) labels 0/1 -> w (d + 1,), the last entry the bias.
    Minimises  J(w) = mean_i [log(1 + e^{z_i}) - y_i z_i] + l2/2 |w_{:d}|^2,  z = [x 1] w,
    with steps  w <- w - H^{-1} g  (g = X^T (p - y)/N + l2 w,  H = X^T diag(p(1-p)) X/N + l2 I),
    halved while J does not decrease. From w = 0: deterministic."""
    hostnp = backend.host()
    X = hostnp.concatenate([x, hostnp.ones((len(x), 1))], axis=1)           # (N, d + 1)
    reg = hostnp.full(X.shape[1], l2)
    reg[-1] = 1e-8                                                           # the bias is (almost) free
    y = hostnp.asarray(y, dtype=hostnp.float64)

    def objective(w):
        z = X @ w
        return float(hostnp.mean(hostnp.logaddexp(0.0, z) - y * z) + 0.5 * reg @ (w * w))

    w = hostnp.zeros(X.shape[1])
    for _ in range(max_steps):
        p = 0.5 * (1.0 + hostnp.tanh(0.5 * (X @ w)))                         # sigmoid, without overflow
        g = X.T @ (p - y) / len(X) + reg * w
        H = (X.T * (p * (1.0 - p))) @ X / len(X) + hostnp.diag(reg)
        step, t, before = hostnp.linalg.solve(H, g), 1.0, objective(w)
        while t > 1e-6 and objective(w - t * step) > before:
            t *= 0.5
        w = w - t * step
        if hostnp.abs(t * step).max() < 1e-10:
            break
    return w


def probe_accuracy(train_x, train_y, dev_x, dev_y, l2: float = 1e-2) -> dict:
    """Standardise with the train mean/std, fit_logistic on train, accuracy on train and dev."""
    hostnp = backend.host()
    mu, sd = train_x.mean(axis=0), train_x.std(axis=0)
    sd = hostnp.where(sd > 1e-12, sd, 1.0)                                   # a constant feature stays 0

    def predict(x):
        z = hostnp.concatenate([(x - mu) / sd, hostnp.ones((len(x), 1))], axis=1) @ w
        return (z > 0).astype(hostnp.int64)

    w = fit_logistic((train_x - mu) / sd, train_y, l2)
    return {"train_accuracy": float(hostnp.mean(predict(train_x) == hostnp.asarray(train_y))),
            "dev_accuracy": float(hostnp.mean(predict(dev_x) == hostnp.asarray(dev_y)))}


def probe_examples(train_size: int | None, dev_size: int | None, seed: int = 0, data_dir: str | None = None):
    """SST-2 (train subset, dev): a seeded random train subset of train_size, the first dev_size of dev."""
    hostnp = backend.host()
    train, dev = load_task("sst2", "train", data_dir), load_task("sst2", "dev", data_dir)
    pick = hostnp.random.default_rng(seed).permutation(len(train))[:train_size]
    return [train[i] for i in pick], dev[:dev_size]


def linear_probes(model, tok, features=None, train_size: int | None = DEFAULTS["train_size"],
                  dev_size: int | None = DEFAULTS["dev_size"], seed: int = 0, l2: float = 1e-2,
                  data_dir: str | None = None) -> dict:
    """{feature: probe result} for several features from one pass over the data (default: FEATURES
    of the model's arch). Each result: train_accuracy, dev_accuracy, train_size, dev_size."""
    hostnp = backend.host()
    features = tuple(features or FEATURES[model.config.arch])
    train, dev = probe_examples(train_size, dev_size, seed, data_dir)
    ftrain, fdev = sst2_features(model, tok, train, features), sst2_features(model, tok, dev, features)
    ytrain = hostnp.asarray([e.label for e in train])
    ydev = hostnp.asarray([e.label for e in dev])
    return {f: dict(probe_accuracy(ftrain[f], ytrain, fdev[f], ydev, l2), train_size=len(train), dev_size=len(dev))
            for f in features}


def linear_probe(model, tok, feature: str = "cls", train_size: int | None = DEFAULTS["train_size"],
                 dev_size: int | None = DEFAULTS["dev_size"], seed: int = 0, l2: float = 1e-2) -> dict:
    """Dev (and train) accuracy of a logistic-regression probe on one frozen feature of SST-2."""
    return linear_probes(model, tok, (feature,), train_size, dev_size, seed, l2)[feature]


def keyword_baseline(examples=None, dev_size: int | None = DEFAULTS["dev_size"], data_dir: str | None = None) -> dict:
    """Accuracy of gen_sentiment.keyword_baseline (positive minus negative words, no model) on
    `examples` (default: the first dev_size of the SST-2 dev split)."""
    from .data.gen_sentiment import keyword_baseline as keyword_label
    examples = load_task("sst2", "dev", data_dir)[:dev_size] if examples is None else examples
    hits = sum(keyword_label(e.sentence) == e.label for e in examples)
    return {"dev_accuracy": hits / len(examples), "dev_size": len(examples)}


# ----------------------------------------------------------------------------- 3. zero-shot SST-2

def mask_prompt_scores(model, tok, examples, word_ids):
    """Encoder: (B, n_labels) MLM logits of the label words at the <mask> of
    `<cls> LM_TEMPLATE(sentence) <mask>.` (the sentence loses its start if it does not fit)."""
    tail = [tok.mask_id] + tok.encode(".")
    room = model.config.n_ctx - 1 - len(tail)
    rows = [[tok.cls_id] + tok.encode(LM_TEMPLATE.format(e.sentence))[-room:] + tail for e in examples]
    b = pad_rows(rows, tok.pad_id)
    ids, mask = b.ids, b.attention_mask                                                  # (B, T)
    at = backend.to_device(backend.host().asarray([len(r) - len(tail) for r in rows]))   # (B,) the <mask>
    h = model.encode(ids, mask)                                                          # (B, T, d)
    logits = model.lm_logits(h[backend.xp.arange(len(rows)), at])                       # (B, V)
    return logits[:, backend.to_device(backend.host().asarray(word_ids))]               # (B, n_labels)


def zero_shot_sst2(model, tok, examples=None, batch_size: int = 64) -> dict:
    """Prompt-based SST-2 accuracy through the label words, no training: label = argmax over
    (" terrible", " great") of the next-token logits after `<bos> sentence All in all, it was`
    (decoder) or of the MLM logits at the <mask> (encoder, see mask_prompt_scores).
    Returns accuracy, positive_fraction (predicted " great") and n."""
    hostnp = backend.host()
    examples = load_task("sst2", "dev") if examples is None else examples
    words = label_word_ids(tok)
    preds = []
    with no_grad():
        if model.config.arch == "gpt2":
            for b in cls_batches(tok, examples, batch_size, model.config.n_ctx, seed=None, endless=False, lm=True):
                preds.append(backend.to_numpy(label_word_scores(model, b, words).data).argmax(axis=1))
        else:
            for chunk in _chunks(list(examples), batch_size):
                preds.append(backend.to_numpy(mask_prompt_scores(model, tok, chunk, words).data).argmax(axis=1))
    preds = hostnp.concatenate(preds)
    golds = hostnp.asarray([e.label for e in examples])
    return {"accuracy": float(hostnp.mean(preds == golds)), "positive_fraction": float(hostnp.mean(preds == 1)),
            "n": len(examples)}


def corpus_verdicts(model, tok, data_dir: str | None = None, max_docs: int | None = None) -> dict:
    """Does the model finish its OWN corpus's reviews with the right verdict? A diagnostic beside
    zero_shot_sst2: every held-out review of `pretrain/valid.txt` that ends with a verdict
    ("... All in all, it was good.") becomes the prompt "review body + verdict form <MASK> ." and the
    model picks one of the five VERDICT_WORDS (prompting.predict: next token for a decoder, the
    <mask> for the encoder). The verdict is a function of the body (gen_pretrain.verdict_review), so
    a model that learned it from pretraining scores well here with no new wording to cope with.

    Returns accuracy (5-way), polarity (terrible/bad vs good/great, on the reviews whose verdict is
    not "okay"), keyword (gen_sentiment.keyword_baseline's polarity on the same bodies), majority
    (the share of the most frequent verdict), the predicted counts and n."""
    import re
    from collections import Counter
    from . import prompting
    from .data.gen_pretrain import VERDICT_FORMS, VERDICT_WORDS
    from .data.gen_sentiment import keyword_baseline as keyword_label
    forms = sorted({f.split(" {w}")[0] for f in VERDICT_FORMS})
    pattern = re.compile(r"^(.*) (" + "|".join(map(re.escape, forms)) + r") (" + "|".join(VERDICT_WORDS) + r")\.$")
    path = os.path.join(data_dir or DATA, "pretrain", "valid.txt")
    with open(path, encoding="utf-8") as f:
        found = [pattern.match(line.strip()) for line in f]
    items = [(m.group(1), m.group(2), VERDICT_WORDS.index(m.group(3))) for m in found if m][:max_docs]
    if not items:
        raise ValueError(f"no review ending with a verdict in {path}: is it the corpus of gen_pretrain?")
    prompts = [prompting.build_prompt(tok, prompting.Template("<S1> " + form + " <MASK> ."), prompting.Example(body),
                                      arch=model.config.arch, max_len=model.config.n_ctx) for body, form, _ in items]
    with no_grad():
        preds = prompting.predict(model, tok, prompts, prompting.Verbalizer(VERDICT_WORDS))
    golds = [y for *_, y in items]
    polar = [(p, g, body) for p, g, (body, *_) in zip(preds, golds, items) if g != 2]    # 2 = "okay"
    counts = Counter(golds)
    return {"accuracy": sum(p == g for p, g in zip(preds, golds)) / len(golds),
            "polarity": sum((p > 2) == (g > 2) for p, g, _ in polar) / len(polar),
            "keyword": sum(keyword_label(b) == (g > 2) for _, g, b in polar) / len(polar),
            "majority": max(counts.values()) / len(golds),
            "predicted": {VERDICT_WORDS[k]: v for k, v in sorted(Counter(preds).items())}, "n": len(golds)}


# ----------------------------------------------------------------------------- 4. in-context translation

def translation_pairs(path: str = TRANSLATION_FILE) -> list:
    """[(en, fr), ...] of data/translation/en_fr.tsv."""
    from .data.formats import read_pairs_tsv
    return read_pairs_tsv(path)


def translation_prompts(pairs, k: int, n_queries: int, seed: int = 0, sep: str = ". ") -> list:
    """[(prompt text, answer)] for n_queries queries, each with k demonstrations, as text:

        Translate English to French: cheese => fromage. sea => mer. bread =>

    ("=>" never occurs in the corpus: the format is new; the separator ". " is the one the corpus
    uses most. A newline, GPT-3's separator, is a byte the shipped models never read.)

    The queries are the first n_queries of a permutation of `pairs` seeded `seed`; each query's
    demonstrations are the first k of a seeded permutation of the other pairs (none with the
    query's English word or its French answer). The generator's draws do not depend on k, so the
    queries are the same for every k and the 1-shot demonstration is the first of the 4-shot ones."""
    hostnp = backend.host()
    gen = hostnp.random.default_rng(seed)
    out = []
    for q in gen.permutation(len(pairs))[:n_queries]:
        en, fr = pairs[q]
        others = [i for i, (e, f) in enumerate(pairs) if e != en and f != fr]
        demos = [pairs[others[j]] for j in gen.permutation(len(others))[:k]]
        items = [f"{e} => {f}" for e, f in demos] + [f"{en} =>"]
        out.append((TASK_LINE + " " + sep.join(items), fr))
    return out


def first_word(text: str) -> str:
    """The first whitespace-separated word of a continuation, without surrounding punctuation."""
    words = text.split()
    return words[0].strip(".,;:!?\"'()") if words else ""


def translation_icl(model, tok, shots=(0, 1, 4), n_queries: int = DEFAULTS["n_queries"], seed: int = 0,
                    pairs=None, sep: str = ". ") -> dict | None:
    """Exact-match accuracy of in-context word translation, {str(k): {"accuracy", "n", "examples"}}
    for each k in shots: greedy decoding of a few tokens (enough for the longest French word, + 1)
    after each translation_prompts prompt, the first word compared with the answer.
    An encoder cannot generate left to right: returns None."""
    from .generate import generate
    if model.config.arch != "gpt2":
        return None
    pairs = translation_pairs() if pairs is None else pairs
    new = max(len(tok.encode(" " + fr)) for _, fr in pairs) + 1
    out = {}
    for k in shots:
        prompts = translation_prompts(pairs, k, n_queries, seed, sep)
        ids = [tok.encode(p, add_bos=True) for p, _ in prompts]
        outs = generate(model, ids, max_new_tokens=new, method="greedy", eos_id=tok.eos_id)
        got = [first_word(tok.decode([t for t in o if t != tok.eos_id])) for o in outs]
        hits = [g.lower() == fr.lower() for g, (_, fr) in zip(got, prompts)]
        out[str(k)] = {"accuracy": sum(hits) / len(hits), "n": len(hits),
                       "examples": [[p.split(sep)[-1], fr, g] for (p, fr), g in zip(prompts[:3], got)]}
    return out


# ----------------------------------------------------------------------------- 5. all of it

def _sha256(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def heldout_now(model, tok, data_dir: str | None = None) -> float | None:
    """The checkpoint's held-out loss measured again, as pretrain measured it, on the validation corpus
    with this tokenizer (None without data_dir/pretrain/valid.txt). Far from metrics.json's
    heldout_loss, the tokenizer or corpus changed since the model was trained, and every number here
    reads the model through the wrong tokens."""
    from .pretrain import heldout_loss, heldout_set
    path = os.path.join(data_dir or DATA, "pretrain", "valid.txt")
    if not os.path.isfile(path):
        return None
    batches = heldout_set(tok, model.config.arch, model.config.n_ctx, path)
    with no_grad():
        return heldout_loss(model, batches)


def measure(name_or_dir: str, fast: bool = False, settings: dict | None = None, data_dir: str | None = None) -> dict:
    """Every measurement that applies to a checkpoint (a shipped name or a directory), as one dict.

    Sizes: DEFAULTS, or FAST (fast=True), updated by `settings` (e.g. the "settings" of an earlier
    capability.json, to reproduce it). data_dir: a folder laid out like data/ to read the tokenizer,
    corpus and tasks from (default: the checkpoint's tokenizer and the shipped data/). The result
    records the settings, the weights' sha256, the held-out loss recorded at training time and
    measured now (tokenizer_matches: within 1e-3 relative), and the seconds each part took."""
    t_start = time.perf_counter()
    s = dict(FAST if fast else DEFAULTS, **(settings or {}))
    unknown = set(s) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown capability settings {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
    path = checkpoint_dir(name_or_dir)
    model = load_pretrained(name_or_dir)
    tok = tokenizer_of(model, data_dir)
    cfg = model.config
    metrics_path = os.path.join(path, "metrics.json")
    recorded = None
    if os.path.isfile(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            recorded = json.load(f).get("heldout_loss")
    res = {"model": os.path.basename(os.path.normpath(path)), "arch": cfg.arch, "params": model.num_parameters(),
           "n_ctx": cfg.n_ctx, "weights_sha256": _sha256(os.path.join(path, "model.safetensors")),
           "heldout_loss": recorded, "settings": s, "data_dir": data_dir, "seconds": {}}

    def timed(part, fn):
        t = time.perf_counter()
        res[part] = fn()
        res["seconds"][part] = round(time.perf_counter() - t, 2)

    def ref_losses():
        out = {}
        for task in ("e2e", "webnlg"):
            r = reference_loss(model, tok, task, "dev", s["max_texts"], data_dir)
            r["ratio_to_heldout"] = r["loss"] / recorded if recorded else None
            out[task] = r
        return out

    timed("heldout_loss_now", lambda: heldout_now(model, tok, data_dir))
    now = res["heldout_loss_now"]
    res["tokenizer_matches"] = None if now is None or recorded is None else abs(now - recorded) <= 1e-3 * recorded
    timed("reference_loss", ref_losses)
    timed("linear_probe", lambda: linear_probes(model, tok, None, s["train_size"], s["dev_size"], s["seed"],
                                                data_dir=data_dir))
    timed("keyword_baseline", lambda: keyword_baseline(dev_size=s["dev_size"], data_dir=data_dir))
    timed("zero_shot_sst2", lambda: zero_shot_sst2(model, tok, load_task("sst2", "dev", data_dir)[:s["dev_size"]]))
    if cfg.arch == "gpt2":
        pairs = translation_pairs(os.path.join(data_dir or DATA, "translation", "en_fr.tsv"))
        timed("translation_icl", lambda: translation_icl(model, tok, s["shots"], s["n_queries"], s["seed"], pairs))
    else:
        res["translation_icl"] = {"skipped": "a bidirectional encoder cannot generate left to right"}
    res["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    return res


def capability_path(name_or_dir: str) -> str:
    return os.path.join(checkpoint_dir(name_or_dir), CAPABILITY_FILE)


def _is_shipped(path: str) -> bool:
    root = os.path.realpath(SHIPPED)
    return os.path.commonpath([os.path.realpath(path), root]) == root


def check_writable(name_or_dir: str, overwrite: bool = False) -> str:
    """The capability.json path of a checkpoint, or a ValueError if writing it would replace a
    recorded one of a shipped checkpoint (data/checkpoints) and overwrite is False."""
    path = capability_path(name_or_dir)
    if not os.path.isdir(os.path.dirname(path)):
        raise FileNotFoundError(f"no checkpoint folder {os.path.dirname(path)} to write {CAPABILITY_FILE} into")
    if os.path.exists(path) and _is_shipped(path) and not overwrite:
        raise ValueError(f"{path} exists: it records what the shipped checkpoint measured, and tests compare "
                         f"against it, so it is not replaced unasked; pass --overwrite "
                         f"(write_capability(..., overwrite=True)) to replace it, or leave out --write")
    return path


def write_capability(result: dict, name_or_dir: str, overwrite: bool = False) -> str:
    """Write `result` (from measure) as capability.json in the checkpoint's folder; returns the path.
    An existing one in data/checkpoints is replaced only with overwrite=True (check_writable); a
    result measured through another tokenizer than the model's (tokenizer_matches False) never is."""
    from .checkpoint import write_json_atomic
    path = check_writable(name_or_dir, overwrite)
    if result.get("tokenizer_matches") is False:
        raise ValueError(f"{path} not written: the held-out loss measured now ({result['heldout_loss_now']:.4f}) "
                         f"is not the one recorded at training ({result['heldout_loss']:.4f}), so the tokenizer "
                         "or corpus changed since the checkpoint was trained and these numbers read it through "
                         "the wrong tokens; measure with --data DIR holding the data it was trained on")
    write_json_atomic(path, result)
    return path


def read_capability(name_or_dir: str) -> dict | None:
    """The capability.json of a checkpoint, or None when it has none."""
    path = capability_path(name_or_dir)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- 6. the data card

CARD_BEGIN, CARD_END = "<!-- checkpoint tables: begin (minipeft capability --card) -->", \
    "<!-- checkpoint tables: end -->"
GOALS = {"ratio": 1.5, "encoder_probe": 0.80}


def card_tables(names=("gpt2-s", "gpt2-m", "gpt2-l", "bert-m")) -> str:
    """The checkpoint tables of data/README.md, read from each checkpoint's metrics.json and
    capability.json (never written by hand: a test compares the README with this)."""
    rows_t = ["| preset | layout | d / layers / heads / context | parameters | steps run (best) of max | lr | "
              "held-out loss | unigram | trained | file |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows_c = ["| model | held-out | E2E refs (ratio) | WebNLG refs (ratio) | frozen probe, SST-2 dev | keyword | "
              "zero-shot SST-2 (positive) | translation 0 / 1 / 4-shot |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        d = checkpoint_dir(name)
        with open(os.path.join(d, "metrics.json"), encoding="utf-8") as f:
            m = json.load(f)
        with open(os.path.join(d, "config.json"), encoding="utf-8") as f:
            c = json.load(f)
        size = os.path.getsize(os.path.join(d, "model.safetensors")) / 2 ** 20
        layout = "GPT-2 decoder" if m["arch"] == "gpt2" else "BERT encoder (MLM + NSP)"
        minutes = m.get("total_seconds", m["seconds"]) / 60
        rows_t.append(f"| {name} | {layout} | {c['d_model']} / {c['n_layer']} / {c['n_head']} / {c['n_ctx']} | "
                      f"{m['params']:,} | {m['steps']} ({m['best_step']}) of {m['max_steps']} | {m['lr']:g} | "
                      f"{m['heldout_loss']:.3f} | {m['unigram_loss']:.3f} | {minutes:.0f} min, {m['machine']} | "
                      f"{size:.1f} MB |")
        cap = read_capability(d)
        if cap is None:
            rows_c.append(f"| {name} | (no capability.json: run `minipeft capability {name} --write`) |||||||")
            continue
        ref = cap["reference_loss"]
        probe = ", ".join(f"{f} {r['dev_accuracy']:.1%}" for f, r in cap["linear_probe"].items())
        z = cap["zero_shot_sst2"]
        icl = cap["translation_icl"]
        icl_s = "n/a (encoder)" if "skipped" in icl else " / ".join(f"{r['accuracy']:.0%}" for r in icl.values())
        rows_c.append(f"| {name} | {cap['heldout_loss']:.3f} | {ref['e2e']['loss']:.3f} ({ref['e2e']['ratio_to_heldout']:.2f}) | "
                      f"{ref['webnlg']['loss']:.3f} ({ref['webnlg']['ratio_to_heldout']:.2f}) | {probe} | "
                      f"{cap['keyword_baseline']['dev_accuracy']:.1%} | {z['accuracy']:.1%} ({z['positive_fraction']:.0%}) | "
                      f"{icl_s} |")
    return "\n".join([CARD_BEGIN, "", *rows_t, "", *rows_c, "", CARD_END])


def card_section(readme_text: str) -> str | None:
    """The text between the card markers of a README (None without them)."""
    if CARD_BEGIN not in readme_text or CARD_END not in readme_text:
        return None
    a = readme_text.index(CARD_BEGIN)
    return readme_text[a:readme_text.index(CARD_END) + len(CARD_END)]


# ----------------------------------------------------------------------------- the command line

def format_table(res: dict) -> str:
    """The result of `measure` as a few readable lines."""
    held = f", held-out loss {res['heldout_loss']:.4f}" if res.get("heldout_loss") is not None else ""
    lines = [f"{res['model']} ({res['arch']}, {res['params']:,} parameters, n_ctx {res['n_ctx']}{held}): "
             f"measured in {res['seconds']['total']:.1f} s",
             "reference loss, dev references as plain text (nats/token; goal: ratio <= 1.5)"]
    if res.get("tokenizer_matches") is False:
        lines.insert(1, f"WARNING: the held-out loss measured now is {res['heldout_loss_now']:.4f}, not the "
                        f"{res['heldout_loss']:.4f} recorded at training: the tokenizer or corpus changed since "
                        "this checkpoint was trained, so the numbers below read it through the wrong tokens")
    for task, r in res["reference_loss"].items():
        ratio = f"ratio {r['ratio_to_heldout']:.2f}" if r.get("ratio_to_heldout") is not None else "no held-out loss"
        lines.append(f"  {task:<8} {r['loss']:7.4f}   {ratio}   ({r['texts']} texts, {r['tokens']:,} tokens)")
    kw = res["keyword_baseline"]
    first = next(iter(res["linear_probe"].values()))
    lines.append(f"linear probe on frozen SST-2 features ({first['train_size']} train, {first['dev_size']} dev)")
    for f, r in res["linear_probe"].items():
        lines.append(f"  {f:<8} dev {r['dev_accuracy']:.3f}   train {r['train_accuracy']:.3f}")
    lines.append(f"  keyword  dev {kw['dev_accuracy']:.3f}   (positive minus negative words, no model)")
    z = res["zero_shot_sst2"]
    lines.append(f"zero-shot SST-2 ('{LM_TEMPLATE.format('...')}' {' / '.join(w.strip() for w in LABEL_WORDS)}): "
                 f"accuracy {z['accuracy']:.3f}, predicted positive {z['positive_fraction']:.3f} (n {z['n']})")
    icl = res["translation_icl"]
    if "skipped" in icl:
        lines.append(f"in-context translation: skipped ({icl['skipped']})")
    else:
        n = next(iter(icl.values()))["n"]
        lines.append(f"in-context translation en->fr, exact first word ({n} queries): "
                     + ", ".join(f"{k}-shot {r['accuracy']:.3f}" for k, r in icl.items()))
        k, r = list(icl.items())[-1]
        lines += [f"  {k}-shot: {q} {got!r} (answer {fr!r})" for q, fr, got in r["examples"]]
    return "\n".join(lines)


def capability_cli(a) -> None:
    """`minipeft capability MODEL [--json] [--write [--overwrite]] [--fast] [--data DIR]`."""
    import sys
    if a.card:
        print(card_tables())
        return
    if not a.model:
        raise ValueError("minipeft capability: name a model (a shipped preset or a checkpoint directory), or pass --card")
    if a.write:
        check_writable(a.model, a.overwrite)          # refused before any work
    res = measure(a.model, fast=a.fast, settings={"seed": a.seed}, data_dir=a.data)
    print(json.dumps(res, indent=1) if a.json else format_table(res))
    if a.write:
        path = write_capability(res, a.model, a.overwrite)
        print(f"wrote {path}", file=sys.stderr if a.json else sys.stdout)


__all__ = ["reference_loss", "text_loss", "linear_probe", "linear_probes", "sst2_features", "fit_logistic",
           "probe_accuracy", "keyword_baseline", "zero_shot_sst2", "translation_prompts", "translation_icl",
           "measure", "write_capability", "read_capability", "check_writable", "format_table", "DEFAULTS", "FAST"]
