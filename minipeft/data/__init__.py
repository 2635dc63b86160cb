"""minipeft.data: the synthetic world, its tasks and corpus, and readers for real dataset files.

    from minipeft.data import build_tasks, read_e2e_csv, read_webnlg_xml, read_glue_tsv
    python -m minipeft.data.generate --out data --seed 0     # writes data/ (see data/README.md)
"""
from .formats import (E2E_ATTRIBUTES, MNLI_LABELS, DataFormatError, E2EExample, PairExample,
                      SentenceExample, Triple, WebNLGEntry, format_mr, parse_mr, read_corpus,
                      read_e2e_csv, read_glue_tsv, read_pairs_tsv, read_webnlg_xml)
from .tasks import build_tasks
from .world import SEEN_CATEGORIES, UNSEEN_CATEGORIES, World, build_world

__all__ = ["E2E_ATTRIBUTES", "MNLI_LABELS", "DataFormatError", "E2EExample", "PairExample",
           "SentenceExample", "Triple", "WebNLGEntry", "format_mr", "parse_mr", "read_corpus",
           "read_e2e_csv", "read_glue_tsv", "read_pairs_tsv", "read_webnlg_xml", "build_tasks",
           "SEEN_CATEGORIES", "UNSEEN_CATEGORIES", "World", "build_world"]
