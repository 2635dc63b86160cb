"""Readers and writers of minipeft.data.formats on small hand-written files in the real formats
(E2E CSV, WebNLG 2017 / enriched / 2020 XML, GLUE SST-2 and MNLI TSV), and the errors that
malformed files raise (they must name the file, the line and the problem)."""
from __future__ import annotations

from pathlib import Path

import pytest

from minipeft.data import formats as F
from minipeft.data.formats import DataFormatError

FIX = Path(__file__).parent / "fixtures"


# --- E2E ---------------------------------------------------------------------------------------
def test_e2e_groups_references_by_mr_in_file_order():
    data = F.read_e2e_csv(FIX / "e2e.csv")
    assert [mr.split("]")[0] for mr, _ in data] == ["name[The Vaults", "name[The Cambridge Blue",
                                                    "name[Wildwood"]
    mr, refs = data[0]
    assert len(refs) == 3 and refs[2] == "The Vaults pub is highly rated and expensive."
    # quoted field with doubled quotes, and a reference that spans two physical lines
    assert 'called "the Blue" by locals.' in data[1].refs[0]
    assert data[2].refs == ["Wildwood is an Indian coffee shop on the riverside.\n"
                            "It is not family-friendly."]


def test_e2e_unreferenced_test_file_has_only_mrs():
    # an unreferenced file is read only when the caller says so (labelled=False)
    with pytest.raises(DataFormatError, match="e2e_noref.csv line 1: .*labelled=False"):
        F.read_e2e_csv(FIX / "e2e_noref.csv")
    data = F.read_e2e_csv(FIX / "e2e_noref.csv", labelled=False)
    assert [d.refs for d in data] == [[], []]
    assert F.parse_mr(data[1].mr) == {"name": "Clowns", "eatType": "pub", "near": "The Sorrento"}


def test_parse_and_format_mr_round_trip():
    mr = ("name[The Vaults], eatType[pub], priceRange[more than £30], "
          "customer rating[5 out of 5], near[Café Adriatic]")
    d = F.parse_mr(mr)
    assert d["customer rating"] == "5 out of 5" and d["priceRange"] == "more than £30"
    assert F.format_mr(d) == mr
    # format_mr writes the canonical E2E attribute order whatever the dict order
    assert F.format_mr({"near": "X", "name": "Y", "food": "Indian"}) == \
        "name[Y], food[Indian], near[X]"


@pytest.mark.parametrize("mr, problem", [
    ("name[Aromi], food[Chinese, area[riverside]", "bad MR attribute 'food[Chinese' at column 14: "
                                                   "missing ']'"),
    ("name[Aromi], food Chinese], area[riverside]", "missing '['"),
    ("name[Aromi], name[Zizzi]", "duplicate attribute 'name'"),
    ("", "empty MR"),
])
def test_parse_mr_errors_say_what_and_where(mr, problem):
    with pytest.raises(DataFormatError, match=None) as err:
        F.parse_mr(mr)
    assert problem in str(err.value)


def test_e2e_wrong_column_count_names_file_and_line():
    with pytest.raises(DataFormatError) as err:
        F.read_e2e_csv(FIX / "e2e_bad_columns.csv")
    msg = str(err.value)
    assert msg.endswith("e2e_bad_columns.csv line 4: expected 2 columns (mr,ref), got 3")
    assert err.value.line == 4


def test_e2e_bad_mr_names_file_line_and_attribute():
    with pytest.raises(DataFormatError) as err:
        F.read_e2e_csv(FIX / "e2e_bad_mr.csv")
    msg = str(err.value)
    assert "e2e_bad_mr.csv line 3:" in msg and "'food[Chinese'" in msg and "missing ']'" in msg


def test_e2e_unterminated_quote_is_an_error_not_a_giant_field():
    with pytest.raises(DataFormatError) as err:
        F.read_e2e_csv(FIX / "e2e_unterminated.csv")
    assert "e2e_unterminated.csv line" in str(err.value)


def test_e2e_writer_round_trips(tmp_path):
    rows = [("name[A], food[Chinese]", ["A serves Chinese food, cheaply.", 'A "quote".']),
            ("name[B], area[riverside]", ["B is by the river."])]
    F.write_e2e_csv(tmp_path / "x.csv", rows)
    assert F.read_e2e_csv(tmp_path / "x.csv") == [F.E2EExample(m, r) for m, r in rows]
    assert (tmp_path / "x.csv").read_text(encoding="utf-8").startswith("mr,ref\n")


