# Every target creates .venv when it is missing and installs sesh with its test dependencies into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all test test-fast deps lint pytest demo bench bench-deps bench-store bench-balancer bench-msm bench-cluster bench-topology clean

all: test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check
	$(VENV)/bin/mypy

# Debian's reference programs (memcached, apache2, ...): installed when root, else their tests are skipped.
deps:
	bash .ci/debian-deps test --optional

pytest: $(STAMP) deps
	$(VENV)/bin/pytest -q

test: lint pytest

# The pure and loopback tiers only (no processes, no reference programs): seconds, for the edit loop.
test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "(pure or loopback) and not e2e and not interop"

# The whole topology (sesh up: balancer on :8000, two msm nodes, two stores) and its live dashboard
# (sesh top) in this terminal; members' logs go to the directory it names. q or Ctrl-C stops everything.
demo: $(STAMP)
	$(PY) sesh.py demo

bench: bench-store bench-balancer bench-msm bench-cluster bench-topology

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

# The whole topology beside apache2 + two clustered Tomcat 10 (bench-deps installs tomcat10 when root).
bench-topology: $(STAMP) bench-deps
	$(PY) bench/topology.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
