"""Evaluation metrics: accuracy, F1, Matthews correlation, BLEU, ROUGE-L.

All metrics run on the host. Labels may be Python lists, NumPy arrays or CuPy arrays (brought
to the host with `backend.to_numpy`); texts are lists of Python strings.

    metric                  range      convention it follows
    accuracy                [0, 1]
    macro_f1, binary_f1     [0, 1]     sklearn's f1_score (average="macro" / "binary")
    matthews_corrcoef       [-1, 1]    Gorodkin (2004) R_K; 0 when undefined, as sklearn
    corpus_bleu             [0, 100]   sacrebleu (tokenizer '13a', exp smoothing)
    rouge_l                 [0, 1]     E2E NLG challenge scorer (pycocoevalcap, beta = 1.2)

BLEU and ROUGE-L take one or more references per hypothesis:
`references[i]` is either one string or a list of strings, and lists may differ in length.
"""
from __future__ import annotations

import re

from minipeft import backend

np = backend.host()


# ----------------------------------------------------------------------------- input checks

def _labels(x, name: str):
    """Labels -> 1-D host array, with a clear error for the usual mistakes."""
    a = np.asarray(backend.to_numpy(x))   # list, NumPy or CuPy -> host array
    if a.ndim != 1:
        hint = " (these look like scores: take the argmax over the last axis first)" if a.ndim == 2 else ""
        raise ValueError(f"{name} must be a 1-D sequence of labels; got shape {a.shape}{hint}")
    return a


def _check_labels(predictions, references):
    p = _labels(predictions, "predictions")
    r = _labels(references, "references")
    if len(p) != len(r):
        raise ValueError(f"predictions and references must have the same length; got "
                         f"{len(p)} predictions and {len(r)} references")
    if len(p) == 0:
        raise ValueError("predictions and references are empty; expected at least one example")
    return p, r


