"""PET and iPET: Pattern-Exploiting Training (Schick & Schuetze, EACL 2021 and NAACL 2021;
official code timoschick/pet).

Few labelled examples T, many unlabelled ones D. A pattern-verbalizer pair p = (template,
verbalizer) turns classification into filling a <MASK> (prompting.py). PET:

  1. one model per pair p (and per repetition), fine-tuned on T through its pattern:
         s_p(y | x) = logit of v_p(y) at the slot,   loss = CE(softmax_y s_p(y | x), y)
  2. the ensemble labels D with soft labels, each model weighted by its accuracy on T *before*
     training (the code's reduction "wmean"):
         s(y | x) = sum_p w_p s_p(y | x) / sum_p w_p                                      (1)
  3. a standard classifier C (a head on the encoder) is distilled on (D, s) with temperature T = 2:
         L = T^2 KL( softmax(s / T) || softmax(z_C / T) ), averaged over examples          (2)

iPET repeats step 1 for generations g = 1, 2, ...: model i of generation g trains on T plus
examples of D labelled by the ensemble (1) of a random fraction lambda = 0.25 of the OTHER models
of generation g - 1, so that its training set grows to |T| d^g (d = 5), label-balanced. The
official code samples those examples in proportion to the ensemble's confidence; here, per label,
the most confident ones are taken (deterministic). Left out: the auxiliary MLM loss on D
(alpha = 0.9999 in the official cli.py), which barely changes the loss.

Shapes: s_p (N, C) per model; weights (M,); soft targets (N, C) logits; z_C (N, C).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from . import backend, ops
from .autograd import Tensor, no_grad
from .data.tokenizer import pad_rows
from .prompting import (Example, Template, Verbalizer, build_prompt, label_word_logits, prompt_batches,
                        prompt_loss_fn, single_token_ids, slot_batch)


@dataclass(frozen=True)
class PVP:
    """A pattern-verbalizer pair."""
    template: Template
    verbalizer: Verbalizer


# ----------------------------------------------------------------------------- the math (1), (2)

def ensemble_logits(scores: list, weights) -> object:
    """(1): sum_m w_m s_m / sum_m w_m over the models' (N, C) host score arrays."""
    hostnp = backend.host()
    w = hostnp.asarray(weights, dtype=hostnp.float64)
    if len(scores) != len(w) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"ensemble: {len(scores)} score arrays need as many weights >= 0 with a positive sum, got {w}")
    return sum(wi * hostnp.asarray(s, dtype=hostnp.float64) for wi, s in zip(w, scores)) / w.sum()


