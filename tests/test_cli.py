"""The `minipeft` command line: help texts, and one clear line (not a traceback) for bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from minipeft.cli import main

pytestmark = pytest.mark.task_training


@pytest.mark.parametrize("cmd", ["count", "pretrain", "eval", "generate", "finetune"])
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: minipeft" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["count", "--arch", "bert-huge", "--method", "lora"], ["--arch", "bert-huge", "bert-base"]),
    (["count", "--arch", "gpt2", "--method", "dora"], ["--method", "dora", "lora"]),
    (["count", "--arch", "gpt2", "--method", "lora", "--r", "0"], ["r"]),
    (["eval", "--model", "no-such-model"], ["no checkpoint", "no-such-model"]),
    (["pretrain", "--preset", "gpt2-xxl", "--steps", "1"], ["gpt2-xxl", "gpt2-m"]),
    (["finetune", "--method", "lora", "--task", "squad", "--steps", "1"], ["squad", "e2e"]),
])
def test_bad_input_gives_one_line_and_status_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minipeft: error:") and "\n" not in err, err
    for w in words:
        assert w in err, f"{w!r} missing from: {err}"


def test_count_json_is_one_object_with_the_interface_keys():
    out = subprocess.run([sys.executable, "-m", "minipeft.cli", "count", "--arch", "roberta-base",
                          "--method", "lora", "--r", "8", "--targets", "q,v", "--json"],
                         capture_output=True, text=True, check=True).stdout
    res = json.loads(out)
    assert res["trainable"] == 294_912                # the LoRA paper's "0.3M" for RoBERTa-base
    assert res["total"] == 124_645_632 + 294_912
    assert {"trainable", "total"} <= set(res)


def test_method_none_is_the_base_model(capsys):
    assert main(["count", "--arch", "gpt2-large", "--method", "none", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res == {"arch": "gpt2-large", "method": "none", "trainable": 0, "total": 774_030_080,
                   "base": 774_030_080}


def test_generate_runs_each_method_on_a_shipped_checkpoint(capsys):
    import os
    from minipeft.pretrain import DATA
    if not os.path.isdir(os.path.join(DATA, "checkpoints", "gpt2-s")):
        pytest.skip("data/checkpoints/gpt2-s is not shipped")
    for extra in ([], ["--method", "beam", "--num-beams", "2"], ["--method", "sample", "--seed", "3"]):
        assert main(["generate", "--model", "gpt2-s", "--text", "The Golden", "--max-new-tokens", "5"] + extra) == 0
        out = capsys.readouterr().out
        assert out.startswith("The Golden") and len(out.strip()) > len("The Golden")
