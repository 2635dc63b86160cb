"""Readers and writers for the file formats of the real datasets the PEFT papers use.

minipeft's generators write their synthetic data in exactly these formats, and the readers
accept the real files too, so a course that has the real data can point minipeft at it:

- E2E (Novikova et al. 2017): CSV with header `mr,ref`, one row per (MR, reference) pair; MRs
  look like `name[The Eagle], eatType[coffee shop], food[Chinese]`. The unreferenced test file
  has only an `mr` column; the cleaned release (Dušek et al. 2019) adds columns `fixed,orig_mr`
  and may repeat an attribute in one MR (`eatType[pub], eatType[restaurant]`).
- WebNLG (Gardent et al. 2017; 2020 challenge): XML, `<benchmark><entries><entry ...>` with a
  `<modifiedtripleset>` of `<mtriple>Subject | property | Object</mtriple>` and `<lex>`
  lexicalisations. In the enriched 2017 release (v2+), `<lex>` holds child elements and the
  text is in a `<text>` child; in the 2017 challenge and 2020 releases it is the element text.
- GLUE TSV (Wang et al. 2019): SST-2 `sentence<TAB>label` (test: `index<TAB>sentence`), MNLI
  with columns found by header name (`sentence1`, `sentence2`, `gold_label`, `genre`, `index`).
  GLUE files are not quoted, so a line is split on tabs and nothing else.

A malformed file raises `DataFormatError`, whose message names the file, the line and the
problem, e.g. `data/e2e/train.csv line 17: expected 2 columns (mr,ref), got 3`. What the real
files need on top of that:
- encodings: text files are read as UTF-8 (or an `encoding=` you pass), a byte that does not
  decode is an error saying where and how to convert; XML files are read in the encoding
  they declare;
- truncation: an unterminated quote, a short last row or a missing final newline (CSV/TSV), and
  unclosed elements at the end (XML), are reported as a truncated file;
- unlabelled files: a file without its reference/label column (the unreferenced E2E and GLUE
  test sets) is read only when `labelled=False` says that is meant;
- repairs: what a reader skips (e.g. a WebNLG `<lex>` with no text) is reported in a
  `DataWarning` naming the file, the place and the count.

Plain standard library only (csv, xml.parsers.expat).
"""
from __future__ import annotations

import csv
import io
import os
import re
import warnings
import xml.etree.ElementTree as ET
import xml.parsers.expat as expat
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple
from xml.sax.saxutils import escape, quoteattr


