"""Fine-tuning tasks on real dataset files: `load_task` and `finetune` pointed at a
folder laid out like data/ (`minipeft finetune --data DIR`), entries without a reference, and
sources too long for the context, which are cut where they lose least and counted."""
from __future__ import annotations

from pathlib import Path

import pytest

from minipeft import peft, tasks
from minipeft.cli import main
from minipeft.data.formats import DataWarning
from minipeft.data.tokenizer import load_default
from minipeft.nn import Transformer, TransformerConfig

pytestmark = pytest.mark.task_training

DATA_DIR = Path(__file__).parent / "data" / "fixtures" / "real_formats" / "data_dir"
# a real E2E test MR (8 attributes): too long for the room a 128-token decoder leaves it
LONG_MR = ("name[The Cricketers], eatType[coffee shop], food[Japanese], priceRange[more than £30], "
           "customer rating[high], area[city centre], familyFriendly[yes], near[Ranch]")


@pytest.fixture(scope="module")
def tok():
    return load_default()


@pytest.fixture(scope="module")
def tiny_gpt2(tok, tmp_path_factory):
    from minipeft.checkpoint import save_checkpoint
    cfg = TransformerConfig(arch="gpt2", vocab_size=tok.vocab_size, pad_id=tok.pad_id, d_model=16,
                            n_layer=1, n_head=2, n_ctx=128)
    path = tmp_path_factory.mktemp("tiny") / "gpt2"
    save_checkpoint(Transformer(cfg), str(path), cfg.to_dict())
    return str(path)


# --- 7. a data folder: load_task, finetune(data_dir=), minipeft finetune --data ---------------
def test_load_task_reads_a_folder_with_the_real_release_names():
    train = tasks.load_task("e2e", "train", str(DATA_DIR))         # DIR/e2e/trainset.csv
    assert len(train) == 4 and train[0].source.startswith("name : The Vaults | eatType : pub")
    assert train[0].origin.endswith("trainset.csv MR 'name[The Vaults], eatType[pub], "
                                    "priceRange[more than £30], customer rating[5 out of 5], "
                                    "near[Café Adriatic]'")


def test_a_folder_without_the_task_files_names_the_expected_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        tasks.load_task("sst2", "train", str(DATA_DIR))
    assert f"data folder {DATA_DIR} has no sst2 train split: expected " \
           f"{DATA_DIR / 'sst2' / 'train.tsv'}" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        tasks.load_task("e2e", "test", str(DATA_DIR))
    for name in ("test.csv", "testset_w_refs.csv", "test-fixed.csv"):
        assert str(DATA_DIR / "e2e" / name) in str(err.value)
    with pytest.raises(FileNotFoundError, match="data folder .*nowhere does not exist"):
        tasks.load_task("e2e", "train", str(tmp_path / "nowhere"))


def test_webnlg_entries_without_reference_are_skipped_and_counted():
    # train/1triples/Food.xml, as released: one entry's only <lex> is empty
    with pytest.warns(DataWarning) as rec:
        train = tasks.load_task("webnlg", "train", str(DATA_DIR))
    assert [e.refs for e in train] == [["Ajoblanco is from Spain."]]
    msgs = [str(w.message) for w in rec]
    assert any("dropped 1 empty reference(s)" in m and "entry Id2" in m for m in msgs)
    assert any("skipped 1 of 2 entries that have no reference: Id2" in m for m in msgs)


def test_evaluation_names_an_example_without_reference(tok, tiny_gpt2):
    from minipeft.pretrain import load_pretrained
    ex = [tasks.Seq2SeqExample("food : Thai", ["It serves Thai food."]),
          tasks.Seq2SeqExample("food : Thai", [], origin="data/webnlg/test.xml entry Id7")]
    with pytest.raises(ValueError, match=r"1 of 2 examples have no reference .* entry Id7"):
        tasks.evaluate_generation(load_pretrained(tiny_gpt2), tok, ex)


