# Two entry points, each doing the whole set-up on a fresh machine:
#   make demo   create .venv, install, train 4 clients on the embedded digits set with BSP and with
#               FedAvg (H=8), print the analysis and write plots
#   make test   create .venv, install, run the whole test suite (unit + multi-rank MPI tests)
#   make check  create .venv, install, lint lbfl_mpi, tests and benchmarks (ruff; settings in pyproject.toml)
#   make gpu-prepare  on a machine with network: wheels + Fashion-MNIST for a GPU machine without network
#   make gpu-check    on a GPU machine: GPU tests, benchmarks, models, GPU-vs-CPU jobs, <= 480 s -> report
#   make gpu-fidelity on a GPU machine: the paper's Fig. 7 at GPU scale, <= 480 s -> report
#   (GPU_CHECK_DRY=1 runs either on CPU with tiny sizes; GPU_REPORT=FILE.md sets the report path)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= all
RANKS  ?= 4
DEMO_DIR ?= runs/demo

export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1

.PHONY: demo test check install clean gpu-check gpu-fidelity gpu-prepare

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.py pyproject.toml $(BIN)/python
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/mpiexec -n $(RANKS) --oversubscribe $(BIN)/lbfl train --config jobs/demo.toml \
		--set run.out_dir=$(DEMO_DIR)/bsp --set run.overwrite=true
	$(BIN)/mpiexec -n $(RANKS) --oversubscribe $(BIN)/lbfl train --config jobs/demo.toml \
		--set run.out_dir=$(DEMO_DIR)/fedavg --set sync.mode=fedavg --set sync.period=8 --set run.overwrite=true
	$(BIN)/lbfl analyze $(DEMO_DIR)/bsp $(DEMO_DIR)/fedavg --plots $(DEMO_DIR)/plots

# the suite in three processes: tests/slurm, which mostly waits on its private Slurm, starts first in
# the background (its log is printed at the end); beside it everything but the clock-budget tests runs
# on 2 workers (pytest-xdist, a test file per worker at a time; many tests wait on sleeps and signals),
# then the other `serial` tests (tests/conftest.py lists them) alone
TEST_WORKERS ?= 2
test: install
	@mkdir -p .venv/test-logs
	PATH=$(abspath $(BIN)):$$PATH; \
	$(BIN)/python -m pytest tests/slurm -q -ra --durations=8 -m serial > .venv/test-logs/slurm.log 2>&1 & slurm=$$!; \
	trap 'kill $$slurm 2>/dev/null' INT TERM; \
	$(BIN)/python -m pytest tests -q -ra --durations=15 -m "not serial" --ignore=tests/slurm \
		-n $(TEST_WORKERS) --dist loadfile; par=$$?; \
	$(BIN)/python -m pytest tests -q -ra --durations=15 -m serial --ignore=tests/slurm; rest=$$?; \
	wait $$slurm; srl=$$?; echo "== tests/slurm (run beside the others):"; cat .venv/test-logs/slurm.log; \
	test $$par -eq 0 -a $$rest -eq 0 -a $$srl -eq 0

check: install
	$(BIN)/ruff check lbfl_mpi tests benchmarks

# on a GPU machine whose python already has torch, h5py and pytest (no venv, no install, no internet)
gpu-check:
	bash benchmarks/gpu_check.sh

gpu-fidelity:
	bash benchmarks/gpu_fidelity.sh

gpu-prepare:
	bash benchmarks/gpu_prepare.sh

clean:
	rm -rf $(VENV) runs *.egg-info
