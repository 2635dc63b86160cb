"""Metrics checked against values worked out by hand in the comments."""
from __future__ import annotations

import math

import pytest

from minipeft import backend
from minipeft.metrics import (accuracy, binary_f1, confusion_matrix, corpus_bleu, lcs_length,
                              macro_f1, matthews_corrcoef, rouge_l)

np = backend.host()


# ----------------------------------------------------------------------------- accuracy

def test_accuracy_by_hand():
    # matches at positions 0, 1, 3 -> 3 / 4
    assert accuracy([1, 0, 2, 2], [1, 0, 1, 2]) == 0.75


def test_accuracy_accepts_numpy_and_strings():
    assert accuracy(np.array([1, 1]), np.array([1, 0])) == 0.5
    assert accuracy(["pos", "neg"], ["pos", "pos"]) == 0.5


# ----------------------------------------------------------------------------- F1

def test_confusion_matrix_rows_are_true_labels():
    C, labels = confusion_matrix(predictions=[0, 1, 1], references=[0, 0, 1])
    assert labels == [0, 1]
    # true 0 predicted 0 once, true 0 predicted 1 once, true 1 predicted 1 once
    assert C.tolist() == [[1, 1], [0, 1]]


def test_macro_f1_three_classes_by_hand():
    refs = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    # class 0: TP=2 FP=0 FN=1 -> F1 = 2*2 / (2*2 + 0 + 1) = 4/5
    # class 1: TP=1 FP=1 FN=1 -> F1 = 2 / (2 + 1 + 1)     = 1/2
    # class 2: TP=1 FP=1 FN=0 -> F1 = 2 / (2 + 1 + 0)     = 2/3
    # macro = (4/5 + 1/2 + 2/3) / 3 = (24 + 15 + 20) / 90 = 59/90
    assert macro_f1(preds, refs) == pytest.approx(59 / 90)


def test_macro_f1_class_never_predicted_counts_zero():
    # class 1 never predicted: F1_1 = 0; class 0: TP=1 FP=1 FN=0 -> 2/3; macro = 1/3
    assert macro_f1([0, 0], [0, 1]) == pytest.approx(1 / 3)
    # a label listed but absent everywhere contributes F1 = 0 too: (1 + 0) / 2
    assert macro_f1([0], [0], labels=[0, 1]) == pytest.approx(0.5)


def test_binary_f1_by_hand():
    # positive = 1: TP=2 (pos 0, 3), FP=1 (pos 1), FN=1 (pos 2) -> 2*2 / (4 + 1 + 1) = 2/3
    assert binary_f1([1, 1, 0, 1, 0], [1, 0, 1, 1, 0]) == pytest.approx(2 / 3)
    assert binary_f1([0, 0], [0, 0]) == 0.0


# ----------------------------------------------------------------------------- MCC

def test_mcc_binary_2x2_by_hand():
    # TP=3 (true 1, pred 1), TN=2, FP=1 (true 0, pred 1), FN=1 (true 1, pred 0)
    refs = [1, 1, 1, 1, 0, 0, 0]
    preds = [1, 1, 1, 0, 0, 0, 1]
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))
    #     = (3*2 - 1*1) / sqrt(4 * 4 * 3 * 3) = 5 / 12
    assert matthews_corrcoef(preds, refs) == pytest.approx(5 / 12)


def test_mcc_multiclass_gorodkin_by_hand():
    refs = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    # N = 6, correct c = 4 (positions 0, 2, 3, 4)
    # true counts t = (2, 2, 2); predicted counts p = (2, 3, 1)
    # numerator   = c*N - sum p_k t_k = 24 - (4 + 6 + 2) = 12
    # denominator = sqrt((36 - (4 + 9 + 1)) * (36 - (4 + 4 + 4))) = sqrt(22 * 24)
    assert matthews_corrcoef(preds, refs) == pytest.approx(12 / math.sqrt(22 * 24))


def test_mcc_perfect_and_inverted():
    assert matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


