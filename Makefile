# vllm-fleet entry points.  `make lab` and `make test` are the two commands a
# newcomer needs; everything else is a building block of those two.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

VENV      ?= .venv
PY        := $(VENV)/bin/python
BIN       := $(VENV)/bin
LAB       ?= .lab
SUITES    ?= bookworm
# `default` (one node) is not in CI: the cluster scenario converges the same
# roles and runs its tests on cluster-node1 (molecule/cluster/tests/test_vllm_node.py).
SCENARIOS ?= cluster nvidia_driver
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export VLLM_FLEET_LAB_DIR := $(CURDIR)/$(LAB)
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help bootstrap venv images lab-assets lab lab-down lint unit molecule test bench clean

help:
	@echo "make lab       bring up the local lab and serve a completion through it"
	@echo "make test      lint + unit tests + Molecule scenarios ($(SCENARIOS))"
	@echo "make bench     measurements (prints tables; see bench/README.md)"
	@echo "make lab-down  remove the lab containers"

# Debian packages and a running Docker engine (as root on a bare Debian 12;
# nothing to do on a prepared machine).  .ci/run uses the same script.
bootstrap:
	scripts/bootstrap.sh

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# sslyze pins an older cryptography than ansible: it gets a venv of its own.
.venv-sslyze/.installed:
	python3 -m venv .venv-sslyze
	.venv-sslyze/bin/pip install --quiet sslyze==6.3.1
	touch $@

venv: $(VENV)/.installed .venv-sslyze/.installed

images:
	scripts/lab-images.sh $(SUITES)

# Wheelhouse + lock file for the vLLM CPU build, the tiny model, lab secrets.
lab-assets: venv
	scripts/lab-assets.sh $(LAB)

lab: bootstrap venv images lab-assets
	$(BIN)/ansible-playbook playbooks/lab/containers.yml
	$(BIN)/ansible-playbook -i inventories/lab playbooks/lab/secrets.yml
	$(BIN)/ansible-playbook -i inventories/lab playbooks/lab/pki.yml
	$(BIN)/ansible-playbook -i inventories/lab playbooks/lab/realtime.yml
	$(BIN)/ansible-playbook -i inventories/lab site.yml
	scripts/lab-completion.sh
	scripts/lab-monitoring.sh

lab-down: venv
	$(BIN)/ansible-playbook playbooks/lab/containers.yml -e lab_state=absent

lint: venv
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint --offline
	$(PY) scripts/role-docs.py --check

unit: venv
	$(BIN)/pytest -q tests/unit tests/preflight

molecule: venv images lab-assets
	@mkdir -p .cache/logs
	# CI keeps only the tail of its output: on a failure, end with the failed tasks.
	for s in $(SCENARIOS); do \
	  $(BIN)/molecule test -s $$s 2>&1 | tee .cache/logs/molecule-$$s.log \
	    || { $(PY) scripts/failed-tasks.py .cache/logs/molecule-$$s.log; exit 1; }; \
	done

test: bootstrap lint unit molecule

bench: bootstrap venv images lab-assets
	$(PY) bench/run.py --runs 3 --restarts 5
	$(BIN)/molecule create -s cluster && $(BIN)/molecule prepare -s cluster && $(BIN)/molecule converge -s cluster
	$(PY) bench/cluster.py --runs 5 --requests 100
	$(PY) bench/backup.py --runs 5 --playbook-runs 1
	$(PY) bench/rollout.py --runs 3
	$(BIN)/molecule destroy -s cluster

clean: lab-down
	rm -rf $(LAB) .cache