class DataFormatError(ValueError):
    """A data file (or string) does not follow its format. `str(err)` reads
    `<path> line <n>: <problem>`; `path` and `line` are also attributes (None when unknown)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None,
                 line: int | None = None):
        self.message, self.path, self.line = message, path, line
        where = ""
        if path is not None:
            where = f"{os.fspath(path)}" + (f" line {line}: " if line is not None else ": ")
        super().__init__(where + message)


# ---------------------------------------------------------------------------------------------
# Reading text files: one encoding, and files that end too early
# ---------------------------------------------------------------------------------------------
class DataWarning(UserWarning):
    """Something in a data file was skipped or repaired while reading it (the message says what
    and where). Not an error: the rest of the file is fine."""


def _read_text(path, encoding: str = "utf-8") -> str:
    """The whole text of a CSV/TSV file, decoded strictly (a UTF-8 byte-order mark is dropped).

    A file that is not in `encoding` is one DataFormatError naming the byte offset and line of
    the first bad byte and saying how to convert it."""
    with open(path, "rb") as f:
        data = f.read()
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataFormatError(
            f"the file is not {encoding}: byte 0x{data[e.start]:02x} at byte offset {e.start} "
            f"cannot be decoded. If it is Latin-1, convert it with `iconv -f latin1 -t utf-8 "
            f"{os.fspath(path)} > converted{os.path.splitext(path)[1]}`, or pass the encoding "
            f"it is in (e.g. encoding='latin-1')", path, line) from None
    return text


def _check_complete(text: str, path) -> None:
    """A non-empty file must end with a newline: one that stops mid-line is most likely a
    download or copy cut short, and its last row would be read cut without a word."""
    if text.strip() and not text.endswith("\n"):
        raise DataFormatError(
            "the file does not end with a newline, so its last line may be cut short (a "
            "truncated download or copy). Fetch the file again; if it is complete, add the "
            f"final newline (`echo >> {os.fspath(path)}`)", path, text.count("\n") + 1)


# ---------------------------------------------------------------------------------------------
# E2E: meaning representations and the mr,ref CSV
# ---------------------------------------------------------------------------------------------
E2E_ATTRIBUTES = ("name", "eatType", "food", "priceRange", "customer rating", "area",
                  "familyFriendly", "near")
E2E_MR_COLUMNS = ("mr", "meaning_representation")           # as released; as in HF datasets
E2E_REF_COLUMNS = ("ref", "reference", "references", "human_reference")


class E2EExample(NamedTuple):
    """One meaning representation and all its references (empty for the unreferenced test)."""
    mr: str
    refs: list[str]


def parse_mr(mr: str) -> dict[str, str | list[str]]:
    """`"name[The Eagle], food[Chinese]"` -> `{"name": "The Eagle", "food": "Chinese"}`.

    Attributes are `key[value]` separated by commas. The cleaned E2E release (Dušek et al. 2019)
    repeats an attribute on purpose when a reference mentions two values, e.g.
    `name[X], eatType[pub], eatType[restaurant]`: a repeated attribute keeps all its values, in
    order, as a list (`{"name": "X", "eatType": ["pub", "restaurant"]}`); an attribute that
    appears once stays a plain string. Only `name` may not repeat (an MR describes one venue).
    Raises DataFormatError naming the bad attribute and its (1-based) character column, e.g.
    `bad MR attribute 'food[Chinese' at column 5: missing ']'`.
    """
    out: dict[str, str | list[str]] = {}
    i, n = 0, len(mr)
    while i < n:
        while i < n and mr[i] in " ,":
            i += 1
        if i >= n:
            break
        start = i
        j = mr.find("[", i)
        comma = mr.find(",", i)
        if j < 0 or (0 <= comma < j):
            end = comma if comma >= 0 else n
            raise DataFormatError(f"bad MR attribute {mr[start:end].strip()!r} at column "
                                  f"{start + 1}: missing '['")
        k = mr.find("]", j + 1)
        nxt = mr.find("[", j + 1)
        if k < 0 or (0 <= nxt < k):
            end = mr.rfind(",", j, nxt) if nxt >= 0 else n
            end = end if end > j else n
            raise DataFormatError(f"bad MR attribute {mr[start:end].strip()!r} at column "
                                  f"{start + 1}: missing ']'")
        key, value = mr[start:j].strip(), mr[j + 1:k].strip()
        if not key:
            raise DataFormatError(f"bad MR attribute {mr[start:k + 1]!r} at column {start + 1}: "
                                  "empty attribute name")
        if key in out and key == "name":
            raise DataFormatError(f"bad MR attribute {mr[start:k + 1]!r} at column {start + 1}: "
                                  f"duplicate attribute {key!r} (an MR names one venue)")
        if key in out:                                  # a repeated attribute: keep every value
            before = out[key]
            out[key] = (before if isinstance(before, list) else [before]) + [value]
        else:
            out[key] = value
        i = k + 1
        while i < n and mr[i] == " ":
            i += 1
        if i < n and mr[i] != ",":
            raise DataFormatError(f"bad MR at column {i + 1}: expected ',' after "
                                  f"{mr[start:k + 1]!r}, got {mr[i]!r}")
    if not out:
        raise DataFormatError("empty MR")
    return out


def mr_items(attributes: dict[str, str | list[str]]) -> list[tuple[str, str]]:
    """`(key, value)` pairs of a parsed MR in the canonical E2E order (unknown keys last), a
    repeated attribute once per value: `{"eatType": ["pub", "restaurant"]}` ->
    `[("eatType", "pub"), ("eatType", "restaurant")]`."""
    keys = [k for k in E2E_ATTRIBUTES if k in attributes]
    keys += [k for k in attributes if k not in E2E_ATTRIBUTES]
    out = []
    for k in keys:
        values = attributes[k] if isinstance(attributes[k], list) else [attributes[k]]
        out += [(k, str(v)) for v in values]
    return out


def format_mr(attributes: dict[str, str | list[str]]) -> str:
    """The inverse of `parse_mr`, in the canonical E2E attribute order (unknown keys last); a
    list value is written as the attribute repeated, once per value."""
    items = mr_items(attributes)
    for k, v in items:
        if any(c in v for c in "[]") or any(c in k for c in "[],"):
            raise ValueError(f"MR attribute {k!r}={v!r} may not contain '[', ']' (or ',' in keys)")
    return ", ".join(f"{k}[{v}]" for k, v in items)


def _find_column(names: list[str], aliases: tuple[str, ...], header, path) -> int | None:
    """Index of the one column whose name is in `aliases`; None when there is none."""
    found = [i for i, h in enumerate(names) if h in aliases]
    if len(found) > 1:
        raise DataFormatError(f"header {','.join(header)!r} has {len(found)} columns that could "
                              f"be the same thing ({', '.join(names[i] for i in found)}); keep "
                              "one", path, 1)
    return found[0] if found else None


def _e2e_columns(header: list[str], path, labelled: bool) -> tuple[int, int | None]:
    """Indices of the MR and reference columns of an E2E header (known aliases accepted)."""
    names = [h.strip().lower() for h in header]
    i_mr = _find_column(names, E2E_MR_COLUMNS, header, path)
    if i_mr is None:
        raise DataFormatError(f"header {','.join(header)!r} has no 'mr' column "
                              "(expected 'mr,ref')", path, 1)
    i_ref = _find_column(names, E2E_REF_COLUMNS, header, path)
    if i_ref is None and labelled:
        raise DataFormatError(
            f"header {','.join(header)!r} has no reference column (expected one of "
            f"{', '.join(E2E_REF_COLUMNS)}). If this is the unreferenced test set, read it "
            "with labelled=False", path, 1)
    return i_mr, i_ref


def read_e2e_csv(path: str | os.PathLike, labelled: bool = True,
                 encoding: str = "utf-8") -> list[E2EExample]:
    """Read an E2E CSV (`mr,ref` header as released; `mr` alone for the unreferenced test set).

    Rows with the same MR are grouped, in order of first appearance:
    `[E2EExample(mr, [ref, ref, ...]), ...]`. Every MR is checked with `parse_mr`.

    - The reference column may be headed `ref`, `reference`, `references` or `human_reference`
      (the MR column `mr` or `meaning_representation`); other columns (the cleaned release's
      `fixed,orig_mr`) are ignored.
    - A file without a reference column is an error unless `labelled=False` says it is meant
      to be unreferenced (then every `refs` is `[]`; a file that has references is read in full
      all the same).
    - The file must be in `encoding` (UTF-8 by default) and end with a newline; an unterminated
      quote or a short last row is reported as a truncated file.
    """
    text = _read_text(path, encoding)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    groups: dict[str, list[str]] = {}
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            raise DataFormatError("empty file, expected a header line 'mr,ref'", path, 1)
        i_mr, i_ref = _e2e_columns(header, path, labelled)
        while True:
            start = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                break
            if not row:
                continue                      # a blank line
            if len(row) != len(header):
                short_last = len(row) < len(header) and reader.line_num >= text.count("\n")
                raise DataFormatError(f"expected {len(header)} columns "
                                      f"({','.join(h.strip().lower() for h in header)}), got "
                                      f"{len(row)}{_TRUNCATED if short_last else ''}", path, start)
            mr = row[i_mr].strip()
            try:
                parse_mr(mr)
            except DataFormatError as e:
                raise DataFormatError(e.message, path, start) from None
            refs = groups.setdefault(mr, [])
            if i_ref is not None:
                ref = row[i_ref].strip()
                if not ref:
                    raise DataFormatError("empty ref", path, start)
                refs.append(ref)
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise DataFormatError(f"the file ends inside a quoted field that starts on line "
                                  f"{start}{_TRUNCATED}", path, start) from None
        raise DataFormatError(f"CSV error: {e}", path, reader.line_num) from None
    _check_complete(text, path)
    return [E2EExample(mr, refs) for mr, refs in groups.items()]


_TRUNCATED = (": the file looks truncated (a download or copy cut short, or a quote that is "
              "never closed); fetch it again or fix that line")


def write_e2e_csv(path: str | os.PathLike, examples: Iterable[tuple[str, list[str]]]) -> None:
    """Write `(mr, refs)` pairs as an E2E CSV, one row per reference (quoted where needed)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["mr", "ref"])
        for mr, refs in examples:
            for ref in refs:
                w.writerow([mr, ref])


