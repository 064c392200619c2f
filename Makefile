# Every target creates .venv when it is missing and installs sesh with its test dependencies into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all test lint pytest demo bench bench-deps bench-store bench-balancer bench-msm bench-cluster clean

all: test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest -q

test: lint pytest

demo: $(STAMP)
	$(PY) sesh.py demo

bench: bench-store bench-balancer bench-msm bench-cluster

bench-deps:
	bash .ci/debian-deps bench

bench-store: $(STAMP) bench-deps
	$(PY) bench/store.py

bench-balancer: $(STAMP) bench-deps
	$(PY) bench/balancer.py

bench-msm: $(STAMP) bench-deps
	$(PY) bench/msm.py

bench-cluster: $(STAMP) bench-deps
	$(PY) bench/cluster.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