def test_finetune_data_dir_reads_the_folder(tiny_gpt2, tmp_path):
    r = tasks.finetune("e2e", peft.LoraConfig(r=2), tiny_gpt2, steps=1, batch_size=2, eval_size=2,
                       eval_every=1, out_dir=str(tmp_path / "run"), progress=False, verbose=False,
                       data_dir=str(DATA_DIR), show=2)
    assert [src for src, _, _ in r.examples] == [
        "name : Blue Spice | eatType : coffee shop | area : city centre",
        "name : Blue Spice | eatType : coffee shop | area : riverside"]        # from devset.csv
    assert r.after["sources_cut"] == 0


def test_cli_finetune_data_option(tiny_gpt2, tmp_path, capsys):
    argv = ["finetune", "--method", "lora", "--task", "e2e", "--model", tiny_gpt2, "--steps", "1",
            "--batch-size", "2", "--eval-size", "1", "--eval-every", "1", "--quiet",
            "--out", str(tmp_path / "run")]
    assert main(argv + ["--data", str(DATA_DIR)]) == 0
    assert "name : Blue Spice | eatType : coffee shop | area : city centre" in capsys.readouterr().out
    # a folder without the task: one line naming the expected file, before any model is loaded
    assert main(argv + ["--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minipeft: error: data folder") and str(tmp_path / "e2e" / "train.csv") in err


# --- 8. long sources lose whole fields from the end, and the cut is counted ---------------------
def test_a_long_mr_loses_its_last_attributes_not_its_name(tok):
    source = tasks.linearize_mr(LONG_MR)
    full = len(tok.encode(source))
    ids, cut = tasks.fit_source(tok, source, full - 1)
    text = tok.decode(ids)
    assert cut and text.startswith("name : The Cricketers")
    assert "near" not in text and "familyFriendly : yes" in text      # one whole field dropped
    ids, cut = tasks.fit_source(tok, source, 12)
    assert cut and len(ids) <= 12 and tok.decode(ids).startswith("name : The Cricketers")
    assert tasks.fit_source(tok, source, full) == (tok.encode(source), False)


def test_training_pairs_keep_the_name_too(tok):
    source = tasks.linearize_mr(LONG_MR)
    ids, labels = tasks.encode_seq2seq(tok, source, "The Cricketers is a coffee shop.", n_ctx=40)
    assert len(ids) <= 40 and ids[0] == tok.bos_id
    src = ids[1:ids.index(tok.sep_id)]
    assert tok.decode(src).startswith("name : The Cricketers")


def test_plain_text_keeps_its_beginning_and_end(tok):
    source = "first " + " ".join(["middle"] * 100) + " last"
    ids, cut = tasks.fit_source(tok, source, 10)
    assert cut and len(ids) == 10
    text = tok.decode(ids)
    assert text.startswith("first") and text.endswith("last")


def test_evaluation_reports_how_many_sources_were_cut(tok, tiny_gpt2):
    from minipeft.pretrain import load_pretrained
    model = load_pretrained(tiny_gpt2)                      # n_ctx 128: 128 - 60 new tokens
    short = tasks.Seq2SeqExample("name : A | food : Thai", ["A serves Thai food."])
    long = tasks.Seq2SeqExample(tasks.linearize_mr(LONG_MR) + " | near : " + "Ranch " * 40,
                                ["The Cricketers is a coffee shop."])
    prompts, n_cut = tasks.generation_prompts(model, tok, [short, long], max_new_tokens=60)
    assert n_cut == 1 and all(len(p) <= 128 - 60 for p in prompts)
    assert tok.decode(prompts[1][1:-1]).startswith("name : The Cricketers")
    assert prompts[1][-1] == tok.sep_id
    r = tasks.evaluate_generation(model, tok, [short, long, long], max_new_tokens=60)
    assert r["sources_cut"] == 2 and len(r["outputs"]) == 3
    assert "sources_cut 2" in tasks._fmt(r)
