# passt and pasta in Python.  `make check` installs what it needs and runs
# every test; `make bench` compares us with upstream; see README.md.
#
# Concerns that need their own targets keep them in mk/*.mk (guest image,
# packaging, benchmarks...), so that this file stays a table of contents.

PYTHON  ?= python3
PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
PYTEST  ?= $(PYTHON) -m pytest
export PYTHONDONTWRITEBYTECODE := 1

# Debian packages the tests drive for real (upstream C passt/pasta and
# slirp4netns for comparison, QEMU for guests, iperf3/socat for traffic).
APT_TEST_DEPS := passt slirp4netns iperf3 socat qemu-system-x86 qemu-utils \
	busybox-static cpio tshark iproute2 procps psmisc kmod \
	groff man-db

# Fragments first: they add to the *_PREREQS and *_DEPS variables that the
# rules below expand when make reads them.
.DEFAULT_GOAL := all
include $(sort $(wildcard mk/*.mk))

.PHONY: demo all deps check unit e2e lint types bench fuzz install uninstall clean

all:
	$(PYTHON) -m compileall -q passt

# Install everything the tests need, by package name (idempotent).
deps: $(BUILD)/.deps-stamp
$(BUILD)/.deps-stamp: pyproject.toml Makefile $(wildcard mk/*.mk)
	mkdir -p $(BUILD)
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$(APT_TEST_DEPS) $(APT_EXTRA_DEPS) >$(BUILD)/apt.log 2>&1 \
		|| { tail -20 $(BUILD)/apt.log; exit 1; }
	$(PYTHON) -m pip install -q -e '.[test,lint]' $(PIP_EXTRA_DEPS)
	touch $@

unit: deps
	$(PYTEST) -q test/unit

e2e: deps $(E2E_PREREQS)
	$(PYTEST) -q -m e2e test/e2e

check: deps $(E2E_PREREQS) $(CHECK_PREREQS)
	$(PYTEST) -q -p no:cacheprovider test $(CHECK_EXTRA_ARGS)

lint: deps
	$(PYTHON) -m ruff check passt test

types: deps
	$(PYTHON) -m mypy passt

clean:
	rm -rf $(BUILD) *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +


# The README's first command: pasta runs a command in a new namespace that
# reaches an HTTP server on the host's loopback (tools/demo.sh).
demo: $(BUILD)/.pip-stamp
	tools/demo.sh

$(BUILD)/.pip-stamp: pyproject.toml
	mkdir -p $(BUILD)
	$(PYTHON) -m pip install -q -e .
	touch $@
