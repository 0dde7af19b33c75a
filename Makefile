# kvmlab: two commands on a fresh Debian 12 -- `make demo` and `make test`.
# Both install what is missing (Debian packages, a virtualenv, the guest) idempotently.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
APT_PKGS := qemu-system-x86 qemu-utils qemu-block-extra busybox-static cpio e2fsprogs \
            kmod util-linux procps apt \
            libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config gcc \
            nfs-ganesha nfs-ganesha-vfs rpcbind qemu-guest-agent chromium
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: all setup apt venv guest libvirtd demo test bench clean

all: demo

setup: apt venv guest

# Debian packages: install only those missing.  As root directly, otherwise through sudo.
apt:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then missing="$$missing python3-venv"; fi; \
	if ! $(PYTHON) -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null; \
	  then missing="$$missing python3-dev"; fi; \
	if [ -n "$$missing" ]; then \
	  if [ -n "$(SUDO)" ]; then echo "kvmlab: installing Debian packages:$$missing (through sudo, it may ask for your password)"; \
	  else echo "kvmlab: installing Debian packages:$$missing"; fi; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "kvmlab: Debian packages present"; fi

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "kvmlab needs Python >= 3.11"'
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,libvirt]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

guest: venv
	$(PY) -m kvmlab guest build

# a real libvirtd for the libvirt backend's tests (idempotent)
libvirtd: apt
	$(SUDO) tools/libvirt-up.sh

demo: setup
	$(PY) -m kvmlab run notebooks/01_mirror_basic.ipynb

test: setup libvirtd
	$(PY) -m mypy kvmlab benchmarks
	$(PY) -m pytest -v --durations=15 $(PYTEST_ARGS)

# side-by-side measurements -> benchmarks/RESULTS.md and results.json (~15 min)
bench: setup libvirtd
	$(PY) benchmarks/run.py

clean:
	rm -rf data/scratch data/runs
