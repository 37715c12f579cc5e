# One entry point for people and CI. `make test` works on a fresh machine with
# Python 3.11 and the PostgreSQL 15 server binaries (it installs the rest).
VENV   ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: install test rehearse bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt scripts/bootstrap
	scripts/bootstrap
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@

test: install
	$(PYTHON) -m pytest

# The whole separation on local PostgreSQL servers, checked against the seed's success criteria.
rehearse: install
	$(PYTHON) -m migrations rehearse $(ARGS)

# The copy benchmark: this engine against pg_dump/pg_restore, pgcopydb and a
# physical floor (README, "The copy benchmark"). Installs pgcopydb when root and
# missing; without it the benchmark says pgcopydb is absent. BENCH_ARGS="--size-mb 200" etc.
bench: install
	@command -v pgcopydb >/dev/null || { \
	  if [ "$$(id -u)" -eq 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgcopydb) \
	      || echo "bench: could not install pgcopydb; it will be reported absent" >&2; \
	  else echo "bench: pgcopydb is not installed (not root, so not installing it); it will be reported absent" >&2; fi; }
	$(PYTHON) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