# ---------------------------------------------------------------------------------------------
# WebNLG XML
# ---------------------------------------------------------------------------------------------
class Triple(NamedTuple):
    """An RDF triple as WebNLG writes it: `Aarhus_Airport | cityServed | Aarhus`."""
    s: str
    p: str
    o: str

    def __str__(self) -> str:
        return f"{self.s} | {self.p} | {self.o}"


@dataclass
class WebNLGEntry:
    """One WebNLG entry: its triples (from `<modifiedtripleset>`) and reference texts."""
    eid: str
    category: str
    triples: list[Triple]
    lexes: list[str] = field(default_factory=list)
    original_triples: list[Triple] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.triples)


def _parse_xml(path) -> tuple[ET.Element, dict]:
    """Parse with expat into ElementTree elements, remembering each element's line number
    (ElementTree itself forgets them, and error messages need them). The encoding is the one
    the file declares (`<?xml version="1.0" encoding="ISO-8859-1"?>`), UTF-8 when it declares
    none, as the XML standard says."""
    with open(path, "rb") as f:
        data = f.read()
    tb = ET.TreeBuilder()
    lines: dict = {}
    p = expat.ParserCreate()
    p.buffer_text = True

    def start(tag, attrs):
        lines[tb.start(tag, attrs)] = p.CurrentLineNumber
    p.StartElementHandler = start
    p.EndElementHandler = tb.end
    p.CharacterDataHandler = tb.data
    try:
        p.Parse(data, True)
    except ValueError as e:              # pyexpat: "multi-byte encodings are not supported"
        raise DataFormatError(
            f"cannot read the declared encoding ({e}); convert the file to UTF-8, e.g. `iconv -f "
            f"ENCODING -t utf-8 {os.fspath(path)} > converted.xml`, and change its encoding "
            "declaration", path, 1) from None
    except expat.ExpatError as e:
        raise _xml_error(e, data, path) from None
    return tb.close(), lines


