# precision-lab: `make run` computes the bundled experiments into results/, `make test` runs the tests.
# Both create .venv (python3 -m venv) if it is missing and reinstall the package only when
# pyproject.toml changed (stamp file .venv/.installed).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Bundled experiments that `make run` computes; other experiments append to this list.
EXPERIMENTS := experiments/seed_question.toml experiments/seed_81_percent.toml
RUN_FLAGS ?= --force

.PHONY: run test venv clean-results

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/precision-lab run $(RUN_FLAGS) $(EXPERIMENTS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-results:
	rm -rf results/*/
