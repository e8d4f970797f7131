# precision-lab: `make run` computes the bundled experiments into results/, `make test` runs the
# linters and the tests.  Both create .venv (python3 -m venv) if it is missing and reinstall the
# package only when pyproject.toml or constraints.txt changed (stamp file .venv/.installed).
# constraints.txt pins the versions the committed results and CI were produced with.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Bundled experiments that `make run` computes; other experiments append to this list.
EXPERIMENTS := experiments/seed_question.toml experiments/seed_81_percent.toml
EXPERIMENTS += experiments/overflow_logit_scale.toml experiments/cancellation_margin.toml \
               experiments/classes_sweep.toml experiments/formats_side_by_side.toml
EXPERIMENTS += experiments/label_smoothing.toml experiments/ignore_index_padding.toml \
               experiments/class_weights.toml experiments/zloss_softcap.toml \
               experiments/gradients_half.toml experiments/batch_reduction.toml
EXPERIMENTS += experiments/llm/llm_vocab.toml experiments/llm/llm_confident.toml \
               experiments/llm/llm_zloss_softcap.toml experiments/llm/llm_layouts.toml \
               experiments/llm/llm_fused_linear.toml
RUN_FLAGS ?= --force

.PHONY: run table test lint venv clean-results

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -c constraints.txt -e '.[test,jax,cluster]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/precision-lab run $(RUN_FLAGS) $(EXPERIMENTS)
	$(BIN)/precision-lab study capability --out results
	$(BIN)/precision-lab study cuda analyze results/cuda_vs_cpu/gpu_h100.npz --out results

# The accuracy table (results/accuracy_table/): hours of searches and exhaustive slices from
# scratch on 2 cores; finished chunks are kept in results/.work, so a rerun continues.  Slices
# still incomplete after TABLE_BUDGET seconds are searched instead and named in the table.
TABLE_BUDGET ?= 600
table: $(STAMP)
	$(BIN)/precision-lab table --workers 0 --budget $(TABLE_BUDGET)

lint: $(STAMP)
	$(BIN)/ruff check precision_lab tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

clean-results:
	rm -rf results/*/