def test_mcc_all_one_class_is_zero_not_nan():
    # everything predicted one class: sum p_k^2 = N^2, the denominator is 0 -> 0.0
    assert matthews_corrcoef([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0
    # everything truly one class
    assert matthews_corrcoef([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0
    # both: a single class everywhere
    assert matthews_corrcoef([2, 2], [2, 2]) == 0.0


# ----------------------------------------------------------------------------- label validation

def test_label_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="same length.*3 predictions and 2 references"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        macro_f1([], [])
    with pytest.raises(ValueError, match="1-D.*argmax"):
        matthews_corrcoef(np.zeros((4, 2)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"labels \[2\] occur in the data"):
        macro_f1([0, 2], [0, 1], labels=[0, 1])


# ----------------------------------------------------------------------------- BLEU

def test_bleu_identical_is_100():
    hyps = ["the cat sat on the mat", "a quick brown fox jumps"]
    assert corpus_bleu(hyps, hyps) == pytest.approx(100.0)


def test_bleu_known_case_with_brevity_penalty_by_hand():
    hyp = "the cat sat on the mat"           # c = 6 tokens
    ref = "the cat sat on the red mat"       # r = 7 tokens
    # 1-grams: the x2, cat, sat, on, mat all in ref (ref has 'the' twice) -> 6/6
    # 2-grams: the cat, cat sat, sat on, on the match; 'the mat' does not   -> 4/5
    # 3-grams: the cat sat, cat sat on, sat on the match; 'on the mat' not  -> 3/4
    # 4-grams: the cat sat on, cat sat on the match; 'sat on the mat' not   -> 2/3
    # geometric mean = (1 * 4/5 * 3/4 * 2/3) ** (1/4) = 0.4 ** 0.25
    # c < r, so BP = exp(1 - r/c) = exp(1 - 7/6) = exp(-1/6)
    expected = 100 * 0.4 ** 0.25 * math.exp(-1 / 6)          # = 67.317...
    assert corpus_bleu([hyp], [ref]) == pytest.approx(expected, rel=1e-9)
    assert corpus_bleu([hyp], [[ref]]) == pytest.approx(expected, rel=1e-9)


def test_bleu_multiple_references_clip_against_each():
    hyp = "the cat sat on the mat"
    refs = ["the cat sat on the red mat", "a cat sat on the mat"]
    # every hypothesis n-gram occurs in one reference or the other:
    #   'the cat sat on' only in ref 1, 'sat on the mat' only in ref 2 -> p_1..p_4 = 1
    # closest reference length to c = 6 is ref 2's 6 -> BP = 1 -> BLEU = 100
    assert corpus_bleu([hyp], [refs]) == pytest.approx(100.0)


def test_bleu_variable_number_of_references_is_padded_with_none():
    hyps = ["the cat sat on", "hello there"]
    refs = [["the cat sat on the mat today and tomorrow"],   # one reference
            ["hello there", "hi there"]]                     # two references
    # every hypothesis n-gram matches: over the corpus 1-grams 6/6, 2-grams 4/4, 3-grams 2/2,
    # 4-grams 1/1. Lengths: c = 4 + 2 = 6; closest references 9 and 2, r = 11
    # -> BLEU = 100 * exp(1 - 11/6).
    # (Had the missing second reference of sentence 1 been padded with '' (length 0), its
    # closest length would be 0, since |4 - 0| < |4 - 9|; then r = 2 < c, BP = 1, BLEU = 100.)
    expected = 100 * math.exp(1 - 11 / 6)
    assert corpus_bleu(hyps, refs) == pytest.approx(expected, rel=1e-9)


def test_bleu_tokenizer_setting():
    # '13a' splits punctuation off words, so these match exactly; 'none' does not split them
    assert corpus_bleu(["Hello, world!"], ["Hello , world !"]) == pytest.approx(100.0)
    assert corpus_bleu(["Hello, world!"], ["Hello , world !"], tokenize="none") < 100.0


def test_text_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="same length.*2 hypotheses and 1 reference"):
        corpus_bleu(["a b", "c d"], ["a b"])
    with pytest.raises(ValueError, match="empty"):
        rouge_l([], [])
    with pytest.raises(ValueError, match="hypothesis 0 has no reference"):
        rouge_l(["a"], [[]])
    with pytest.raises(TypeError, match="not a single string"):
        corpus_bleu("a b", "a b")
    with pytest.raises(TypeError, match="decode token ids"):
        rouge_l([[5, 6]], ["a"])


# ----------------------------------------------------------------------------- ROUGE-L

def test_lcs_length_by_hand():
    # police killed the gunman / police kill the gunman: LCS = police, the, gunman -> 3
    assert lcs_length("police killed the gunman".split(), "police kill the gunman".split()) == 3
    assert lcs_length([], ["a"]) == 0
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4   # e.g. B C B A


def test_rouge_l_two_sentences_by_hand():
    hyp = "the cat sat"                 # 3 tokens
    ref = "the black cat sat down"      # 5 tokens
    # LCS = the, cat, sat -> 3;  P = 3/3 = 1;  R = 3/5 = 0.6
    # beta = 1.2: F = (1 + 1.44) * 1 * 0.6 / (0.6 + 1.44 * 1) = 1.464 / 2.04
    assert rouge_l([hyp], [ref]) == pytest.approx(1.464 / 2.04)
    # beta = 1: F = 2 * 1 * 0.6 / (1 + 0.6) = 0.75
    assert rouge_l([hyp], [ref], beta=1.0) == pytest.approx(0.75)


def test_rouge_l_is_a_mean_of_sentence_scores():
    # sentence 1 identical -> 1; sentence 2 shares nothing -> 0; mean 0.5
    assert rouge_l(["a b c", "x y"], ["a b c", "p q"]) == pytest.approx(0.5)


def test_rouge_l_multiple_references_take_max_p_and_max_r():
    hyp = "a b c d"                               # 4 tokens
    refs = ["a b", "a x c x d x x x"]             # 2 and 8 tokens
    # ref 1: LCS = a b   = 2 -> P = 2/4, R = 2/2 = 1
    # ref 2: LCS = a c d = 3 -> P = 3/4, R = 3/8
    # E2E takes P = max = 3/4 and R = max = 1 (from different references)
    # F = 2.44 * 0.75 * 1 / (1 + 1.44 * 0.75) = 1.83 / 2.08
    assert rouge_l([hyp], [refs]) == pytest.approx(1.83 / 2.08)


def test_rouge_l_tokens_lowercase_and_punctuation():
    # "The cat." -> [the, cat, .] matches "the cat ." exactly
    assert rouge_l(["The cat."], ["the cat ."]) == pytest.approx(1.0)
    assert rouge_l(["The cat."], ["the cat ."], lowercase=False) < 1.0
    assert rouge_l([""], ["the cat"]) == 0.0
