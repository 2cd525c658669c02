# The set-up commands of the README: `make serve`, `make test` (quick) and `make test-all` (everything).
# They create the virtual environment on first use, so a fresh machine needs nothing else.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: serve test test-slow test-all lint format warmup

# Quiet: pip prints only warnings and errors. The last step compiles the motion engine's Numba kernels
# into their on-disk cache (cache=True), so the first `make serve` is ready in seconds, not a minute.
$(STAMP): pyproject.toml
	@echo "v1motion: creating $(VENV) and installing (a few minutes the first time)"
	@python3 -m venv $(VENV)
	@$(PIP) install -q --upgrade pip
	@$(PIP) install -q -e '.[dev]'
	@$(MAKE) --no-print-directory warmup
	@touch $(STAMP)

warmup:
	@echo "v1motion: compiling the motion engine's kernels once (cached for every later start)"
	@$(PY) -c "from v1motion.models.motion.engine import compile_kernels; compile_kernels()"

serve: $(STAMP)
	$(VENV)/bin/v1motion serve

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The quick set: everything not marked slow or deadline (a couple of minutes on two cores).
test: lint
	$(PY) -m pytest -q -m "not slow and not deadline"

# The slow tests and the wall-clock deadline tests; pytest's exit code 5 ("no tests collected") is not a failure here.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow or deadline"; status=$$?; [ $$status -eq 5 ] || exit $$status

# Everything: lint, the quick set and the slow tests, in one pytest run.
test-all: lint
	$(PY) -m pytest -q

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
