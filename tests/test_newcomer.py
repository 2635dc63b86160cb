"""The newcomer's path: what README.md tells a student to type works as written.

- every ```python block of README.md runs, top to bottom, in a fresh interpreter in a scratch folder
  (a block that needs what a CI machine lacks - a GPU, transformers - is preceded by
  `<!-- readme-test: skip (the reason) -->`, and the test is skipped with that reason);
- every `minipeft ...` line of a ```bash block is a command the parser accepts, and every `make X`
  names a target of the Makefile.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from minipeft.cli import build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.+?)\)\s*-->\s*$")


def readme_blocks(lang: str) -> list:
    """(line number, code, skip reason or None) of each ```lang block of README.md."""
    lines = open(README, encoding="utf-8").read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            before = next((lines[j] for j in range(start - 2, -1, -1) if lines[j].strip()), "")
            m = SKIP.search(before)
            blocks.append((start, "\n".join(body) + "\n", m.group(1) if m else None))
        i += 1
    return blocks


PYTHON = readme_blocks("python")


def test_the_readme_has_python_snippets():
    assert len(PYTHON) >= 3


@pytest.mark.parametrize("line, code, skip", PYTHON, ids=[f"README.md:{b[0]}" for b in PYTHON])
def test_readme_python_snippet_runs_as_written(line, code, skip, tmp_path):
    if skip:
        pytest.skip(f"README.md line {line}: {skip}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"README.md block at line {line} failed:\n{r.stderr[-3000:]}"


def test_the_first_look_prints_the_count_its_comment_gives_and_a_loss_value(tmp_path):
    line, code, _ = next(b for b in PYTHON if "print_trainable_parameters" in b[1])
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    said = re.search(r"# trainable params: ([\d,]+)", code).group(1)
    assert f"trainable params: {said} " in out, out
    last = out.strip().splitlines()[-1]
    assert 0 < float(last) < 20, f"print(loss...) should show a number, got {last!r}"
    assert (tmp_path / "runs" / "my-adapter" / "adapter_config.json").exists()


def _bash_lines():
    for line, code, _ in readme_blocks("bash"):
        for k, text in enumerate(code.splitlines()):
            cmd = text.split("#", 1)[0].strip()
            if cmd:
                yield line + k, cmd


def test_readme_minipeft_commands_parse_and_make_targets_exist():
    parser = build_parser()
    targets = set(re.findall(r"^([\w-]+):", open(os.path.join(REPO, "Makefile"), encoding="utf-8").read(), re.M))
    seen = 0
    for line, cmd in _bash_lines():
        argv = shlex.split(cmd)
        argv = [a for a in argv if "=" not in a or not a.split("=")[0].isupper()]   # VAR=value prefixes
        if argv and argv[0] in ("minipeft", ".venv/bin/minipeft"):
            parser.parse_args(argv[1:])                       # SystemExit(2) on a bad option
            seen += 1
        elif argv and argv[0] == "make":
            for t in argv[1:]:
                if "=" not in t:
                    assert t in targets, f"README.md line {line}: make {t}: no such target"
    assert seen >= 3


# ----------------------------------------------------------------------------- minipeft finetune

needs_gpt2s = pytest.mark.skipif(not os.path.isdir(os.path.join(REPO, "data", "checkpoints", "gpt2-s")),
                                 reason="data/checkpoints/gpt2-s is not shipped")
TINY_RUN = ["finetune", "--method", "lora", "--task", "e2e", "--model", "gpt2-s", "--steps", "2",
            "--batch-size", "2", "--train-size", "8", "--eval-size", "2", "--eval-every", "2", "--quiet",
            "--processes", "1"]


def _main(argv, capsys):
    from minipeft.cli import main
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err.strip()


@needs_gpt2s
def test_each_finetune_run_gets_its_own_folder_and_says_where(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for k, folder in enumerate(["e2e-lora", "e2e-lora-2"]):
        code, out, err = _main(TINY_RUN, capsys)
        assert code == 0, err
        assert f"saved in {os.path.join('runs', folder)}:" in out, out
        logged = (tmp_path / "runs" / folder / "log.jsonl").read_text().splitlines()
        assert len([r for r in logged if '"eval"' in r]) == 1, "one run's log, not two appended"
    # an explicit --out that holds a run is refused (nothing is replaced) unless --overwrite
    before = (tmp_path / "runs" / "e2e-lora" / "adapter_model.safetensors").read_bytes()
    code, out, err = _main(TINY_RUN + ["--out", "runs/e2e-lora", "--seed", "1"], capsys)
    assert code == 2 and "holds an earlier run" in err and "--overwrite" in err and "\n" not in err, err
    assert (tmp_path / "runs" / "e2e-lora" / "adapter_model.safetensors").read_bytes() == before
    code, out, err = _main(TINY_RUN + ["--out", "runs/e2e-lora", "--seed", "1", "--overwrite"], capsys)
    assert code == 0, err
    logged = (tmp_path / "runs" / "e2e-lora" / "log.jsonl").read_text().splitlines()
    assert len([r for r in logged if '"eval"' in r]) == 1, "--overwrite starts the log afresh"


@needs_gpt2s
@pytest.mark.parametrize("extra, words", [
    (["--batch-size", "0"], ["--batch-size 0", ">= 1"]),
    (["--steps", "0"], ["--steps 0", ">= 1"]),
    (["--train-size", "0"], ["--train-size 0", ">= 1"]),
    (["--eval-every", "-1"], ["--eval-every -1", ">= 0"]),
    (["--out", "FILE/run"], ["is a file", "FILE"]),
    (["--out", "FILE"], ["is a file, not a folder"]),
    (["--method", "prompt", "--length", "250"], ["--length 250", "256 context positions", "--length 193"]),
])
def test_bad_finetune_input_is_one_line_before_any_work(extra, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("a file\n")
    import minipeft.tasks
    monkeypatch.setattr(minipeft.tasks, "fit", lambda *a, **k: pytest.fail("training started"))
    code, out, err = _main(TINY_RUN + extra, capsys)
    assert code == 2 and err.startswith("minipeft: error:") and "\n" not in err, err
    for w in words:
        assert w in err, (w, err)
    assert "before:" not in out, "reported only after the first evaluation"


@needs_gpt2s
def test_ctrl_c_in_finetune_is_one_line_naming_what_was_kept(tmp_path, monkeypatch, capsys):
    import minipeft.tasks

    def interrupted_fit(model, *a, on_best, **k):         # one evaluation, then Ctrl-C
        on_best(2, {"bleu": 0.25})
        raise KeyboardInterrupt

    monkeypatch.setattr(minipeft.tasks, "fit", interrupted_fit)
    out_dir = str(tmp_path / "run")
    code, out, err = _main(TINY_RUN + ["--out", out_dir], capsys)
    assert code == 130
    assert err == f"minipeft: interrupted: kept the best adapter so far (step 2, dev bleu 0.2500) in {out_dir}"
    assert os.path.isfile(os.path.join(out_dir, "adapter_model.safetensors"))

    monkeypatch.setattr(minipeft.tasks, "fit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    code, out, err = _main(TINY_RUN + ["--out", str(tmp_path / "run2")], capsys)
    assert code == 130 and "\n" not in err and "no adapter was kept" in err, err


def test_ctrl_c_in_pretrain_is_one_line(tmp_path, monkeypatch, capsys):
    import minipeft.pretrain
    monkeypatch.setattr(minipeft.pretrain, "fit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    code, out, err = _main(["pretrain", "--preset", "gpt2-s", "--steps", "5", "--quiet", "--out",
                            str(tmp_path / "ckpt")], capsys)
    assert code == 130 and "\n" not in err and "no checkpoint was written" in err, err
    assert not (tmp_path / "ckpt" / "model.safetensors").exists()


@needs_gpt2s
def test_pretrain_does_not_replace_a_shipped_checkpoint_unasked(capsys):
    code, out, err = _main(["pretrain", "--preset", "gpt2-s", "--steps", "1", "--out",
                            os.path.join("data", "checkpoints", "gpt2-s")], capsys)
    assert code == 2 and "holds a checkpoint already" in err and "--overwrite" in err, err


def test_pretrain_writes_a_new_folder_under_runs_by_default(tmp_path, monkeypatch, capsys):
    import minipeft.pretrain
    seen = []
    monkeypatch.setattr(minipeft.pretrain, "pretrain", lambda preset, out, **kw: seen.append(out) or {})
    monkeypatch.chdir(tmp_path)
    os.makedirs(os.path.join("runs", "pretrain-gpt2-s"))          # an earlier run: kept
    assert _main(["pretrain", "--preset", "gpt2-s", "--steps", "1"], capsys)[0] == 0
    assert seen == [os.path.join("runs", "pretrain-gpt2-s-2")]


# ----------------------------------------------------------------------------- minipeft generate --adapter

@needs_gpt2s
def test_generate_with_a_finetuned_adapter_uses_its_tasks_prompt_format(tmp_path, monkeypatch, capsys):
    out_dir = str(tmp_path / "run")
    assert _main(TINY_RUN + ["--out", out_dir], capsys)[0] == 0
    info = json.loads(open(os.path.join(out_dir, "task.json")).read())
    assert info == {"task": "e2e", "prompt_format": "<bos> {source} <sep>", "model": "gpt2-s"}
    import minipeft.generate
    from minipeft.data.tokenizer import load_default
    seen, real = [], minipeft.generate.generate
    monkeypatch.setattr(minipeft.generate, "generate", lambda m, prompts, *a, **k: seen.append(prompts) or real(m, prompts, *a, **k))
    source = "name : The Eagle | food : Chinese"
    # no --model: the adapter's own base (gpt2-s; gpt2-m's shapes would not fit)
    code, out, err = _main(["generate", "--adapter", out_dir, "--text", source, "--max-new-tokens", "8"], capsys)
    assert code == 0, err
    tok = load_default()
    assert seen == [[[tok.bos_id] + tok.encode(source) + [tok.sep_id]]]     # as in training
    assert out.startswith(source + "\n  -> ")


@needs_gpt2s
def test_a_broken_adapter_config_is_named(tmp_path, capsys):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": ')
    code, out, err = _main(["generate", "--model", "gpt2-s", "--adapter", str(tmp_path), "--text", "x"], capsys)
    assert code == 2 and str(tmp_path / "adapter_config.json") in err and "\n" not in err, err


# ----------------------------------------------------------------------------- notebooks

def test_an_interactive_notebook_run_writes_figures_to_a_scratch_folder(monkeypatch):
    from minipeft import lecture
    monkeypatch.delenv(lecture.FIGURES_ENV, raising=False)
    assert os.path.realpath(lecture.figures_dir()) == os.path.realpath(os.path.join(REPO, "runs", "lab-figures"))
    monkeypatch.setenv(lecture.FIGURES_ENV, os.path.join(REPO, "lectures", "figures"))
    assert lecture.figures_dir() == os.path.join(REPO, "lectures", "figures")        # when asked


def test_only_make_lectures_writes_the_committed_figures_and_ctrl_c_is_one_line(monkeypatch, capsys):
    from minipeft import lecture
    monkeypatch.delenv(lecture.FIGURES_ENV, raising=False)
    asked = []

    def fake(path, fast, timeout=None, save=False, figures=None, env=None):
        asked.append((fast, save, figures))
        if len(asked) == 3:
            raise KeyboardInterrupt
        import nbformat
        return nbformat.v4.new_notebook(), 0.1

    monkeypatch.setattr(lecture, "execute_notebook", fake)
    assert lecture.main(["a.ipynb"]) == 0                      # make lectures: full mode, saved
    assert lecture.main(["--fast", "a.ipynb"]) == 0
    assert asked[0] == (False, True, lecture.COMMITTED_FIGURES)
    assert asked[1][:2] == (True, False), "a fast run must not replace the committed (full-run) outputs"
    assert asked[1][2] != lecture.COMMITTED_FIGURES and asked[1][2] is not None
    capsys.readouterr()
    assert lecture.main(["a.ipynb", "b.ipynb"]) == 130          # Ctrl-C in the first notebook
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("interrupted while running a.ipynb"), err


def test_every_notebook_says_at_its_top_how_long_it_runs():
    import glob
    import nbformat
    for path in sorted(glob.glob(os.path.join(REPO, "lectures", "*.ipynb"))):
        top = nbformat.read(path, as_version=4).cells[0]
        assert top.cell_type == "markdown" and re.search(r"\*\*How long it runs\*\*", top.source), path


def test_make_lab_and_test_task_exist():
    text = open(os.path.join(REPO, "Makefile"), encoding="utf-8").read()
    assert re.search(r"^lab:", text, re.M) and "jupyter lab lectures/" in text
    assert re.search(r"^test-task:", text, re.M) and '-m "$(TASK)"' in text


def test_the_demo_says_what_the_student_is_looking_at_and_what_to_try(monkeypatch, capsys):
    import minipeft.tasks
    from minipeft import demo
    src = "name : The Eagle | food : Chinese"
    fake = minipeft.tasks.FinetuneResult("e2e", "lora", {"bleu": 1.0, "rouge_l": 0.1}, {"bleu": 20.0, "rouge_l": 0.4},
                                         16_384, 1_088_256, 1.0, 2, [(src, "before", "after")])
    monkeypatch.setattr(minipeft.tasks, "finetune", lambda *a, **k: fake)
    demo.main(["--out", "runs/x"])
    out = capsys.readouterr().out
    assert "What you are looking at:" in out and "another venue" in out and "Try next:" in out
    assert f'minipeft generate --adapter runs/x --text "{src}"' in out


@needs_gpt2s
def test_eval_every_0_keeps_the_last_step(tmp_path, capsys):
    out_dir = str(tmp_path / "run")
    argv = [a if a != "2" or i != TINY_RUN.index("--eval-every") + 1 else "0" for i, a in enumerate(TINY_RUN)]
    code, out, err = _main(argv + ["--out", out_dir], capsys)
    assert code == 0, err
    assert "the adapter (the last step;" in out and os.path.isfile(os.path.join(out_dir, "adapter_model.safetensors"))


@needs_gpt2s
def test_finetune_self_ensemble_evaluates_the_averaged_parameters(tmp_path, monkeypatch, capsys):
    """--self-ensemble K: the mean of the last K steps' parameters is evaluated as its own model;
    with K = 1 it is the last step's model, which here is also the kept (best = last) adapter."""
    out_dir = str(tmp_path / "se")
    code, out, err = _main(TINY_RUN + ["--out", out_dir, "--self-ensemble", "1"], capsys)
    assert code == 0, err
    res = json.loads(open(os.path.join(out_dir, "result.json")).read())
    assert res["best"]["step"] == 2 and res["averaged"] == res["after"]
    assert "self-ensemble (mean of the last 1 steps)" in out
    code, out, err = _main(TINY_RUN + ["--out", str(tmp_path / "bad"), "--self-ensemble", "5"], capsys)
    assert code == 2 and "--self-ensemble 5" in err and "--steps (2)" in err


@needs_gpt2s
def test_finetune_self_distill_adds_the_teachers_term_and_lambda_0_changes_nothing(tmp_path, capsys):
    """--self-distill LAMBDA (Xu et al. 2020) on a generation task: with lambda 0 the run is the plain
    run exactly; with lambda > 0 the training loss logged at the last step (3) carries the term (its
    teacher, step 2's parameters, differs from the model being trained)."""
    def losses(extra, name):
        out_dir = str(tmp_path / name)
        code, out, err = _main(TINY_RUN[:-2] + ["--steps", "3", "--eval-every", "3", "--processes", "1",
                                                 "--out", out_dir] + extra, capsys)
        assert code == 0, err
        rows = [json.loads(r) for r in open(os.path.join(out_dir, "log.jsonl"))]
        return [r["loss"] for r in rows if "loss" in r], json.loads(open(os.path.join(out_dir, "result.json")).read())["after"]

    plain, after = losses([], "plain")
    zero, after0 = losses(["--self-distill", "0"], "zero")
    assert zero == plain and after0 == after
    assert len(plain) == 1                                   # (logged every 10 steps and at the last)
    distilled, _ = losses(["--self-distill", "50", "--self-ensemble", "1"], "sd")
    assert distilled[0] > plain[0], (plain, distilled)       # + lambda * MSE >= 0, and > 0 here
    vote, _ = losses(["--self-distill", "50", "--self-ensemble", "1", "--teacher", "vote"], "vote")
    assert vote[0] > plain[0]


@needs_gpt2s
@pytest.mark.parametrize("extra, words", [
    (["--self-distill", "-1"], ["--self-distill -1.0", "lambda >= 0"]),
    (["--self-distill", "1", "--processes", "2"], ["--processes 1"]),
])
def test_finetune_self_distill_refuses_bad_options_before_any_work(tmp_path, capsys, extra, words):
    argv = [a for a in TINY_RUN if a not in ("--processes", "1")] + ["--out", str(tmp_path / "x")] + extra
    code, out, err = _main(argv, capsys)
    assert code == 2 and all(w in err for w in words), err
    assert not (tmp_path / "x").exists()