def _xml_error(e: expat.ExpatError, data: bytes, path) -> DataFormatError:
    """A DataFormatError for an expat error, saying why when the cause is a common one: a file
    that is not in the encoding it declares (UTF-8 when it declares none), or a file that ends
    too early."""
    declared = re.match(rb"""<\?xml[^>]*encoding=["']([A-Za-z0-9._-]+)["']""", data)
    encoding = declared.group(1).decode("ascii") if declared else None
    if encoding is None or encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as u:
            line = data.count(b"\n", 0, u.start) + 1
            says = "but declares UTF-8" if encoding else "and declares no encoding"
            return DataFormatError(
                f"the file is not UTF-8 {says}: byte 0x{data[u.start]:02x} at byte offset "
                f"{u.start} cannot be decoded. Declare the encoding it is written in (e.g. "
                "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>) or convert it with `iconv -f "
                f"latin1 -t utf-8 {os.fspath(path)} > converted.xml`", path, line)
    problem = f"not well-formed XML: {expat.ErrorString(e.code)} (column {e.offset + 1})"
    at_end = e.lineno >= data.count(b"\n") and e.code in (
        expat.errors.codes[expat.errors.XML_ERROR_NO_ELEMENTS],
        expat.errors.codes[expat.errors.XML_ERROR_UNCLOSED_TOKEN],
        expat.errors.codes[expat.errors.XML_ERROR_PARTIAL_CHAR])
    if at_end:
        problem += ": the file ends before its elements are closed, so it looks truncated (a " \
                   "download or copy cut short); fetch it again"
    return DataFormatError(problem, path, e.lineno)


def _triple(el: ET.Element, path, line) -> Triple:
    text = " ".join((el.text or "").split())
    parts = [x.strip() for x in text.split("|", 2)]
    if len(parts) != 3 or not all(parts):
        raise DataFormatError(f"<{el.tag}> {text!r} is not 'subject | property | object'",
                              path, line)
    return Triple(*parts)