def soft_labels(logits, temperature: float = 2.0):
    """softmax(s / T) over the labels (host), the targets of (2)."""
    hostnp = backend.host()
    z = hostnp.asarray(logits, dtype=hostnp.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = hostnp.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def distillation_loss(student_logits: Tensor, target_logits, temperature: float = 2.0) -> Tensor:
    """(2): T^2 * mean_n KL(softmax(s_n / T) || softmax(z_n / T)) for the student's logits z (B, C)."""
    q = soft_labels(target_logits, temperature)                                     # (B, C) targets
    logp = ops.log_softmax(student_logits * (1.0 / temperature), axis=-1)            # (B, C)
    hostnp = backend.host()
    q_logq = float((q * hostnp.log(hostnp.maximum(q, 1e-300))).sum())              # the targets' constant part
    cross = (logp * Tensor(backend.to_device(q, dtype=logp.dtype))).sum()
    return (cross * -1.0 + q_logq) * (temperature ** 2 / student_logits.shape[0])


# ----------------------------------------------------------------------------- step 1: one model per pattern

def pattern_scores(model, tok, pvp: PVP, examples: list, batch_size: int = 64):
    """s_p(y | x): (N, C) host logits of the label words at the slot, without gradients."""
    word_ids = single_token_ids(tok, pvp.verbalizer)
    arch, n_ctx = model.config.arch, model.config.n_ctx
    out = []
    with no_grad():
        for s in range(0, len(examples), batch_size):
            chunk = examples[s:s + batch_size]
            prompts = [build_prompt(tok, pvp.template, e, arch=arch, max_len=n_ctx - 2) for e in chunk]
            b = slot_batch(tok, prompts, [0] * len(chunk), arch)
            out.append(backend.to_numpy(label_word_logits(model, b, word_ids).data))
    hostnp = backend.host()
    return hostnp.concatenate(out).astype(hostnp.float64)


def accuracy_of(scores, examples) -> float:
    hostnp = backend.host()
    return float((hostnp.asarray(scores).argmax(axis=1) == hostnp.asarray([e.label for e in examples])).mean())


def train_pattern_model(make_model, tok, pvp: PVP, train: list, steps: int, lr: float, batch_size: int = 8,
                        seed: int = 0, labelled: list | None = None):
    """A fresh model (make_model(seed) -> model or PeftModel), fine-tuned on `train` through the
    pattern. Returns (model, w_p: its accuracy before training on `labelled`, default `train`;
    iPET passes the original labelled set T, not the examples the ensemble labelled)."""
    from .train import fit
    model = make_model(seed)
    base = getattr(model, "model", model)                     # a PeftModel's config is its base model's
    labelled = train if labelled is None else labelled
    weight = accuracy_of(pattern_scores(model, tok, pvp, labelled), labelled)
    batches = prompt_batches(tok, pvp.template, pvp.verbalizer, train, min(batch_size, len(train)),
                             base.config.arch, base.config.n_ctx, seed=seed)
    fit(model, prompt_loss_fn(single_token_ids(tok, pvp.verbalizer)), batches, steps=steps, lr=lr,
        progress=False, processes=1)
    return model.eval(), weight


def pet(make_model, tok, pvps: list, labelled: list, unlabelled: list, steps: int = 100, lr: float = 1e-4,
        repetitions: int = 1, batch_size: int = 8) -> dict:
    """Steps 1 and 2: {"models", "weights", "scores" (per model, on unlabelled), "ensemble" (1)}."""
    models, weights, scores = [], [], []
    for p_i, pvp in enumerate(pvps):
        for r in range(repetitions):
            m, w = train_pattern_model(make_model, tok, pvp, labelled, steps, lr, batch_size, seed=100 * p_i + r)
            models.append((pvp, m))
            weights.append(w)
            scores.append(pattern_scores(m, tok, pvp, unlabelled))
    return {"models": models, "weights": weights, "scores": scores,
            "ensemble": ensemble_logits(scores, [max(w, 1e-6) for w in weights])}


# ----------------------------------------------------------------------------- iPET

def ipet_training_set(labelled: list, unlabelled: list, scores: list, weights: list, me: int, generation: int,
                      d: int = 5, lam: float = 0.25, seed: int = 0) -> list:
    """Model `me`'s training set of generation g: the labelled examples plus (|T| d^g - |T|)
    unlabelled examples labelled by the ensemble of round(lam (M - 1)) (at least 1) other models of
    generation g - 1, the same number per label, the most confident first."""
    hostnp = backend.host()
    others = [i for i in range(len(scores)) if i != me]
    if not others:
        raise ValueError("iPET needs at least two models (pattern-verbalizer pairs x repetitions)")
    rng = random.Random(f"minipeft-ipet:{seed}:{generation}:{me}")
    chosen = rng.sample(others, max(1, round(lam * len(others))))
    ens = ensemble_logits([scores[i] for i in chosen], [max(weights[i], 1e-6) for i in chosen])
    prob = soft_labels(ens, 1.0)
    pred = prob.argmax(axis=1)
    n_labels = prob.shape[1]
    extra = len(labelled) * d ** generation - len(labelled)
    per_label = extra // n_labels
    added = []
    for y in range(n_labels):
        mine = hostnp.flatnonzero(pred == y)
        mine = mine[hostnp.argsort(-prob[mine, y], kind="stable")][:per_label]
        added += [Example(unlabelled[i].s1, y, unlabelled[i].s2) for i in sorted(mine.tolist())]
    return list(labelled) + added


def ipet(make_model, tok, pvps: list, labelled: list, unlabelled: list, generations: int = 2, steps: int = 100,
         lr: float = 1e-4, d: int = 5, lam: float = 0.25, batch_size: int = 8, start: dict | None = None) -> dict:
    """PET's generation 0, then `generations` iPET generations; the last one's result (as pet()).
    start: a pet() result (one repetition per pair) to use as generation 0 instead of training it
    again, so that PET and iPET can be compared without training generation 0 twice."""
    if start is not None and len(start["models"]) != len(pvps):
        raise ValueError(f"start: a pet() result with one model per pattern-verbalizer pair ({len(pvps)}), "
                         f"got {len(start['models'])} models")
    res = start if start is not None else pet(make_model, tok, pvps, labelled, unlabelled, steps, lr, 1, batch_size)
    for g in range(1, generations + 1):
        models, weights, scores = [], [], []
        for i, (pvp, _) in enumerate(res["models"]):
            train = ipet_training_set(labelled, unlabelled, res["scores"], res["weights"], i, g, d, lam)
            m, w = train_pattern_model(make_model, tok, pvp, train, steps, lr, batch_size, seed=1000 * g + i,
                                       labelled=labelled)
            models.append((pvp, m))
            weights.append(w)
            scores.append(pattern_scores(m, tok, pvp, unlabelled))
        res = {"models": models, "weights": weights, "scores": scores,
               "ensemble": ensemble_logits(scores, [max(w, 1e-6) for w in weights]), "generation": g}
    return res


# ----------------------------------------------------------------------------- step 3: distil a classifier

def distillation_batches(tok, examples: list, target_logits, batch_size: int, max_len: int, seed: int = 0):
    """Endless shuffled `<cls> sentence <sep>` batches with the ensemble's logits as "soft"."""
    hostnp = backend.host()
    gen = hostnp.random.default_rng(seed)
    target_logits = hostnp.asarray(target_logits)
    while True:
        order = gen.permutation(len(examples))
        for s in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[s:s + batch_size]
            rows = [[tok.cls_id] + tok.encode(examples[i].s1)[:max_len - 2] + [tok.sep_id] for i in idx]
            b = pad_rows(rows, tok.pad_id)
            yield {"ids": b.ids, "attention_mask": b.attention_mask, "soft": target_logits[idx]}


def distillation_loss_fn(temperature: float = 2.0):
    """loss_fn(model, batch) for fit: (2) between the head's logits and the batch's soft targets."""
    return lambda model, b: distillation_loss(model.classify(b["ids"], b["attention_mask"]), b["soft"], temperature)


__all__ = ["PVP", "ensemble_logits", "soft_labels", "distillation_loss", "pattern_scores", "train_pattern_model",
           "pet", "ipet_training_set", "ipet", "distillation_batches", "distillation_loss_fn"]