def _check_texts(hypotheses, references) -> tuple[list[str], list[list[str]]]:
    """Return the hypotheses and, for each, the list of its references (at least one)."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("hypotheses and references must be lists (one entry per example), not a "
                        "single string; wrap one sentence as [sentence]")
    hyps, refs = list(hypotheses), list(references)
    if len(hyps) != len(refs):
        raise ValueError(f"hypotheses and references must have the same length; got "
                         f"{len(hyps)} hypotheses and {len(refs)} reference entries")
    if not hyps:
        raise ValueError("hypotheses and references are empty; expected at least one example")
    out_refs = []
    for i, (h, r) in enumerate(zip(hyps, refs)):
        if not isinstance(h, str):
            raise TypeError(f"hypothesis {i} is a {type(h).__name__}, expected a string "
                            f"(decode token ids with Tokenizer.decode first)")
        rs = [r] if isinstance(r, str) else list(r)
        if not rs:
            raise ValueError(f"hypothesis {i} has no reference; expected at least one string")
        for j, s in enumerate(rs):
            if not isinstance(s, str):
                raise TypeError(f"reference {j} of example {i} is a {type(s).__name__}, "
                                f"expected a string")
        out_refs.append(rs)
    return hyps, out_refs


# ----------------------------------------------------------------------------- classification

def accuracy(predictions, references) -> float:
    """Fraction of exact matches: acc = (1/N) * sum_i [pred_i == ref_i]."""
    p, r = _check_labels(predictions, references)
    return float(np.mean(p == r))


def confusion_matrix(predictions, references, labels=None):
    """Counts C[i, j] = number of examples whose true label is labels[i] and prediction labels[j].

    Rows are true classes, columns predicted classes (sklearn's layout). `labels` defaults to the
    sorted union of the labels seen in either input. Returns (C as int64 array, labels list).
    """
    p, r = _check_labels(predictions, references)
    if labels is None:
        labels = sorted(set(p.tolist()) | set(r.tolist()))
    labels = list(labels)
    index = {lab: k for k, lab in enumerate(labels)}
    missing = sorted({x for x in p.tolist() + r.tolist() if x not in index}, key=str)
    if missing:
        raise ValueError(f"labels {missing} occur in the data but not in labels={labels}; "
                         f"pass every label that occurs, or labels=None")
    C = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, q in zip(r.tolist(), p.tolist()):
        C[index[t], index[q]] += 1
    return C, labels


def _f1_per_class(C):
    """F1_k = 2 TP_k / (2 TP_k + FP_k + FN_k)  (same as 2PR/(P+R); 0 when TP_k = 0)."""
    tp = np.diag(C).astype(np.float64)
    fp = C.sum(axis=0) - tp          # predicted k, truly something else
    fn = C.sum(axis=1) - tp          # truly k, predicted something else
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def macro_f1(predictions, references, labels=None) -> float:
    """Unweighted mean of per-class F1 scores: macro_F1 = (1/K) * sum_k F1_k, with

        F1_k = 2 P_k R_k / (P_k + R_k) = 2 TP_k / (2 TP_k + FP_k + FN_k).

    The classes are `labels`, or else every label seen in predictions or references. A class
    that is never predicted correctly contributes F1_k = 0 (sklearn's zero_division=0).
    """
    C, _ = confusion_matrix(predictions, references, labels)
    return float(np.mean(_f1_per_class(C)))


def binary_f1(predictions, references, positive=1) -> float:
    """F1 of the positive class only (what GLUE reports for MRPC and QQP):
    F1 = 2 TP / (2 TP + FP + FN), with 'positive' the label counted as positive."""
    p, r = _check_labels(predictions, references)
    tp = int(np.sum((p == positive) & (r == positive)))
    fp = int(np.sum((p == positive) & (r != positive)))
    fn = int(np.sum((p != positive) & (r == positive)))
    return 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0


def matthews_corrcoef(predictions, references) -> float:
    """Matthews correlation coefficient, binary or multiclass (Gorodkin's R_K).

    With the confusion matrix C (N examples, K classes), c = sum_k C_kk the number correct,
    t_k = sum_j C_kj how often class k truly occurs and p_k = sum_i C_ik how often it is predicted:

        MCC = (c N - sum_k p_k t_k) / sqrt((N^2 - sum_k p_k^2) (N^2 - sum_k t_k^2))

    For two classes this is (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    When the denominator is 0 (everything predicted, or everything truly, one class) the
    correlation is undefined and 0.0 is returned, as sklearn does, never NaN.
    """
    C, _ = confusion_matrix(predictions, references)
    C = C.astype(np.float64)
    n, c = C.sum(), np.trace(C)
    t, p = C.sum(axis=1), C.sum(axis=0)
    cov_pt = c * n - p @ t
    cov_pp = n * n - p @ p
    cov_tt = n * n - t @ t
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return float(cov_pt / np.sqrt(cov_pp * cov_tt))


# ----------------------------------------------------------------------------- generation

def corpus_bleu(hypotheses, references, tokenize: str = "13a", lowercase: bool = False) -> float:
    """Corpus BLEU (0..100) computed by sacrebleu, the standard implementation.

    Over the whole corpus, with m_n the clipped n-gram matches (a hypothesis n-gram counts at
    most as often as in the reference where it is most frequent) and h_n the hypothesis n-grams:

        p_n  = m_n / h_n                          for n = 1..4
        BP   = 1 if c > r else exp(1 - r / c)     c: total hypothesis length,
                                                  r: sum of each sentence's closest reference length
        BLEU = 100 * BP * exp((1/4) * sum_n log p_n)

    references[i] is one string or a list of strings for hypothesis i; lists may differ in length.
    sacrebleu wants reference *streams* (stream j holds the j-th reference of every sentence),
    so shorter lists are padded with None, which sacrebleu skips. (Padding with '' would be
    wrong: an empty reference of length 0 would be a candidate for the closest length.)

    tokenize: sacrebleu's tokenizer, '13a' by default: mteval-v13a.pl's rules, which split
    punctuation off words (used by WMT and by the E2E scorer's BLEU). 'none' takes the
    whitespace-separated tokens as they are. A zero match count m_n is smoothed with
    sacrebleu's default 'exp' method.
    """
    import sacrebleu  # imported here so that importing minipeft.metrics stays light

    hyps, refs = _check_texts(hypotheses, references)
    n_streams = max(len(rs) for rs in refs)
    streams = [[rs[j] if j < len(rs) else None for rs in refs] for j in range(n_streams)]
    bleu = sacrebleu.metrics.BLEU(tokenize=tokenize, lowercase=lowercase)
    return float(bleu.corpus_score(hyps, streams).score)


def _words(text: str, lowercase: bool) -> list[str]:
    """Split text into words and single punctuation marks: "Hi, there!" -> [hi , there !]."""
    if lowercase:
        text = text.lower()
    return re.findall(r"\w+|[^\w\s]", text)


def lcs_length(a, b) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming).

    L[i][j] = L[i-1][j-1] + 1           if a[i-1] == b[j-1]
            = max(L[i-1][j], L[i][j-1])  otherwise;     LCS = L[len(a)][len(b)].
    Only one row of the table is kept: O(len(a) * len(b)) time, O(len(b)) memory.
    """
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(hypotheses, references, beta: float = 1.2, lowercase: bool = True) -> float:
    """Sentence-level ROUGE-L F-measure averaged over the corpus (0..1), as the E2E scorer does.

    For a hypothesis h and references r_1..r_m (token lists), with L_j = LCS(h, r_j):

        P = max_j L_j / |h|     R = max_j L_j / |r_j|     (max taken separately, as E2E does)
        F = (1 + beta^2) P R / (R + beta^2 P)             (0 when P or R is 0)

    and ROUGE-L = mean of F over the hypotheses. beta = 1.2 weights recall a little more, as
    in the E2E challenge's scorer (pycocoevalcap); beta = 1 gives the usual F1.
    Tokens: words and single punctuation marks, lowercased by default. (The E2E scorer uses
    the Stanford PTB tokenizer, which also drops punctuation, so scores can differ slightly.)
    """
    hyps, refs = _check_texts(hypotheses, references)
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    scores = []
    for h, rs in zip(hyps, refs):
        h_tok = _words(h, lowercase)
        precision, recall = 0.0, 0.0
        for r in rs:
            r_tok = _words(r, lowercase)
            lcs = lcs_length(h_tok, r_tok)
            if h_tok:
                precision = max(precision, lcs / len(h_tok))
            if r_tok:
                recall = max(recall, lcs / len(r_tok))
        if precision == 0 or recall == 0:
            scores.append(0.0)
        else:
            b2 = beta * beta
            scores.append((1 + b2) * precision * recall / (recall + b2 * precision))
    return float(np.mean(scores))
