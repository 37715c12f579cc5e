# One entry point for people and CI. `make test` works on a fresh machine with
# Python 3.11 and the PostgreSQL 15 server binaries (it installs the rest).
VENV   ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: install test rehearse clean

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

clean:
	rm -rf $(VENV) .pytest_cache
