"""In-context and prompt-based learning: templates, verbalizers, demonstrations and label-word
scoring, for the decoders (next-token scoring) and the masked-LM encoder (scoring at <mask>).

A classification example becomes text through a TEMPLATE with slots, and a label becomes a word
through a VERBALIZER (PET, Schick & Schuetze 2021; LM-BFF, Gao, Fisch & Chen 2021):

    template  "<S1> It was <MASK> ."        verbalizer {0: "terrible", 1: "great"}
    x = "The soup was cold."  ->  "The soup was cold. It was <MASK> ."

The model's score of label y is the log-probability of its word where <MASK> stands:

    encoder:  s(y) = (1/|v(y)|) sum_j log p_MLM(v(y)_j | prompt with |v(y)| <mask> tokens)     (1)
    decoder:  s(y) = (1/|v(y)|) sum_j log p(v(y)_j | prompt up to <MASK>, v(y)_<j)              (2)

(a label word of several tokens is averaged over its tokens), and the prediction is argmax_y s(y).
For a decoder everything after <MASK> in the template is dropped: it predicts left to right.

In-context learning (GPT-3, Brown et al. 2020) puts k DEMONSTRATIONS, each a filled template with
its true label word, before the query, after an optional task description:

    "Translate English to French: cheese => fromage . sea => mer . dog =>"

Demonstrations are chosen with a fixed seed, at random or as the k training examples nearest to
the query by sentence embedding (cosine similarity; LM-BFF uses SBERT, minipeft MiniLM:
`hf.encode_sentences`); LM-BFF's "one per class from the most similar half" is `per_class=True`.
A prompt longer than the context loses whole demonstrations first (the least similar / the last
drawn), then the start of the query's own text: the query's label slot is never cut.

Prompt-based fine-tuning (LM-BFF) trains through the LM head with no new parameters: the label
words' logits at the slot are the classifier's logits (`prompt_batches`, `prompt_loss_fn`, with
any PEFT method), optionally with one demonstration per class appended to every input; the label
words can be searched automatically (`search_label_words`), and so can templates
(`search_templates`: LM-BFF fills template spans with T5; here the encoder's MLM or the decoder
fills them, by beam search).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from . import backend, ops
from .autograd import no_grad
from .data.tokenizer import pad_rows

MASK = "<MASK>"


# ----------------------------------------------------------------------------- templates and verbalizers

@dataclass(frozen=True)
class Template:
    """Text with slots <S1> (the input; <S2> for a second sentence) and <MASK> (the label word).

    "<S1> It was <MASK> ." ; an NLI template: "<S1> ? <MASK> , <S2>"."""
    text: str

    def __post_init__(self):
        if self.text.count(MASK) != 1 or "<S1>" not in self.text:
            raise ValueError(f"template {self.text!r} needs <S1> (the input) and exactly one {MASK} "
                             f"(where the label word goes), e.g. '<S1> It was <MASK> .'")

    def fill(self, s1: str, s2: str | None = None, word: str | None = None) -> str:
        """The template with its slots filled; <MASK> stays unless a word is given (a demonstration)."""
        if ("<S2>" in self.text) != (s2 is not None):
            raise ValueError(f"template {self.text!r} {'needs' if '<S2>' in self.text else 'has no'} a second sentence <S2>")
        out = self.text.replace("<S1>", s1.strip())
        if s2 is not None:
            out = out.replace("<S2>", s2.strip())
        return out if word is None else out.replace(MASK, word)

    def split(self, s1: str, s2: str | None = None) -> tuple[str, str]:
        """(text before <MASK>, text after it) of the filled template."""
        before, after = self.fill(s1, s2).split(MASK)
        return before, after


@dataclass(frozen=True)
class Verbalizer:
    """One word per label, in label order: ("terrible", "great"). Words are scored with a leading
    space (" great"), as they follow another word in running text."""
    words: tuple

    def __post_init__(self):
        if len(self.words) < 2 or len(set(self.words)) != len(self.words):
            raise ValueError(f"a verbalizer needs one distinct word per label (at least 2), got {self.words!r}")

    def token_ids(self, tok) -> list[list[int]]:
        """The tokens of each label word (" " + word), one list per label (several tokens allowed)."""
        return [tok.encode(" " + w) for w in self.words]


# ----------------------------------------------------------------------------- demonstrations

@dataclass
class Example:
    """One labelled (or query) example: its text(s) and label (an int, or the target text)."""
    s1: str
    label: object = None
    s2: str | None = None


def choose_demonstrations(query: Example, pool: list, k: int, seed: int = 0, how: str = "random",
                          embed=None, per_class: bool = False, n_labels: int | None = None) -> list:
    """k demonstrations for `query` from `pool` (never the query itself), deterministic per seed.

    how="random": drawn uniformly. how="similar": the k nearest by cosine similarity of
    embed(texts) -> (N, d) host vectors (e.g. lambda t: hf.encode_sentences(minilm, tok, t)), most
    similar first. per_class (LM-BFF): one demonstration per label 0..n_labels-1, drawn from that
    label's most similar half of the pool (how="similar") or at random."""
    if how not in ("random", "similar"):
        raise ValueError(f"how={how!r}: choose 'random' or 'similar'")
    if how == "similar" and embed is None:
        raise ValueError("how='similar' needs embed=, a function from texts to sentence vectors")
    pool = [e for e in pool if (e.s1, e.s2) != (query.s1, query.s2)]
    rng = random.Random(f"minipeft-demos:{seed}:{query.s1}")
    order = list(range(len(pool)))
    if how == "similar":
        hostnp = backend.host()
        vecs = hostnp.asarray(embed([_text(query)] + [_text(e) for e in pool]), dtype=hostnp.float64)
        vecs = vecs / hostnp.maximum(hostnp.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        sim = vecs[1:] @ vecs[0]                                            # cosine to the query
        order = [int(i) for i in hostnp.argsort(-sim, kind="stable")]       # most similar first
    if not per_class:
        if how == "random":
            rng.shuffle(order)
        return [pool[i] for i in order[:k]]
    labels = range(n_labels if n_labels is not None else 1 + max(e.label for e in pool))
    out = []
    for y in labels:
        mine = [i for i in order if pool[i].label == y]
        if not mine:
            raise ValueError(f"no example of label {y} in the demonstration pool")
        half = mine[:max(1, len(mine) // 2)] if how == "similar" else mine
        out.append(pool[rng.choice(half)])
    return out


def _text(e: Example) -> str:
    return e.s1 if e.s2 is None else f"{e.s1} {e.s2}"


# ----------------------------------------------------------------------------- building a prompt

def build_prompt(tok, template: Template, query: Example, demos=(), verbalizer: Verbalizer | None = None,
                 description: str = "", sep: str = " ", max_len: int | None = None, arch: str = "gpt2"):
    """Token ids of [description] demo_1 sep ... demo_k sep query-prompt, and where the label goes.

    Each demonstration is the template filled with its own label word (verbalizer.words[label], or
    the label itself when it is a string: generation). The query's template is cut at <MASK> for a
    decoder (arch "gpt2": it predicts what follows) and keeps its tail for the encoder (the mask is
    placed by `score_labels`). Returns (ids_before, ids_after): the tokens before and after the
    label slot. max_len: drop demonstrations from the end of `demos`, then the start of the query's
    text, until ids_before + label tokens + ids_after fit."""
    def word(e):
        return verbalizer.words[e.label] if verbalizer is not None else str(e.label)

    demos = list(demos)
    reserve = 1 + (max(len(w) for w in verbalizer.token_ids(tok)) if verbalizer is not None else 0)
    while True:
        parts = ([description.strip()] if description.strip() else []) + \
                [template.fill(e.s1, e.s2, word(e)) for e in demos]
        head = sep.join(parts) + (sep if parts else "")
        before, after = template.split(query.s1, query.s2)
        ids_before = tok.encode(head + before.rstrip())
        ids_after = tok.encode(after.rstrip()) if arch == "bert" and after.strip() else []
        if max_len is None or len(ids_before) + len(ids_after) + reserve <= max_len:
            return ids_before, ids_after
        if demos:
            demos.pop()                                   # the least similar / the last drawn goes first
            continue
        # no demonstration left: cut the start of the query's own text, keep the template around it
        q = tok.encode(query.s1)
        room = max_len - reserve - len(ids_before) - len(ids_after) + len(q)
        if room < 1:
            raise ValueError(f"the template alone does not fit in {max_len} tokens")
        query = Example(tok.decode(q[len(q) - room:]), query.label, query.s2)


# ----------------------------------------------------------------------------- scoring label words

def score_labels(model, tok, prompts, verbalizer: Verbalizer) -> list[list[float]]:
    """s(y) of (1) / (2) for every prompt (ids_before, ids_after) and label: (N, n_labels) floats."""
    words = verbalizer.token_ids(tok)
    bert = model.config.arch == "bert"
    rows, spans = [], []                        # one row per (prompt, label): where its word's tokens are scored
    for before, after in prompts:
        for w in words:
            if bert:                            # <cls> before <mask>*|w| after <sep>: predict w at the masks
                row = [tok.cls_id] + before + [tok.mask_id] * len(w) + after + [tok.sep_id]
                first = 1 + len(before)
                spans.append([(first + j, t) for j, t in enumerate(w)])
            else:                               # <bos> before w: position p predicts token p + 1
                row = [tok.bos_id] + before + w
                spans.append([(len(before) + j, t) for j, t in enumerate(w)])
            rows.append(row)
    b = pad_rows(rows, tok.pad_id)
    ids, mask = b.ids, b.attention_mask                                    # (R, T) with R = prompts x labels
    hostnp, xp = backend.host(), backend.xp
    scores = []
    with no_grad():
        for s in range(0, len(rows), 64):
            part = spans[s:s + 64]
            r, p, t = (hostnp.asarray(v, dtype=hostnp.int64) for v in
                       zip(*[(i, pos, tid) for i, span in enumerate(part) for pos, tid in span]))  # (N,) each
            h = model.encode(ids[s:s + 64], mask[s:s + 64])                    # (b, T, d)
            h = h[backend.to_device(r), backend.to_device(p)]                  # (N, d) only the scored positions
            logp = ops.log_softmax(model.lm_logits(h), axis=-1).data           # (N, V)
            picked = backend.to_numpy(logp[xp.arange(len(t)), backend.to_device(t)])   # (N,) log p(token)
            at = 0
            for span in part:                                                  # mean over a word's tokens
                scores.append(sum(picked[at:at + len(span)].tolist()) / len(span))
                at += len(span)
    n = len(words)
    return [scores[i:i + n] for i in range(0, len(scores), n)]


def predict(model, tok, prompts, verbalizer: Verbalizer) -> list[int]:
    """argmax_y s(y) for each prompt."""
    return [max(range(len(s)), key=s.__getitem__) for s in score_labels(model, tok, prompts, verbalizer)]


def accuracy(model, tok, template: Template, verbalizer: Verbalizer, queries: list, pool: list = (),
             k: int = 0, seed: int = 0, how: str = "random", embed=None, per_class: bool = False,
             description: str = "", sep: str = " ") -> float:
    """Prompt-based accuracy of a frozen model on labelled queries, with k demonstrations from
    `pool` per query (k = 0: zero-shot)."""
    n_ctx, arch = model.config.n_ctx, model.config.arch
    prompts = []
    for q in queries:
        demos = choose_demonstrations(q, pool, k, seed, how, embed, per_class, len(verbalizer.words)) \
            if (k or per_class) else []
        prompts.append(build_prompt(tok, template, q, demos, verbalizer, description, sep,
                                    max_len=n_ctx - 2, arch=arch))
    pred = predict(model, tok, prompts, verbalizer)
    return sum(p == q.label for p, q in zip(pred, queries)) / max(len(queries), 1)


# ----------------------------------------------------------------------------- prompt-based fine-tuning (LM-BFF)
# Fine-tuning through the LM head, no new parameters: the logits of the label words at the slot
# are the classifier's logits, trained with cross-entropy (Gao et al. 2021, eq. 1):
#     p(y | x) = softmax_y ( w_v(y) . h_slot )      h_slot: the hidden state where <MASK> is
# (the encoder: the <mask> position; a decoder: the last token before the slot, which predicts it).

def slot_batch(tok, prompts, labels, arch: str) -> dict:
    """Right-padded rows of single-slot prompts (ids_before, ids_after) with the slot's position:
    bert `<cls> before <mask> after <sep>` (slot = the mask), gpt2 `<bos> before` (slot = its last token)."""
    hostnp = backend.host()
    rows, slots = [], []
    for before, after in prompts:
        if arch == "bert":
            rows.append([tok.cls_id] + before + [tok.mask_id] + after + [tok.sep_id])
            slots.append(1 + len(before))
        else:
            rows.append([tok.bos_id] + before)
            slots.append(len(before))
    b = pad_rows(rows, tok.pad_id)
    return {"ids": b.ids, "attention_mask": b.attention_mask, "slot": hostnp.asarray(slots, dtype=hostnp.int64),
            "labels": hostnp.asarray(labels, dtype=hostnp.int64)}


def single_token_ids(tok, verbalizer: Verbalizer) -> list[int]:
    """The label words' ids; prompt-based fine-tuning (as LM-BFF) needs one token per word."""
    ids = verbalizer.token_ids(tok)
    bad = [w for w, i in zip(verbalizer.words, ids) if len(i) != 1]
    if bad:
        raise ValueError(f"label words {bad} are not single tokens (' ' + word) of this tokenizer; "
                         f"prompt-based fine-tuning scores one token per label: choose other words")
    return [i[0] for i in ids]


def slot_logits(model, batch):
    """(B, V) LM logits at each row's slot."""
    h = model.encode(batch["ids"], batch["attention_mask"])                       # (B, T, d)
    slot = backend.to_device(batch["slot"])
    return model.lm_logits(h[backend.xp.arange(h.shape[0]), slot])                # (B, V)


def label_word_logits(model, batch, word_ids):
    """(B, n_labels): the label words' logits at the slot, the logits of p(y | x) above."""
    return slot_logits(model, batch)[:, backend.to_device(backend.host().asarray(word_ids))]


def prompt_batches(tok, template: Template, verbalizer: Verbalizer, examples: list, batch_size: int,
                   arch: str, n_ctx: int, seed: int = 0, demos_from: list | None = None, how: str = "random",
                   embed=None, endless: bool = True):
    """Shuffled batches of slot prompts for prompt-based fine-tuning. demos_from: append LM-BFF's
    demonstrations (one per class, `choose_demonstrations(per_class=True)`), drawn again each epoch."""
    gen = random.Random(f"minipeft-prompt-batches:{seed}")
    epoch = 0
    while True:
        order = list(range(len(examples)))
        gen.shuffle(order)
        for s in range(0, len(order), batch_size):
            chunk = [examples[i] for i in order[s:s + batch_size]]
            if endless and len(chunk) < batch_size:
                break
            prompts = []
            for e in chunk:
                demos = [] if demos_from is None else choose_demonstrations(
                    e, demos_from, 0, seed + epoch, how, embed, per_class=True, n_labels=len(verbalizer.words))
                prompts.append(build_prompt(tok, template, e, demos, verbalizer, max_len=n_ctx - 2, arch=arch))
            yield slot_batch(tok, prompts, [e.label for e in chunk], arch)
        epoch += 1
        if not endless:
            return


def prompt_loss_fn(word_ids):
    """loss_fn(model, batch) for train.fit: cross-entropy of the label words' logits at the slot."""
    return lambda model, batch: ops.cross_entropy(label_word_logits(model, batch, word_ids), batch["labels"])


def search_label_words(model, tok, template: Template, examples: list, n_labels: int, k: int = 10,
                       candidates=None, batch_size: int = 64) -> tuple:
    """LM-BFF's automatic label words: for each label y the k candidate words with the largest
    sum over y's training examples of log p(word | slot); then, of all combinations of one
    such word per label, the one with the best zero-shot accuracy on the examples.
    candidates: token ids to choose from (default: whole-word tokens, " " + letters, not special).
    Returns (words, accuracy)."""
    import itertools
    hostnp = backend.host()
    if candidates is None:
        candidates = [i for i in range(7, tok.vocab_size)
                      if (w := tok.decode([i], skip_special=False)).startswith(" ") and w[1:].isalpha()]
    cand = hostnp.asarray(candidates, dtype=hostnp.int64)
    logp = []                                                                   # (N, |cand|)
    with no_grad():
        for s in range(0, len(examples), batch_size):
            chunk = examples[s:s + batch_size]
            prompts = [build_prompt(tok, template, e, arch=model.config.arch, max_len=model.config.n_ctx - 2)
                       for e in chunk]
            b = slot_batch(tok, prompts, [0] * len(chunk), model.config.arch)
            lp = backend.to_numpy(ops.log_softmax(slot_logits(model, b), axis=-1).data)
            logp.append(lp[:, cand])
    logp = hostnp.concatenate(logp)
    labels = hostnp.asarray([e.label for e in examples])
    top = [cand[hostnp.argsort(-logp[labels == y].sum(axis=0), kind="stable")[:k]] for y in range(n_labels)]
    best, best_acc = None, -1.0
    col = {int(t): j for j, t in enumerate(cand)}
    for combo in itertools.product(*top):
        if len(set(combo)) < n_labels:
            continue
        pred = logp[:, [col[int(t)] for t in combo]].argmax(axis=1)
        acc = float((pred == labels).mean())
        if acc > best_acc:
            best, best_acc = combo, acc
    return tuple(tok.decode([int(t)]).strip() for t in best), best_acc


# ----------------------------------------------------------------------------- automatic templates
# LM-BFF (Gao et al. 2021, section 5.2) generates templates with T5: for every training example it
# asks T5 to fill the spans <X>, <Y> of "<S1> <X> v(y) <Y>" and keeps the fillings with the largest
#     sum over training examples (x, y) of log P(T | x, v(y))                                   (3)
# by beam search, then ranks the templates by accuracy. minipeft has no T5: the spans are filled by
# the models it has, a fixed number of whole-word tokens, left to right, with a beam:
#     encoder  the slots not yet filled are <mask>; slot j scores log p_MLM(t_j | x, t_<j, v(y))
#              (the label word stays in place, as T5 sees it)
#     decoder  "<S1> t_1 ... t_m <MASK>": slot j scores log p(t_j | x, t_<j); the label word comes
#              after the slots, so it enters only the ranking
# and the finished candidates are ranked by zero-shot accuracy on the same examples (LM-BFF ranks
# by the dev accuracy after fine-tuning each one: a step too costly to repeat for every candidate).

def search_templates(model, tok, examples: list, verbalizer: Verbalizer, before: int = 2, after: int = 0,
                     beam: int = 8, candidates=None, batch_size: int = 64) -> list:
    """Templates "<S1> t_1..t_before <MASK> u_1..u_after ." (encoder) or "<S1> t_1..t_before <MASK>"
    (decoder, after must be 0) filled by beam search on (3) over `examples` (Example with int
    labels); candidates: the token ids a slot may take (default: whole-word tokens, " " + letters,
    and "," and ":").
    Returns [(Template, zero-shot accuracy on the examples, summed log-probability)], best first."""
    hostnp, xp = backend.host(), backend.xp
    bert = model.config.arch == "bert"
    n = before + after
    if isinstance(before, bool) or not isinstance(before, int) or not isinstance(after, int) \
            or before < 0 or after < 0 or n < 1:
        raise ValueError(f"before={before!r}, after={after!r}: numbers of template words on each side of "
                         f"the label word, whole numbers >= 0, at least one in all")
    if after and not bert:
        raise ValueError("a decoder predicts left to right: words after the label word never matter to it; "
                         "use after=0")
    if not examples or any(not isinstance(e.label, int) for e in examples):
        raise ValueError("search_templates needs labelled examples (Example with an int label)")
    if candidates is None:                         # whole words, and the commas and colons between them
        candidates = [i for i in range(7, tok.vocab_size)
                      if ((w := tok.decode([i], skip_special=False)).startswith(" ") and w[1:].isalpha())
                      or w in (",", ":")]
    cand = backend.to_device(hostnp.asarray(candidates, dtype=hostnp.int64))
    words = verbalizer.token_ids(tok)
    tail = tok.encode(" .") if bert else []
    room = model.config.n_ctx - 3 - n - max(len(w) for w in words) - len(tail)
    xs = [tok.encode(e.s1)[-room:] for e in examples]

    def row(x, word, fill):                        # the ids of one example with `fill` in the slots
        slots = list(fill) + [tok.mask_id] * (n - len(fill))
        if bert:
            return [tok.cls_id] + x + slots[:before] + word + slots[before:] + tail + [tok.sep_id]
        return [tok.bos_id] + x + slots                                  # (the next slot is predicted)

    def at(x, word, j):                            # the position whose output predicts slot j
        if bert:
            return 1 + len(x) + j + (len(word) if j >= before else 0)
        return len(x) + j

    beams = [((), 0.0)]                            # (filled slot ids, summed log-probability)
    with no_grad():
        for j in range(n):
            total = xp.zeros((len(beams), len(candidates)))                  # (beams, C) (3) so far
            jobs = [(b, x, words[e.label]) for b in range(len(beams)) for x, e in zip(xs, examples)]
            for s in range(0, len(jobs), batch_size):
                part = jobs[s:s + batch_size]
                enc = pad_rows([row(x, w, beams[b][0]) for b, x, w in part], tok.pad_id)
                h = model.encode(enc.ids, enc.attention_mask)                # (b, T, d)
                pos = backend.to_device(hostnp.asarray([at(x, w, j) for _, x, w in part]))
                logp = ops.log_softmax(model.lm_logits(h[xp.arange(len(part)), pos]), axis=-1).data  # (b, V)
                for i, (b, _, _) in enumerate(part):
                    total[b] += logp[i, cand]
            score = xp.asarray([sc for _, sc in beams])[:, None] + total    # (beams, C)
            flat = backend.to_numpy(score).ravel()
            best = hostnp.argsort(-flat, kind="stable")[:beam]
            beams = [(beams[k // len(candidates)][0] + (candidates[k % len(candidates)],), float(flat[k]))
                     for k in best]
    out = []
    for fill, logp in beams:
        text = ("<S1>" + tok.decode(list(fill[:before])) + " " + MASK + tok.decode(list(fill[before:]))
                + (" ." if bert else ""))
        t = Template(text)
        out.append((t, accuracy(model, tok, t, verbalizer, examples), logp))
    return sorted(out, key=lambda r: (-r[1], -r[2]))


__all__ = ["MASK", "Template", "Verbalizer", "Example", "choose_demonstrations", "build_prompt",
           "score_labels", "predict", "accuracy", "slot_batch", "single_token_ids", "label_word_logits",
           "prompt_batches", "prompt_loss_fn", "search_label_words", "search_templates"]
