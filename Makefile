# The set-up commands of the README: `make serve`, `make test` (quick) and `make test-all` (everything).
# They create the virtual environment on first use, so a fresh machine needs nothing else.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: serve test test-slow test-all lint format warmup vendor-docs

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

# The quick set: everything not marked slow or deadline (about ten minutes on two cores).
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

# The API docs' pages (/docs: Swagger UI, /redoc: ReDoc) load these from web/vendor/, never from a CDN,
# so they work offline and no third-party script sees the token typed into them. This target fetches
# the pinned npm packages again, checks them against their registry checksums (sha512, hex) and
# replaces the committed copies.
SWAGGER_UI := 5.35.0
SWAGGER_UI_SHA512 := 534eaba4cb56f55dd73c638179a993512af4674f63317e0826e00da44fc465b021c341bc0a0c2bcd4e18997927fe1d3008336c5dd19aad334d1c2dec53cc9551
REDOC := 2.5.4
REDOC_SHA512 := 33a8d6846d6aa019c7e93166cc99ecb72099f3b1e6398fd4cc39bbf261e262284476557f61c4bda203a8d4d94496724c78bb32c4715edb215ce2c3631d3ac005
NPM := https://registry.npmjs.org
# ReDoc's footer loads its maker's logo from their CDN: the page's policy blocks it (a console error),
# and the docs must not reach out; an empty image instead, which ReDoc hides.
REDOC_LOGO := https://cdn.redoc.ly/redoc/logo-mini.svg

vendor-docs:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && set -e && \
	curl -fsSL $(NPM)/swagger-ui-dist/-/swagger-ui-dist-$(SWAGGER_UI).tgz -o $$tmp/swagger-ui.tgz && \
	curl -fsSL $(NPM)/redoc/-/redoc-$(REDOC).tgz -o $$tmp/redoc.tgz && \
	echo "$(SWAGGER_UI_SHA512)  $$tmp/swagger-ui.tgz" | sha512sum -c --quiet - && \
	echo "$(REDOC_SHA512)  $$tmp/redoc.tgz" | sha512sum -c --quiet - && \
	mkdir -p $$tmp/s $$tmp/r web/vendor/swagger-ui web/vendor/redoc && \
	tar -xzf $$tmp/swagger-ui.tgz -C $$tmp/s && tar -xzf $$tmp/redoc.tgz -C $$tmp/r && \
	cd $$tmp/s/package && cp LICENSE NOTICE swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt \
	  swagger-ui.css $(CURDIR)/web/vendor/swagger-ui/ && \
	cd $$tmp/r/package && cp LICENSE bundles/redoc.standalone.js bundles/redoc.standalone.js.LICENSE.txt \
	  $(CURDIR)/web/vendor/redoc/ && \
	sed -i 's|$(REDOC_LOGO)|data:,|' $(CURDIR)/web/vendor/redoc/redoc.standalone.js && \
	echo "v1motion: web/vendor/ has swagger-ui-dist $(SWAGGER_UI) and redoc $(REDOC)"
