# The two commands: `make demo` runs the demo county; `make test` runs every test.
# Both create the virtual environment in .venv and install the project first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=
# the suite's runs are mostly simulated time and waits on other processes: two workers
# (pytest-xdist, idle ones taking tests from the busy: worksteal) on two cores took 5.5 to
# 9.5 minutes on this project's machines, against 9.5 to 11.5 for one
TEST_WORKERS ?= 2

.PHONY: demo test lint typecheck clean bench bench-county bench-forecast bench-dispatch \
	bench-dispatch-quality bench-shards reliability

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vpp demo $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# The Modbus polling benchmark (not run in CI; about 5 minutes): docs/performance.md.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench.modbus_poll $(BENCH_ARGS)

# Forecasts of 200 series on 2 cores: short-term with fit, then ultra-short refresh
# (about 5 minutes).
bench-forecast: $(STAMP)
	$(BIN)/python -m bench.forecast_fleet $(BENCH_ARGS)

# One simulated day of a 100-device county against the controller (about 3 minutes).
bench-county: $(STAMP)
	$(BIN)/python -m bench.county_day $(BENCH_ARGS)

# The dispatch LP's build and solve times, 1 to 1,000 assets, full and aggregated (about
# 5 minutes): docs/performance.md.
bench-dispatch: $(STAMP)
	$(BIN)/python -m bench.dispatch_scale $(BENCH_ARGS)

# The simulator's scenarios with the optimal, perfect-foresight and reactive planners
# (about 20 minutes): docs/dispatch.md.
bench-dispatch-quality: $(STAMP)
	$(BIN)/python -m bench.dispatch_quality $(BENCH_ARGS)

# 10,000 simulated devices polled by 4 `vpp poll` shards through Mosquitto on 127.0.0.1:1883,
# consumed by one controller-side process (about 1.5 minutes): docs/performance.md.
bench-shards: $(STAMP)
	$(BIN)/python -m bench.shard_load --json bench/results/shard_load.json $(BENCH_ARGS)

# The fault matrix: every fault of docs/reliability.md done to a running demo county,
# measured, and the table written there (about 4 minutes).
reliability: $(STAMP)
	$(BIN)/vpp fault-matrix --out docs/reliability.md $(ARGS)
