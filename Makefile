# passt and pasta in Python.  `make check` installs what it needs and runs
# every test; `make bench` compares us with upstream; see README.md.
#
# Concerns that need their own targets keep them in mk/*.mk (guest image,
# packaging, benchmarks...), so that this file stays a table of contents.

PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
export PYTHONDONTWRITEBYTECODE := 1

# Python: Debian 12 refuses `pip install` into its own interpreter (PEP 668),
# so the tests run in a virtual environment, $(VENV), made from the system's
# python3 with --system-site-packages: Debian's python3-pyroute2 (from apt;
# the tests check passt/host/rtnl.py's decoding with it) serves it, and pip adds what Debian's
# python3 lacks (the test tools; NumPy, unless python3-numpy is installed).
# Our package is not installed into it: PYTHONPATH names this tree, so the
# tests (and the programs they start with sys.executable) always run the
# code checked out here.
SYSTEM_PYTHON ?= python3
VENV          ?= $(BUILD)/venv
PYTHON        ?= $(abspath $(VENV))/bin/python
PYTEST        ?= $(PYTHON) -m pytest
export PYTHONPATH := $(CURDIR)
# NumPy is optional (faster checksums): pip puts it in the environment.
APT_VENV_DEPS := python3-venv python3-pyroute2 iproute2
# The project's dependencies and its test and lint extras, as pyproject.toml lists them.
PIP_DEPS = $(shell $(SYSTEM_PYTHON) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	extra = p["optional-dependencies"]; print(" ".join(repr(d) for d in p["dependencies"] + extra["test"] + extra["lint"]))')

# Debian packages the tests drive for real (upstream C passt/pasta and
# slirp4netns for comparison, QEMU for guests, iperf3/socat for traffic).
APT_TEST_DEPS := passt slirp4netns iperf3 socat qemu-system-x86 qemu-utils \
	busybox-static cpio tshark iproute2 procps psmisc kmod \
	groff man-db

# Fragments first: they add to the *_PREREQS and *_DEPS variables that the
# rules below expand when make reads them.
.DEFAULT_GOAL := all
include $(sort $(wildcard mk/*.mk))

.PHONY: demo all venv deps check unit e2e lint types bench fuzz install uninstall clean

all:
	$(SYSTEM_PYTHON) -m compileall -q passt

# The virtual environment, with what `make demo` needs (idempotent).
venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	mkdir -p $(BUILD)
	$(call apt_install,$(APT_VENV_DEPS))
	$(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	touch $@

# Install everything the tests need, by package name (idempotent).
deps: $(BUILD)/.deps-stamp
$(BUILD)/.deps-stamp: $(VENV)/.stamp pyproject.toml Makefile $(wildcard mk/*.mk)
	$(call apt_install,$(APT_TEST_DEPS) $(APT_EXTRA_DEPS))
	$(PYTHON) -m pip install -q $(PIP_DEPS) $(PIP_EXTRA_DEPS)
	touch $@

# apt-get install, quietly unless it fails.
define apt_install
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$(1) >$(BUILD)/apt.log 2>&1 || { tail -20 $(BUILD)/apt.log; exit 1; }
endef

unit: deps
	$(PYTEST) -q test/unit

e2e: deps $(E2E_PREREQS)
	$(PYTEST) -q -m e2e test/e2e

# TESTS: what to run (all of test/ unless told otherwise).
TESTS ?= test
check: deps $(E2E_PREREQS) $(CHECK_PREREQS)
	$(PYTEST) -q -p no:cacheprovider $(TESTS) $(CHECK_EXTRA_ARGS)

lint: deps
	$(PYTHON) -m ruff check passt test

types: deps
	$(PYTHON) -m mypy passt

clean:
	rm -rf $(BUILD) *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +


# The README's first command: pasta runs a command in a new namespace that
# reaches an HTTP server on the host's loopback (tools/demo.sh).
demo: venv
	PYTHON=$(PYTHON) tools/demo.sh
