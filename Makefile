# FillProbRollout operator. `make help` lists the targets.
SHELL := /bin/bash
PY := .venv/bin/python
export GOTOOLCHAIN := local

.PHONY: help venv test test-unit test-integration test-e2e chaos lint-imports testbed-build testbed-up testbed-down images run demo chart-crds

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q -e '.[test]'
	touch $@

venv: .venv/.installed ## create the project venv with pinned dependencies

lint-imports: venv ## the pure domain imports no kopf/kubernetes/prometheus client
	.venv/bin/lint-imports

test-unit: venv ## fast pure tests
	$(PY) -m pytest tests/unit -q

test-integration: venv ## kopf handlers against fakes
	$(PY) -m pytest tests/integration -q

# The e2e tier in two runs: first every test that shares nothing, side by side on E2E_WORKERS
# pytest-xdist workers (each in its own namespace, with its own operator; 0 = one process),
# then the `serial` ones alone (tests/e2e/conftest.py lists them and why). Both always run;
# the tier fails when either does. The chaos test's CI variants run in both (a small count);
# its whole run is `make chaos`.
E2E_WORKERS ?= 3
E2E_PARALLEL = $(PY) -m pytest tests/e2e -q -m "not serial and not chaos" -n $(E2E_WORKERS) --dist worksteal
E2E_SERIAL = $(PY) -m pytest tests/e2e -q -m "serial and not chaos"
E2E = rc=0; $(E2E_PARALLEL) || rc=$$?; $(E2E_SERIAL) || rc=$$?; exit $$rc

test-e2e: venv ## needs the testbed (make testbed-up) or KUBECONFIG; E2E_WORKERS=3 side by side
	$(E2E)

test: venv lint-imports testbed-build ## unit, integration and e2e tiers (builds and brings the testbed up if needed)
	$(PY) -m pytest tests/unit tests/integration -q -n 2
	./testbed/up.sh
	$(E2E)

# Chaos (issue 9): the whole ceremony (ladder to AutoThreshold, a CB trip, an R1 alert) undisturbed,
# then again while the operator is kill -9ed CHAOS_KILLS times at seeded random moments (a quarter
# right after a status write, by tests/e2e/chaos_operator.py) and the API server and the rollout's
# Prometheus restart a few times; equal env, status and history, 0 extra restarts (the figures are
# printed). Restarts the testbed's API server: run it alone (~15 min). CHAOS_SEED=N replays a run.
CHAOS_KILLS ?= 36
CHAOS_APISERVER_RESTARTS ?= 3
CHAOS_PROMETHEUS_RESTARTS ?= 3
chaos: venv ## kill -9 the operator 36 times across a ceremony, restart the API server and Prometheus; needs the testbed, alone (~15 min; CHAOS_SEED=N replays)
	CHAOS_KILLS=$(CHAOS_KILLS) CHAOS_APISERVER_RESTARTS=$(CHAOS_APISERVER_RESTARTS) \
	CHAOS_PROMETHEUS_RESTARTS=$(CHAOS_PROMETHEUS_RESTARTS) CHAOS_SEED=$(CHAOS_SEED) \
	  $(PY) -m pytest tests/e2e/test_chaos.py -m chaos -q -s

# Performance (issue 10): N real rollouts on the testbed, steady state and detection, one table
# (docs/performance.md). Needs the testbed up and nothing else on it; about 30 min for the defaults.
BENCH_SIZES ?= 1,10,100,300
bench: venv ## N=1,10,100,300 real rollouts on the testbed: CPU, RSS, requests, queries, loop lag, detection (figures, no verdict)
	set -a; . ./.testbed/env; set +a; $(PY) scripts/bench.py --sizes $(BENCH_SIZES) $(BENCH_ARGS)

testbed-build: ## build the testbed's binaries into .testbed/cache (first time: minutes)
	./testbed/build.sh

# The images the testbed's node runs, built here (no registry): OCI archives in .testbed/images,
# rebuilt only when their inputs change; imported into the testbed's containerd when it runs
# (testbed-up imports them too). The same archives load into kind: kind load image-archive FILE.
images: ## build the operator, simulator, pause and CoreDNS images (buildah) and import them
	./testbed/images.sh build
	@if [ -S .testbed/run/containerd/containerd.sock ]; then \
	  ./testbed/images.sh import .testbed/run/containerd/containerd.sock; \
	else echo "images: the testbed is not up; make testbed-up imports them"; fi

testbed-up: venv ## start the local cluster, Prometheus and Alertmanager
	./testbed/up.sh

testbed-down: ## stop everything the testbed started and remove what its node made
	./testbed/down.sh

# FILLPROB_NAMESPACES=a,b watches those namespaces, else all. Without KUBECONFIG set, the
# testbed's .testbed/env (KUBECONFIG, PROMETHEUS_URL) is used when present.
run: venv ## run the operator against the current KUBECONFIG (FILLPROB_NAMESPACES=a,b to limit)
	@if [ -z "$${KUBECONFIG:-}" ] && [ -f .testbed/env ]; then . ./.testbed/env; fi; \
	scope="--all-namespaces"; \
	if [ -n "$${FILLPROB_NAMESPACES:-}" ]; then \
	  scope=$$(printf -- '--namespace %s ' $$(echo "$$FILLPROB_NAMESPACES" | tr ',' ' ')); \
	fi; \
	echo "kopf run -m fillprob_operator.handlers $$scope (KUBECONFIG=$${KUBECONFIG:-~/.kube/config})"; \
	exec .venv/bin/kopf run -m fillprob_operator.handlers $$scope

chart-crds: ## copy crds/ into the chart (CI fails when they differ)
	./scripts/sync-chart-crds.sh

# The README's first command. From a fresh machine: venv, testbed build (first time ~22 min,
# later a cache check), images, testbed up, then scripts/demo.py (a few minutes): the operator installed
# with helm walks the example grinder up to AutoThreshold, a CB trip is rolled back (R3).
# Re-running cleans the demo namespace first; the testbed stays up (make testbed-down).
demo: ## install the operator on the testbed, walk a grinder to AutoThreshold, trip the CB, watch R3
	@if [ ! -x .testbed/cache/bin/kube-apiserver ] || [ ! -x .testbed/cache/bin/helm ]; then \
	  echo "demo: building the testbed first (cold: ~22 min on 2 cores, mostly Go builds; progress below)"; fi
	@# The venv installs beside the testbed build (its log: .testbed/cache/logs/venv.log).
	@mkdir -p .testbed/cache/logs; \
	( $(MAKE) --no-print-directory venv >.testbed/cache/logs/venv.log 2>&1 ) & venv_pid=$$!; \
	$(MAKE) --no-print-directory testbed-build; build_rc=$$?; \
	wait $$venv_pid; venv_rc=$$?; \
	if [ $$venv_rc -ne 0 ]; then echo "demo: make venv failed (exit $$venv_rc):"; tail -40 .testbed/cache/logs/venv.log; exit 1; fi; \
	exit $$build_rc
	@$(MAKE) --no-print-directory testbed-up
	$(PY) scripts/demo.py
