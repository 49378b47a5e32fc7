# snapgroup: `make demo` and `make test` on a fresh Debian 12 machine, as root.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# snapgroup files/extract/mount: libguestfs's appliance reads guest filesystems
# (python3-guestfs, run by Debian's python3: adapters/guestfs_agent.py), guestmount for
# mount, libguestfs-xfs for XFS in the appliance, libguestfs-tools for
# libguestfs-make-fixed-appliance (make appliance) and guestfish (the bench's baseline).
FILES_PACKAGES := python3-guestfs guestmount libguestfs-xfs libguestfs-tools
DEB_PACKAGES := qemu-utils qemu-system-x86 libvirt-daemon-system libvirt-clients \
	libvirt-dev pkg-config busybox-static qemu-guest-agent e2fsprogs postgresql acl \
	$(FILES_PACKAGES)
# Where `make appliance` puts it; the adapter reads SNAPGROUP_APPLIANCE, same default.
APPLIANCE ?= /var/lib/snapgroup/appliance
STAMP_DEB := $(VENV)/.deb-stamp
STAMP_PY := $(VENV)/.py-stamp

.PHONY: all deps daemons postgres guest appliance demo test unit lab lint typecheck bench consistency clean

all: test

$(STAMP_DEB): Makefile
	@mkdir -p $(VENV)
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@touch $@

# Order-only on the Debian packages: a new one in the list does not reinstall the venv.
# editable_mode=compat: the tree on sys.path through a plain .pth entry, not an import
# hook (the hook costs every interpreter start, the daemon's client included, ~10 ms).
$(STAMP_PY): pyproject.toml | $(STAMP_DEB)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	@touch $@

deps: $(STAMP_PY)

# Idempotent: starts only what is not running.
daemons: $(STAMP_DEB)
	@pgrep -x virtlogd >/dev/null || virtlogd -d
	@pgrep -x libvirtd >/dev/null || libvirtd -d
	@for i in $$(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && exit 0; sleep 0.2; done; \
		echo "libvirtd did not answer" >&2; exit 1

# PostgreSQL for the store and engine tests (they run on SQLite AND PostgreSQL): Debian's
# cluster started if down, a test role and database made if missing (lab/postgres.py);
# its URL goes to build/postgres.url. Idempotent. SNAPGROUP_TEST_PG_URL set by the caller
# takes precedence.
postgres: $(STAMP_DEB)
	@mkdir -p build
	@$(PY) lab/postgres.py > build/postgres.url.new && mv build/postgres.url.new build/postgres.url
PG_ENV = SNAPGROUP_TEST_PG_URL="$${SNAPGROUP_TEST_PG_URL:-$$(cat build/postgres.url)}"

# The lab guest: a Debian cloud kernel + busybox initramfs with qemu-guest-agent.
guest: $(STAMP_DEB)
	$(PY) lab/build_guest.py --out build/guest

# The file browser's appliance: a fixed libguestfs appliance on the Debian cloud kernel
# (lab/build_appliance.py). Idempotent.
appliance: $(STAMP_DEB)
	$(PY) lab/build_appliance.py --out $(APPLIANCE)

demo: deps daemons guest appliance
	$(BIN)/python lab/demo.py

# Cross-disk ordering under load: 200 groups per mode of the running lab guest's writer
# vs a non-atomic baseline; prints the figures (lab/consistency.py).
consistency: deps daemons guest
	$(BIN)/python lab/consistency.py

# snapgroup next to virsh / qemu-img, ratios pair by pair (bench/run.py): prints the table,
# writes bench/results.json. BENCH_ARGS="--only create-live --runs 3" or "--quick".
bench: deps daemons guest appliance
	@# virtnbdbackup: the backup bench's baseline only (not a dependency of snapgroup)
	@dpkg-query -W -f='$${Status}' virtnbdbackup 2>/dev/null | grep -q "install ok installed" || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q virtnbdbackup; }
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: deps
	$(BIN)/ruff check snapgroup tests lab bench
	$(BIN)/ruff format --check snapgroup tests lab bench
	$(BIN)/lint-imports

typecheck: deps
	$(BIN)/mypy

unit: deps postgres
	$(PG_ENV) $(BIN)/pytest -q -m "not lab"

test: deps daemons guest appliance postgres
	$(BIN)/ruff check snapgroup tests lab bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	@# loadgroup: tests marked xdist_group share one worker (and its module fixture:
	@# tests/lab/test_files.py builds one lab VM and its guest filesystems, not three)
	$(PG_ENV) $(BIN)/pytest -q -n 3 --dist loadgroup -m "not serial"
	$(PG_ENV) $(BIN)/pytest -q -m serial

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache
