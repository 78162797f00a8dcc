# Two commands do everything on a fresh machine with Python 3.11: `make run`, `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock requirements-dev.lock pyproject.toml | cksum | cut -d' ' -f1)
TRANSLATIONS := gateway/translations

.PHONY: run test test-embedded bench install translations babel-extract babel-update babel-compile lock clean

run: install translations
	$(BIN)/microblog run

# The whole suite. tests/preflight.py first makes sure RabbitMQ (with its management API) and
# PostgreSQL are there (it enables the management plugin when it can), or stops and says what to run.
test: install translations
	$(BIN)/python -m tests.preflight
	$(BIN)/pytest $(PYTEST_ARGS)

# Only the tests that need neither RabbitMQ nor PostgreSQL: the others are deselected on purpose.
test-embedded: install translations
	$(BIN)/pytest -m "not real" $(PYTEST_ARGS)

# Benchmarks print figures (they need RabbitMQ with its management API, and PostgreSQL).
bench: install
	$(BIN)/python -m bench.send_bench $(BENCH_ARGS)

install: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

# Compiled catalogs (.mo) are build output: made from the .po files, never committed.
translations: babel-compile

babel-compile: install
	$(BIN)/pybabel compile --use-fuzzy -d $(TRANSLATIONS)

# For translators: pull new strings out of the code, then merge them into each catalog.
babel-extract: install
	$(BIN)/pybabel extract -F gateway/babel.cfg -k _l -o gateway/messages.pot gateway

babel-update: babel-extract
	$(BIN)/pybabel update -i gateway/messages.pot -d $(TRANSLATIONS)

# Re-pin every dependency after changing pyproject.toml: requirements.lock is what the
# services need to run (the image installs only it), requirements-dev.lock adds the test
# tools on top (what `make install` puts in .venv).
LOCK_VENV := /tmp/microblog-lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet . "setuptools>=75" wheel
	$(LOCK_VENV)/bin/pip freeze --all --exclude pip --exclude microblog-services > requirements.lock
	$(LOCK_VENV)/bin/pip install --quiet -c requirements.lock ".[test]"
	{ sed -n '1,2p' requirements-dev.lock; echo "-r requirements.lock"; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude pip --exclude microblog-services | grep -vxFf requirements.lock; \
	} > requirements-dev.lock.new && mv requirements-dev.lock.new requirements-dev.lock

clean:
	rm -rf $(VENV) data build *.egg-info
