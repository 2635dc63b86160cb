"""The readers on files shaped like the real releases: the cleaned E2E CSV with a
repeated attribute, other header names, empty WebNLG references, other encodings, truncated
files and unlabelled test files. Each either reads correctly or raises one DataFormatError that
names the file, the line and the problem, and says how to fix it."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from minipeft.data import formats as F
from minipeft.data.formats import DataFormatError, DataWarning

FIX = Path(__file__).parent / "fixtures" / "real_formats"


# --- 1. the cleaned E2E release repeats an attribute ------------------------------------------
def test_cleaned_e2e_keeps_both_values_of_a_repeated_attribute():
    data = F.read_e2e_csv(FIX / "e2e_cleaned.csv")          # mr,ref,fixed,orig_mr
    assert [len(e.refs) for e in data] == [1, 2]
    mr = data[1].mr
    assert mr == "name[The Mill], eatType[pub], eatType[restaurant], food[Italian], area[riverside]"
    d = F.parse_mr(mr)
    assert d == {"name": "The Mill", "eatType": ["pub", "restaurant"], "food": "Italian",
                 "area": "riverside"}
    assert F.format_mr(d) == mr                                # round trip, order kept
    assert F.mr_items(d)[1:3] == [("eatType", "pub"), ("eatType", "restaurant")]


def test_linearized_mr_keeps_both_values():
    from minipeft.tasks import linearize_mr
    assert linearize_mr("name[The Mill], eatType[pub], eatType[restaurant]") == \
        "name : The Mill | eatType : pub | eatType : restaurant"


def test_a_repeated_name_is_still_an_error():
    with pytest.raises(DataFormatError, match="duplicate attribute 'name'"):
        F.parse_mr("name[Aromi], eatType[pub], name[Zizzi]")


# --- 6. header aliases -------------------------------------------------------------------------
def test_e2e_as_released_and_under_other_header_names(tmp_path):
    released = F.read_e2e_csv(FIX / "e2e_released.csv")
    assert [len(e.refs) for e in released] == [2, 1]
    assert released[0].refs[0].endswith("Prices start at £30.")
    ref = F.read_e2e_csv(FIX / "e2e_reference_header.csv")  # mr,reference
    assert [e.refs for e in ref] == [["There is a pub called Zizzi located near The Sorrento."],
                                     ["Aromi is a coffee shop by the riverside."]]
    # the Hugging Face e2e_nlg column names
    (tmp_path / "hf.csv").write_text('meaning_representation,human_reference\n'
                                     '"name[A], food[Thai]",A serves Thai food.\n',
                                     encoding="utf-8")
    assert F.read_e2e_csv(tmp_path / "hf.csv") == [F.E2EExample("name[A], food[Thai]",
                                                                ["A serves Thai food."])]
    (tmp_path / "two.csv").write_text('mr,ref,reference\n"name[A]",x,y\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"two.csv line 1: .*2 columns .*\(ref, reference\)"):
        F.read_e2e_csv(tmp_path / "two.csv")


# --- 5. an unlabelled file needs labelled=False ------------------------------------------------
def test_unreferenced_e2e_test_set_needs_labelled_false(tmp_path):
    with pytest.raises(DataFormatError) as err:
        F.read_e2e_csv(FIX / "e2e_testset_noref.csv")
    msg = str(err.value)
    assert "e2e_testset_noref.csv line 1: header 'MR' has no reference column" in msg
    assert "ref, reference" in msg and "labelled=False" in msg
    data = F.read_e2e_csv(FIX / "e2e_testset_noref.csv", labelled=False)
    assert [e.refs for e in data] == [[], []]
    # a misspelt reference column is not silently an unreferenced file either
    (tmp_path / "typo.csv").write_text('mr,refs_\n"name[A]",A.\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match="no reference column"):
        F.read_e2e_csv(tmp_path / "typo.csv")


def test_glue_test_files_need_labelled_false():
    with pytest.raises(DataFormatError, match="sst2_test.tsv line 1: .*no 'label' column"):
        F.read_glue_tsv(FIX / "sst2_test.tsv", "sst2")
    test = F.read_glue_tsv(FIX / "sst2_test.tsv", "sst2", labelled=False)
    assert [(x.index, x.label) for x in test] == [(0, None), (1, None)]
    assert [x.label for x in F.read_glue_tsv(FIX / "sst2_dev.tsv", "sst2")] == [1, 0]


def test_webnlg_file_without_any_reference_needs_labelled_false():
    with pytest.raises(DataFormatError, match="webnlg_test_noref.xml: no entry has a reference"):
        F.read_webnlg_xml(FIX / "webnlg_test_noref.xml")
    (e,) = F.read_webnlg_xml(FIX / "webnlg_test_noref.xml", labelled=False)
    assert e.lexes == [] and e.triples[0].o == "Spain"


# --- 2. empty WebNLG references are reported ---------------------------------------------------
def test_webnlg_empty_text_is_dropped_with_a_warning_naming_entries_lines_and_count():
    with pytest.warns(DataWarning) as rec:
        entries = F.read_webnlg_xml(FIX / "webnlg_empty_text.xml")
    assert [e.lexes for e in entries] == [["The Aarhus is the airport of Aarhus, Denmark."], [],
                                          ["Ajoblanco is from Spain."]]
    (w,) = rec
    msg = str(w.message)
    assert "webnlg_empty_text.xml: dropped 3 empty reference(s)" in msg
    assert "entry Id1 line 17" in msg and "entry Id2 line 30" in msg and "entry Id3 line 39" in msg
    assert "1 entries are left with no reference: Id2" in msg


def test_webnlg_without_empty_text_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.read_webnlg_xml(FIX / "webnlg_iso8859.xml")


# --- 3. encodings ------------------------------------------------------------------------------
def test_xml_declaring_iso_8859_1_is_read_in_that_encoding():
    (e,) = F.read_webnlg_xml(FIX / "webnlg_iso8859.xml")
    assert e.triples[0].s == "Café_Adriatic"
    assert e.lexes == ["The Café Adriatic is in France; a coffee costs £3."]


def test_xml_not_utf8_without_declaration_says_where_and_how_to_convert():
    with pytest.raises(DataFormatError) as err:
        F.read_webnlg_xml(FIX / "webnlg_latin1_undeclared.xml")
    msg = str(err.value)
    assert "webnlg_latin1_undeclared.xml line 6: the file is not UTF-8 and declares no " \
           "encoding: byte 0xe9 at byte offset" in msg
    assert 'encoding="ISO-8859-1"' in msg and "iconv -f latin1 -t utf-8" in msg


def test_xml_declaring_utf8_but_written_in_latin1(tmp_path):
    data = (FIX / "webnlg_iso8859.xml").read_bytes().replace(b"ISO-8859-1", b"UTF-8")
    (tmp_path / "w.xml").write_bytes(data)
    with pytest.raises(DataFormatError, match="w.xml line 6: the file is not UTF-8 but declares "
                                              "UTF-8: byte 0xe9 at byte offset"):
        F.read_webnlg_xml(tmp_path / "w.xml")


def test_latin1_csv_is_one_clear_error_or_read_with_encoding():
    with pytest.raises(DataFormatError) as err:
        F.read_e2e_csv(FIX / "e2e_latin1.csv")
    msg = str(err.value)
    assert "e2e_latin1.csv line 3: the file is not utf-8: byte 0xa3 at byte offset" in msg
    assert "iconv -f latin1 -t utf-8" in msg and "encoding='latin-1'" in msg
    assert err.value.line == 3
    data = F.read_e2e_csv(FIX / "e2e_latin1.csv", encoding="latin-1")
    assert F.parse_mr(data[1].mr)["near"] == "Café Adriatic"
    assert data[1].refs == ["The Vaults pub near Café Adriatic: prices start at £30."]


def test_latin1_tsv_is_one_clear_error(tmp_path):
    text = "sentence\tlabel\nun film très émouvant\t1\n"
    (tmp_path / "s.tsv").write_bytes(text.encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"s.tsv line 2: the file is not utf-8: byte 0xe8"):
        F.read_glue_tsv(tmp_path / "s.tsv", "sst2")
    (x,) = F.read_glue_tsv(tmp_path / "s.tsv", "sst2", encoding="latin-1")
    assert x.sentence == "un film très émouvant"


# --- 4. truncated files ------------------------------------------------------------------------
@pytest.mark.parametrize("name, line, problem", [
    ("e2e_truncated_quote.csv", 3, "the file ends inside a quoted field that starts on line 3: "
                                   "the file looks truncated"),
    ("e2e_truncated_unquoted.csv", 3, "the file does not end with a newline, so its last line "
                                      "may be cut short"),
    ("e2e_truncated_row.csv", 3, "expected 4 columns (mr,ref,fixed,orig_mr), got 2: the file "
                                 "looks truncated"),
])
def test_truncated_e2e_csv_is_an_error(name, line, problem):
    with pytest.raises(DataFormatError) as err:
        F.read_e2e_csv(FIX / name)
    assert f"{name} line {line}: {problem}" in str(err.value)


@pytest.mark.parametrize("name, task, line, problem", [
    ("sst2_truncated_row.tsv", "sst2", 3, "expected 2 columns (sentence,label), got 1: the file "
                                          "looks truncated"),
    ("mnli_truncated.tsv", "mnli", 3, "expected 5 columns (index,genre,sentence1,sentence2,"
                                      "gold_label), got 4: the file looks truncated"),
])
def test_truncated_tsv_is_an_error(name, task, line, problem):
    with pytest.raises(DataFormatError) as err:
        F.read_glue_tsv(FIX / name, task)
    assert f"{name} line {line}: {problem}" in str(err.value)


def test_tsv_without_final_newline_is_an_error_saying_how_to_fix(tmp_path):
    (tmp_path / "s.tsv").write_text("sentence\tlabel\ngood .\t1", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"s.tsv line 2: the file does not end with a "
                                              r"newline.*echo >>"):
        F.read_glue_tsv(tmp_path / "s.tsv", "sst2")


def test_truncated_xml_is_an_error():
    with pytest.raises(DataFormatError) as err:
        F.read_webnlg_xml(FIX / "webnlg_truncated.xml")
    msg = str(err.value)
    assert "webnlg_truncated.xml line 12: not well-formed XML" in msg
    assert "looks truncated" in msg