def read_webnlg_xml(path: str | os.PathLike, lang: str | None = "en",
                    labelled: bool = True) -> list[WebNLGEntry]:
    """Read a WebNLG benchmark XML file (2017 challenge, enriched v2+, or 2020 format).

    `lang` keeps only `<lex>` elements with that `lang` attribute (a lex without one counts as
    English); `lang=None` keeps all. Entries without any `<lex>` have `lexes == []`; a file in
    which no entry has one (an unreferenced test file) is an error unless `labelled=False`.
    A `<lex>` whose text is empty (it happens in the real releases) is dropped with a
    DataWarning naming the file, the entries, their lines and the count, and saying which
    entries were left with no reference. A folder is read as all the .xml files under it, in
    sorted path order (the real train/dev releases are folders such as
    `train/1triples/Airport.xml`). The file's declared encoding is honoured.
    """
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                       if f.endswith(".xml"))
        if not files:
            raise DataFormatError("folder holds no .xml files", path)
        out = [e for f in files for e in read_webnlg_xml(f, lang, labelled=False)]
        _check_labelled(out, labelled, path)
        return out
    root, lines = _parse_xml(path)
    if root.tag != "benchmark":
        raise DataFormatError(f"expected root element <benchmark>, got <{root.tag}>", path,
                              lines.get(root))
    entries_el = root.find("entries")
    if entries_el is None:
        raise DataFormatError("<benchmark> has no <entries> element", path, lines.get(root))
    out, dropped = [], []
    for entry in entries_el:
        e, empty = _webnlg_entry(entry, lines, path, lang)
        out.append(e)
        dropped += [(e, line) for line in empty]
    if dropped:
        _warn_dropped_lexes(dropped, path)
    _check_labelled(out, labelled, path)
    return out


def _webnlg_entry(entry: ET.Element, lines: dict, path, lang) -> tuple[WebNLGEntry, list]:
    """One <entry> element -> (WebNLGEntry, line numbers of its <lex> elements with no text)."""
    line = lines.get(entry)
    if entry.tag != "entry":
        raise DataFormatError(f"expected <entry> inside <entries>, got <{entry.tag}>", path, line)
    category, eid = entry.get("category"), entry.get("eid")
    if not category or not eid:
        raise DataFormatError("<entry> needs 'category' and 'eid' attributes", path, line)
    mset = entry.find("modifiedtripleset")
    if mset is None:
        raise DataFormatError(f"entry {eid} has no <modifiedtripleset>", path, line)
    triples = [_triple(t, path, lines.get(t)) for t in mset if t.tag == "mtriple"]
    if not triples:
        raise DataFormatError(f"entry {eid} has an empty <modifiedtripleset>", path,
                              lines.get(mset))
    size = entry.get("size")
    if size is not None and size.strip() != str(len(triples)):
        raise DataFormatError(f"entry {eid} says size=\"{size}\" but has {len(triples)} "
                              "triples", path, line)
    original = [_triple(t, path, lines.get(t)) for os_ in entry.findall("originaltripleset")
                for t in os_ if t.tag == "otriple"]
    lexes, empty = [], []
    for lex in entry.findall("lex"):
        if lang is not None and lex.get("lang", "en") != lang:
            continue
        child = lex.find("text")                  # enriched release: <lex><text>...</text>
        raw = child.text if child is not None else lex.text
        text = " ".join((raw or "").split())
        if text:
            lexes.append(text)
        else:
            empty.append(lines.get(lex))
    return WebNLGEntry(eid, category, triples, lexes, original), empty


def _warn_dropped_lexes(dropped: list, path) -> None:
    """One DataWarning for every empty <lex> of a file: how many, where, and what it left."""
    where = ", ".join(f"entry {e.eid} line {line}" for e, line in dropped[:10])
    more = f" and {len(dropped) - 10} more" if len(dropped) > 10 else ""
    bare = list(dict.fromkeys(e.eid for e, _ in dropped if not e.lexes))   # in file order
    left = (f"; {len(bare)} entries are left with no reference: {', '.join(bare[:10])}"
            + (" ..." if len(bare) > 10 else "")) if bare else ""
    warnings.warn(f"{os.fspath(path)}: dropped {len(dropped)} empty reference(s) (<lex> with no "
                  f"text): {where}{more}{left}", DataWarning, stacklevel=3)


def _check_labelled(entries: list, labelled: bool, path) -> None:
    if labelled and entries and not any(e.lexes for e in entries):
        raise DataFormatError(
            f"no entry has a reference (<lex> text) in {len(entries)} entries. If this is an "
            "unreferenced test file, read it with labelled=False", path)


