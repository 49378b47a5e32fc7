# snapgroup: `make demo` and `make test` on a fresh Debian 12 machine, as root.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEB_PACKAGES := qemu-utils qemu-system-x86 libvirt-daemon-system libvirt-clients \
	libvirt-dev pkg-config busybox-static qemu-guest-agent e2fsprogs
STAMP_DEB := $(VENV)/.deb-stamp
STAMP_PY := $(VENV)/.py-stamp

.PHONY: all deps daemons guest demo test unit lab lint typecheck bench consistency clean

all: test

$(STAMP_DEB):
	@mkdir -p $(VENV)
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@touch $@

$(STAMP_PY): pyproject.toml $(STAMP_DEB)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

deps: $(STAMP_PY)

# Idempotent: starts only what is not running.
daemons: $(STAMP_DEB)
	@pgrep -x virtlogd >/dev/null || virtlogd -d
	@pgrep -x libvirtd >/dev/null || libvirtd -d
	@for i in $$(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && exit 0; sleep 0.2; done; \
		echo "libvirtd did not answer" >&2; exit 1

# The lab guest: a Debian cloud kernel + busybox initramfs with qemu-guest-agent.
guest: $(STAMP_DEB)
	$(PY) lab/build_guest.py --out build/guest

demo: deps daemons guest
	$(BIN)/python lab/demo.py

lint: deps
	$(BIN)/ruff check snapgroup tests lab
	$(BIN)/ruff format --check snapgroup tests lab

typecheck: deps
	$(BIN)/mypy

unit: deps
	$(BIN)/pytest -q -m "not lab"

test: deps daemons guest
	$(BIN)/ruff check snapgroup tests lab
	$(BIN)/mypy
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache
