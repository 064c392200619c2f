# Every target creates .venv when it is missing and installs sesh with its test dependencies into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all test test-fast deps lint pytest demo bench bench-deps bench-node bench-store bench-balancer bench-msm bench-cluster bench-topology mypyc test-mypyc mypyc-clean clean

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

bench: bench-node bench-store bench-balancer bench-msm bench-cluster bench-topology

bench-deps:
	bash .ci/debian-deps bench

# One node's demo page beside one Tomcat 10 serving the same JSP, and msm non-sticky's cost over local.
bench-node: $(STAMP) bench-deps
	$(PY) bench/node.py

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

# Optional: compile the pure modules with mypyc (ships with mypy) into extension modules next to their .py
# files, which Python then imports instead (about 12% fewer instructions per request on a local-mode node,
# 8% on a non-sticky msm node; the store's codec and storage: a get's Python work 5.0 -> 3.4 us, a set's
# 9.5 -> 5.0). The .py files stay the source: after editing one, run `make mypyc` again
# (or `make mypyc-clean` to go back to pure Python). `make test` runs on whichever is in place.
MYPYC_MODULES := sesh/protocol/http.py sesh/protocol/session_ref.py \
	sesh/core/delta.py sesh/core/ids.py sesh/core/manager.py sesh/core/mapping.py sesh/core/session.py \
	sesh/protocol/memcache.py sesh/protocol/memcache_events.py sesh/protocol/memcache_numbers.py \
	sesh/store/storage.py sesh/store/commands.py
mypyc: $(STAMP)
	$(VENV)/bin/mypyc $(MYPYC_MODULES)

# The pure and loopback tiers again on the mypyc build, compiled in a scratch copy (the checkout stays as it is).
test-mypyc: $(STAMP)
	bash .ci/test-mypyc $(MYPYC_MODULES)

mypyc-clean:
	rm -rf build *__mypyc*.so
	find sesh -name '*.so' -delete

clean: mypyc-clean
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