# --- WebNLG ------------------------------------------------------------------------------------
def test_webnlg_2017_challenge_format():
    entries = F.read_webnlg_xml(FIX / "webnlg_2017.xml")
    assert [(e.eid, e.category, e.size) for e in entries] == [
        ("Id1", "Airport", 1), ("Id2", "Astronaut", 3), ("Id3", "Food", 2)]
    a = entries[0]
    assert a.triples == [F.Triple("Aarhus_Airport", "cityServed", '"Aarhus, Denmark"')]
    assert a.original_triples[0].s == "Aarhus"            # otriple differs from mtriple
    assert a.lexes[1] == "The airport of Aarhus, Denmark is Aarhus Airport."
    # entities decoded, whitespace inside a lex normalised, several originaltriplesets read
    assert entries[1].lexes == ["Test Astronaut, born on 20 January 1930 in Glen Ridge, New "
                                "Jersey, was a fighter pilot & an astronaut."]
    assert len(entries[1].original_triples) == 3
    assert entries[2].lexes == []                          # unreferenced entry
    assert str(entries[2].triples[1]) == 'Ajoblanco | mainIngredient | "Bread, almonds, garlic"'


def test_webnlg_enriched_release_reads_text_child_of_lex():
    (e,) = F.read_webnlg_xml(FIX / "webnlg_2017_enriched.xml")
    assert e.lexes == ["The Test Monument is located in Adams County, Pennsylvania. It was "
                       "established in 2000.",
                       "Established in 2000, the Test Monument stands in Adams County, "
                       "Pennsylvania."]
    assert e.triples[0].p == "location"


def test_webnlg_2020_language_filter_and_extra_elements():
    entries = F.read_webnlg_xml(FIX / "webnlg_2020.xml")
    assert entries[0].lexes == ["Trane, which was founded on January 1st 1913, is based in "
                                "Ireland.", "Founded in 1913, Trane is located in Ireland."]
    assert entries[1].category == "Film" and entries[1].lexes == []
    ru = F.read_webnlg_xml(FIX / "webnlg_2020.xml", lang="ru")
    assert ru[0].lexes == ["Компания Trane, основанная 1 января 1913 года, находится в Ирландии."]
    assert len(F.read_webnlg_xml(FIX / "webnlg_2020.xml", lang=None)[0].lexes) == 3


