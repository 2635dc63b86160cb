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
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from . import backend, ops
from .autograd import no_grad

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
    hostnp = backend.host()
    T = max(len(r) for r in rows)
    ids = hostnp.full((len(rows), T), tok.pad_id, dtype=hostnp.int64)
    mask = hostnp.zeros((len(rows), T), dtype=hostnp.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    scores = []
    with no_grad():
        for s in range(0, len(rows), 64):
            logp = ops.log_softmax(model.lm_logits(model.encode(ids[s:s + 64], mask[s:s + 64])), axis=-1)
            logp = backend.to_numpy(logp.data)                                 # (b, T, V)
            for i, span in enumerate(spans[s:s + 64]):
                scores.append(sum(float(logp[i, p, t]) for p, t in span) / len(span))
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


__all__ = ["MASK", "Template", "Verbalizer", "Example", "choose_demonstrations", "build_prompt",
           "score_labels", "predict", "accuracy"]
