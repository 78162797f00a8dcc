# Two commands do everything on a fresh machine with Python 3.11: `make run`, `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
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
	$(BIN)/python -m pip install --quiet -r requirements.lock
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

# Re-pin every dependency after changing pyproject.toml.
lock:
	rm -rf /tmp/microblog-lock-venv && $(PYTHON) -m venv /tmp/microblog-lock-venv
	/tmp/microblog-lock-venv/bin/pip install --quiet ".[test]" "setuptools>=75" wheel
	/tmp/microblog-lock-venv/bin/pip freeze --all --exclude pip --exclude microblog-services > requirements.lock

clean:
	rm -rf $(VENV) data build *.egg-info