def test_webnlg_folder_reads_every_xml_file_in_path_order(tmp_path):
    # the real train/dev releases are folders: train/1triples/Airport.xml, train/2triples/...
    for sub, name in (("2triples", "webnlg_2020.xml"), ("1triples", "webnlg_2017.xml")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / name).write_bytes((FIX / name).read_bytes())
    entries = F.read_webnlg_xml(tmp_path)
    assert [e.eid for e in entries] == ["Id1", "Id2", "Id3", "Id21", "Id22"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no .xml files"):
        F.read_webnlg_xml(tmp_path / "empty")


@pytest.mark.parametrize("name, line, problem", [
    ("webnlg_bad_triple.xml", 7, "<mtriple> 'Aarhus | leaderName' is not 'subject | property | "
                                 "object'"),
    ("webnlg_bad_xml.xml", 9, "not well-formed XML: mismatched tag"),
    ("webnlg_bad_size.xml", 9, 'entry Id2 says size="3" but has 2 triples'),
])
def test_webnlg_errors_name_file_line_and_problem(name, line, problem):
    with pytest.raises(DataFormatError) as err:
        F.read_webnlg_xml(FIX / name)
    assert f"{name} line {line}: " in str(err.value)
    assert problem in str(err.value)


def test_webnlg_writer_round_trips(tmp_path):
    e = F.WebNLGEntry("Id1", "City", [F.Triple("A_b", "country", "C"),
                                      F.Triple("A_b", "motto", '"x < y & z"')],
                      ["A b is in C.", "Its motto is x < y & z."])
    F.write_webnlg_xml(tmp_path / "w.xml", [e])
    (back,) = F.read_webnlg_xml(tmp_path / "w.xml")
    assert (back.eid, back.category, back.triples, back.lexes) == \
        (e.eid, e.category, e.triples, e.lexes)


# --- GLUE TSV ----------------------------------------------------------------------------------
def test_sst2_train_and_unlabelled_test():
    train = F.read_glue_tsv(FIX / "sst2_train.tsv", "sst2")
    assert [x.label for x in train] == [1, 0, 1, 0]
    assert train[2].sentence == "it 's never boring , and that 's saying something ."
    assert train[3].sentence.startswith('the cast "s')    # GLUE is unquoted: keep quotes as text
    with pytest.raises(DataFormatError, match="no 'label' column. .*labelled=False"):
        F.read_glue_tsv(FIX / "sst2_test.tsv", "sst2")
    test = F.read_glue_tsv(FIX / "sst2_test.tsv", "sst2", labelled=False)
    assert [(x.index, x.label) for x in test] == [(0, None), (1, None)]
    assert test[0].sentence == "an affectionate , if slight , portrait ."


def test_sst5_labels_are_checked_against_five_classes(tmp_path):
    assert [x.label for x in F.read_glue_tsv(FIX / "sst5_train.tsv", "sst5")] == [4, 2]
    with pytest.raises(DataFormatError, match="sst5_train.tsv line 2: label must be in 0..1"):
        F.read_glue_tsv(FIX / "sst5_train.tsv", "sst2")


@pytest.mark.parametrize("name, problem", [
    ("sst2_bad_label.tsv", "sst2_bad_label.tsv line 3: label must be an integer, got 'negative'"),
    ("sst2_bad_columns.tsv", "sst2_bad_columns.tsv line 3: expected 2 columns (sentence,label), "
                             "got 3"),
])
def test_sst2_errors(name, problem):
    with pytest.raises(DataFormatError) as err:
        F.read_glue_tsv(FIX / name, "sst2")
    assert str(err.value).endswith(problem)


def test_mnli_columns_by_header_name():
    dev = F.read_glue_tsv(FIX / "mnli_dev_matched.tsv", "mnli")
    # the "-" row (no annotator majority) is skipped, as in GLUE
    assert [(x.index, x.genre, x.label) for x in dev] == [
        (0, "travel", "entailment"), (1, "telephone", "contradiction"),
        (3, "government", "entailment")]
    assert dev[1].sentence1 == 'yeah we went there last "summer" it was packed'
    assert dev[1].sentence2 == "The place was empty when we visited."
    assert [x.label_id for x in dev] == [0, 2, 0]
    with pytest.raises(DataFormatError, match="no 'gold_label' column"):
        F.read_glue_tsv(FIX / "mnli_test_matched.tsv", "mnli")
    (t,) = F.read_glue_tsv(FIX / "mnli_test_matched.tsv", "mnli", labelled=False)
    assert t.label is None and t.sentence2 == "Prices fell in May."
    with pytest.raises(ValueError):
        t.label_id


def test_mnli_bad_label():
    with pytest.raises(DataFormatError) as err:
        F.read_glue_tsv(FIX / "mnli_bad_label.tsv", "mnli")
    assert "mnli_bad_label.tsv line 3: gold_label must be one of entailment, neutral, " \
           "contradiction, got 'entails'" in str(err.value)


def test_glue_writers_round_trip_and_refuse_tabs(tmp_path):
    sents = [F.SentenceExample("Not bad at all.", 1), F.SentenceExample("Dull.", 0)]
    F.write_sentence_tsv(tmp_path / "s.tsv", sents)
    assert F.read_glue_tsv(tmp_path / "s.tsv", "sst2") == sents
    pairs = [F.PairExample("A is a pub.", "A is not a cafe.", "entailment", "travel", 0)]
    F.write_mnli_tsv(tmp_path / "m.tsv", pairs)
    assert F.read_glue_tsv(tmp_path / "m.tsv", "mnli") == pairs
    with pytest.raises(ValueError, match="tab"):
        F.write_sentence_tsv(tmp_path / "bad.tsv", [F.SentenceExample("a\tb", 1)])
    with pytest.raises(ValueError, match="unknown task"):
        F.read_glue_tsv(tmp_path / "s.tsv", "qqp")


def test_pairs_tsv_and_corpus_round_trip(tmp_path):
    F.write_tsv(tmp_path / "p.tsv", ["en", "fr"], [("cheese", "fromage"), ("bread", "pain")])
    assert F.read_pairs_tsv(tmp_path / "p.tsv") == [("cheese", "fromage"), ("bread", "pain")]
    with pytest.raises(DataFormatError, match="p.tsv line 1: expected header"):
        F.read_pairs_tsv(tmp_path / "p.tsv", ("de", "fr"))
    F.write_corpus(tmp_path / "c.txt", ["One doc.", "Two. Docs."])
    assert F.read_corpus(tmp_path / "c.txt") == ["One doc.", "Two. Docs."]