def write_webnlg_xml(path: str | os.PathLike, entries: Iterable[WebNLGEntry]) -> None:
    """Write entries in the WebNLG 2017 challenge layout (original + modified triple sets,
    `<lex comment="good" lid="IdN">`). Triples whose object is a quoted literal get the
    DBpedia `@en` language tag in `<originaltripleset>`, as in the real files."""
    out = ['<?xml version="1.0" ?>', "<benchmark>", "  <entries>"]
    for e in entries:
        out.append(f"    <entry category={quoteattr(e.category)} eid={quoteattr(e.eid)} "
                   f'size="{len(e.triples)}">')
        out.append("      <originaltripleset>")
        for t in (e.original_triples or e.triples):
            out.append(f"        <otriple>{escape(str(t))}</otriple>")
        out.append("      </originaltripleset>")
        out.append("      <modifiedtripleset>")
        for t in e.triples:
            out.append(f"        <mtriple>{escape(str(t))}</mtriple>")
        out.append("      </modifiedtripleset>")
        for i, lex in enumerate(e.lexes, 1):
            out.append(f'      <lex comment="good" lid="Id{i}">{escape(lex)}</lex>')
        out.append("    </entry>")
    out += ["  </entries>", "</benchmark>", ""]
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(out))


# ---------------------------------------------------------------------------------------------
# GLUE-style TSV (SST-2, SST-5, MNLI) and other small TSVs
# ---------------------------------------------------------------------------------------------
MNLI_LABELS = ("entailment", "neutral", "contradiction")   # GLUE / Hugging Face label order
_N_CLASSES = {"sst2": 2, "sst5": 5}


@dataclass
class SentenceExample:
    """A single-sentence classification example (SST-2: label 0/1; SST-5: 0-4; None: test)."""
    sentence: str
    label: int | None = None
    index: int | None = None


@dataclass
class PairExample:
    """A sentence-pair example (MNLI). `label` is the gold label string, None when unlabelled."""
    sentence1: str
    sentence2: str
    label: str | None = None
    genre: str | None = None
    index: int | None = None

    @property
    def label_id(self) -> int:
        """The label as an integer in the GLUE order entailment=0, neutral=1, contradiction=2."""
        if self.label is None:
            raise ValueError("unlabelled example has no label_id")
        return MNLI_LABELS.index(self.label)


