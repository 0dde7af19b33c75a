# kvmlab on a fresh Debian 12: `make demo`, `make check` and `make test`.
# Each installs what it needs (Debian packages, a virtualenv, the guest) idempotently.
#   make check  the pure tier: linters, mypy, tests on recorded runs; no QEMU needed (~1 min)
#   make test   check, then the integration tier against real QEMU, libvirtd and NFS

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
APT_PKGS := qemu-system-x86 qemu-utils qemu-block-extra busybox-static cpio e2fsprogs poppler-utils \
            kmod util-linux procps apt \
            libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config gcc \
            nfs-ganesha nfs-ganesha-vfs rpcbind qemu-guest-agent chromium acl nbdkit fio lz4 zstd
# what the pure tier's own tests run besides Python: the PDF's printer and reader, nbdkit's
# command line (no QEMU among them)
PURE_APT := chromium poppler-utils nbdkit
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: all setup apt pyapt venv venv-libvirt guest qemu-builds libvirtd demo lint check integration test bench notebooks lab clean architecture

all: demo

setup: apt venv venv-libvirt guest

# Debian packages: install only those missing.  As root directly, otherwise through sudo.
# (pyapt: only what the virtualenv and the pure tier need, for `make check` on a machine
# without QEMU)
apt: APT_WANT = $(APT_PKGS)
pyapt: APT_WANT = $(PURE_APT)
apt pyapt:
	@missing=""; for p in $(APT_WANT); do \
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

$(VENV)/.installed: pyproject.toml | pyapt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "kvmlab needs Python >= 3.11"'
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# libvirt-python builds against libvirt-dev (an apt package): only for the integration tier
$(VENV)/.libvirt: $(VENV)/.installed | apt
	$(PY) -m pip install -q -e '.[libvirt]'
	touch $@

venv: $(VENV)/.installed

venv-libvirt: $(VENV)/.libvirt

guest: venv
	$(PY) -m kvmlab guest build

# QEMU builds beside the system's (data/qemu/<version>, Debian's backports; idempotent)
QEMU_BUILDS ?= 10.0
qemu-builds: venv
	@for v in $(QEMU_BUILDS); do $(PY) -m kvmlab qemu add $$v || exit 1; done

# a real libvirtd for the libvirt backend's tests (idempotent)
libvirtd: apt
	$(SUDO) tools/libvirt-up.sh

# JupyterLab in notebooks/ on localhost (as root JupyterLab needs --allow-root)
LAB_ARGS ?=
lab: setup
	cd notebooks && ../$(PY) -m jupyterlab --ServerApp.ip=127.0.0.1 --no-browser \
	  $(if $(SUDO),,--allow-root) $(LAB_ARGS)

demo: setup
	$(PY) -m kvmlab run notebooks/01_mirror_basic.ipynb

# linters and mypy over the package, the benchmarks and the notebook sources
lint: venv
	$(PY) -m ruff check kvmlab benchmarks notebooks tests
	$(PY) -m mypy kvmlab benchmarks notebooks
	$(VENV)/bin/lint-imports --no-cache

# the pure tier: QEMU's programs are shadowed by failing shims (tests/conftest.py)
check: lint
	KVMLAB_TIER=pure $(PY) -m pytest -m "not qemu" -q -p no:cacheprovider --durations=5 $(PYTEST_ARGS)

# the integration tier (tools/integration.sh).  Every test not marked `timing` runs in
# WORKERS pytest-xdist workers [rest] (tests that share libvirtd and /dev/shm in one worker,
# and those of the host's one NFS server in another: --dist loadgroup, xdist groups).  Then
# the tests whose verdict rests on timing (a stall, a rate, an outage window, the predictor:
# marked `timing`), ALONE_WORKERS (default 2) at a time [alone], and last, one at a time, the
# timing tests also marked `solo` [solo]: their verdict rests on how fast the guest's TCG
# vCPU writes, or on the sampler's pace.
# APART=1 (the default): as above.  APART= : [alone] side by side with [rest], one at a
# time, [rest] in an idle cpu cgroup (the NFS tests then in [alone]), but a timing verdict
# still flips now and then beside it (the README's Tests section has the runs).
# WORKERS=0: [rest] in one process.
WORKERS ?= 3
APART ?= 1
export APART
integration: setup venv-libvirt libvirtd qemu-builds
	@tools/integration.sh $(PY) $(WORKERS) $(PYTEST_ARGS)

test: check integration

# the layers picture in the README, drawn from the import contract and grimp's graph
architecture: venv
	$(PY) tools/architecture.py

# after editing notebooks/NN_name.py: refresh the paired .ipynb that papermill runs
notebooks: venv
	$(PY) -m jupytext --sync notebooks/[0-9]*.py

# side-by-side measurements -> benchmarks/RESULTS.md and results.json (~15 min)
bench: setup libvirtd
	$(PY) benchmarks/run.py

clean:
	rm -rf data/scratch data/runs