def _read_tsv(path, encoding: str = "utf-8") -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) rows of an unquoted TSV; blank lines are skipped.
    A row with fewer fields than the header on the last line, or a last line without its
    newline, is reported as a truncated file."""
    text = _read_text(path, encoding)
    lines = text.split("\n")
    if not lines or not lines[0].strip():
        raise DataFormatError("empty file, expected a header line", path, 1)
    header = [h.strip() for h in lines[0].rstrip("\r").split("\t")]
    last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=1)
    rows = []
    for n, line in enumerate(lines[1:], 2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            cut = _TRUNCATED if n == last and len(fields) < len(header) else ""
            raise DataFormatError(f"expected {len(header)} columns ({','.join(header)}), "
                                  f"got {len(fields)}{cut}", path, n)
        rows.append((n, fields))
    _check_complete(text, path)
    return header, rows


def _int(value: str, what: str, path, line) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise DataFormatError(f"{what} must be an integer, got {value!r}", path, line) from None


def read_glue_tsv(path: str | os.PathLike, task: str, labelled: bool = True,
                  encoding: str = "utf-8") -> list:
    """Read a GLUE-format TSV for `task` in {"sst2", "sst5", "mnli"}.

    sst2/sst5: columns `sentence` and `label` (0/1, or 0-4 for sst5), optionally `index` (the
    GLUE SST-2 test file is `index<TAB>sentence`) -> [SentenceExample].
    mnli: columns found by name: `sentence1`, `sentence2`, `gold_label`, optional `genre`,
    `index` -> [PairExample]. Rows whose gold_label is "-" (no annotator majority in the
    original MultiNLI) are skipped, as GLUE does.
    A file without its label column (the GLUE test files) is an error unless `labelled=False`
    says it is meant to be unlabelled (then every label is None). The file must be in
    `encoding` (UTF-8 by default) and end with a newline; a short last row means truncated.
    """
    if task not in ("sst2", "sst5", "mnli"):
        raise ValueError(f"unknown task {task!r}; expected 'sst2', 'sst5' or 'mnli'")
    header, rows = _read_tsv(path, encoding)
    col = {h: i for i, h in enumerate(header)}
    need = ("sentence",) if task != "mnli" else ("sentence1", "sentence2")
    for c in need:
        if c not in col:
            raise DataFormatError(f"header {'/'.join(header)!r} has no {c!r} column", path, 1)
    label_col = "gold_label" if task == "mnli" else "label"
    if labelled and label_col not in col:
        raise DataFormatError(f"header {'/'.join(header)!r} has no {label_col!r} column. If this "
                              "is an unlabelled test file, read it with labelled=False", path, 1)
    out: list = []
    for n, f in rows:
        index = _int(f[col["index"]], "index", path, n) if "index" in col else None
        if task == "mnli":
            label = f[col["gold_label"]].strip() if "gold_label" in col else None
            if label == "-":
                continue
            if label is not None and label not in MNLI_LABELS:
                raise DataFormatError(f"gold_label must be one of {', '.join(MNLI_LABELS)}, "
                                      f"got {label!r}", path, n)
            genre = f[col["genre"]].strip() if "genre" in col else None
            out.append(PairExample(f[col["sentence1"]].strip(), f[col["sentence2"]].strip(),
                                   label, genre, index))
        else:
            label = None
            if "label" in col:
                label = _int(f[col["label"]], "label", path, n)
                k = _N_CLASSES[task]
                if not 0 <= label < k:
                    raise DataFormatError(f"label must be in 0..{k - 1} for {task}, got {label}",
                                          path, n)
            sentence = f[col["sentence"]].strip()
            if not sentence:
                raise DataFormatError("empty sentence", path, n)
            out.append(SentenceExample(sentence, label, index))
    return out


def write_tsv(path: str | os.PathLike, header: list[str], rows: Iterable[list]) -> None:
    """Write an unquoted TSV (GLUE style). Fields may not contain tabs or newlines."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            fields = [str(x) for x in row]
            if len(fields) != len(header):
                raise ValueError(f"row {row!r} has {len(fields)} fields, header has {len(header)}")
            for x in fields:
                if "\t" in x or "\n" in x or "\r" in x:
                    raise ValueError(f"field {x!r} contains a tab or newline")
            f.write("\t".join(fields) + "\n")


def write_sentence_tsv(path, examples: Iterable[SentenceExample]) -> None:
    """SST-2/SST-5 layout: `sentence<TAB>label`."""
    write_tsv(path, ["sentence", "label"], ([e.sentence, e.label] for e in examples))


def write_mnli_tsv(path, examples: Iterable[PairExample]) -> None:
    """The MNLI columns that matter: `index genre sentence1 sentence2 gold_label`."""
    write_tsv(path, ["index", "genre", "sentence1", "sentence2", "gold_label"],
              ([e.index, e.genre, e.sentence1, e.sentence2, e.label] for e in examples))


def read_pairs_tsv(path: str | os.PathLike, columns: tuple[str, str] = ("en", "fr")
                   ) -> list[tuple[str, str]]:
    """Read a two-column TSV such as data/translation/en_fr.tsv -> [(en, fr), ...]."""
    header, rows = _read_tsv(path)
    if tuple(header) != tuple(columns):
        raise DataFormatError(f"expected header {'<TAB>'.join(columns)!r}, got "
                              f"{'<TAB>'.join(header)!r}", path, 1)
    out = []
    for n, (a, b) in rows:
        if not a.strip() or not b.strip():
            raise DataFormatError("empty field", path, n)
        out.append((a.strip(), b.strip()))
    return out


# ---------------------------------------------------------------------------------------------
# Plain-text corpora: one document per paragraph, paragraphs separated by a blank line
# ---------------------------------------------------------------------------------------------
def read_corpus(path: str | os.PathLike) -> list[str]:
    """Documents of a pretraining text file (paragraphs separated by blank lines)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [d.strip() for d in text.split("\n\n") if d.strip()]


def write_corpus(path: str | os.PathLike, documents: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for d in documents:
            if "\n\n" in d:
                raise ValueError("a document may not contain a blank line")
            f.write(d.strip() + "\n\n")
