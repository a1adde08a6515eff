# Distribution packaging: manual pages, confinement profiles, make install /
# uninstall, a Debian package and an RPM.
#
#   make man         build/man/passt.1, pasta.1 from doc/man/*.in and the
#                    option table in passt/conf.py (tools/genman.py)
#   make profiles    parse the AppArmor profiles (apparmor_parser -Q -K, no
#                    kernel needed) and compile the SELinux modules with
#                    Debian's refpolicy devel tools; part of `make check`
#   make install     PREFIX (/usr/local), DESTDIR: programs, package, man
#                    pages, profiles, modules (tools/installtree.py, which
#                    keeps a manifest); `make uninstall` removes exactly that
#   make deb         build/deb/passt-py_VERSION_ARCH.deb: dpkg-buildpackage
#                    -us -uc (debian/: debhelper, pybuild-plugin-pyproject)
#                    in a copy of the tracked files, as from a clean clone,
#                    then lintian, which must report nothing above info
#                    (build/deb/lintian.log; overrides in debian/, each with
#                    its reason)
#   make rpm         build/rpm/RPMS/*/passt-py*.rpm: rpmbuild -bb of
#                    contrib/fedora/passt-py.spec, SELinux subpackage included
#
# The Debian package and Debian's own `passt`
# -------------------------------------------
# passt-py installs its programs as passt-py, pasta-py, pesto-py, qrap-py and
# passt-repair-py, its profiles as /etc/apparmor.d/usr.bin.passt-py (and
# pasta-py, passt-repair-py; where Debian's passt puts usr.bin.passt; the
# profiles are named passt-py..., so loading one never replaces Debian's), and
# registers them as alternatives for /usr/bin/passt, pasta, pesto, qrap and
# passt-repair.  Beside Debian's passt, whose files are real files at those paths, the alternatives stay
# registered but unlinked: both are installed, for comparison.  Without it,
# `passt` is ours.  It Provides passt (= 0.0~git20260716): the command line
# is that release's.
#
# test/e2e/test_installed.py installs the .deb with apt in a throw-away copy
# of this machine (an overlay of /, in private namespaces: the machine's own
# Debian passt stays untouched for the comparison tests other engineers may
# be running) and runs the end-to-end suite against it; and, with Debian's
# passt beside it, in a clean Debian 12 root (test/e2e/test_debian12.py).

SELINUX_DEVEL_MAKEFILE ?= /usr/share/selinux/devel/Makefile
INSTALL_PYTHON         ?= $(shell $(SYSTEM_PYTHON) -c 'import sys; print(sys.executable)')
PYSITEDIR              ?=
SOURCE_DATE_EPOCH      ?= $(shell git log -1 --format=%ct 2>/dev/null)
export SOURCE_DATE_EPOCH

# The profile tools; the .deb's dependencies (with these present, the
# installed-package test installs the .deb without downloading anything);
# the Debian package's build dependencies (debian/control), lintian; rpm.
APT_EXTRA_DEPS += apparmor selinux-policy-dev checkpolicy semodule-utils m4 \
	python3-numpy python3-pyroute2 \
	debhelper dh-python dh-apparmor pybuild-plugin-pyproject python3-all \
	python3-setuptools lintian rpm
CHECK_PREREQS  += profiles
# The Makefile's `check:` rule is read before this fragment, so the variable
# alone would come too late for it: name the prerequisite directly as well.
check: profiles

MAN_PAGES         := $(BUILD)/man/passt.1 $(BUILD)/man/pasta.1 $(BUILD)/man/pesto.1 \
	$(BUILD)/man/qrap.1 $(BUILD)/man/passt-repair.1
APPARMOR_PROFILES := apparmor/usr.bin.passt apparmor/usr.bin.pasta apparmor/usr.bin.passt-repair \
	apparmor/usr.bin.pesto
SELINUX_SOURCES   := $(wildcard selinux/*.te selinux/*.if selinux/*.fc)
SELINUX_MODULES   := $(BUILD)/selinux/passt.pp $(BUILD)/selinux/pasta.pp \
	$(BUILD)/selinux/passt-repair.pp $(BUILD)/selinux/pesto.pp
DEB_DIR           ?= $(BUILD)/deb
RPM_DIR           ?= $(BUILD)/rpm
PACKAGE_VERSION    = $(shell $(SYSTEM_PYTHON) -c 'import passt; print(passt.__version__)')

.PHONY: man profiles apparmor selinux deb rpm

all: man

man: $(MAN_PAGES)

# qrap's and passt-repair's pages are written by hand: they have no option table.
$(BUILD)/man/qrap.1: doc/man/qrap.1
	install -D -m 644 $< $@

$(BUILD)/man/passt-repair.1: doc/man/passt-repair.1
	install -D -m 644 $< $@

$(BUILD)/man/%.1: doc/man/%.1.in $(wildcard doc/man/*.roff) tools/genman.py $(wildcard passt/conf.py passt/pesto.py)
	$(SYSTEM_PYTHON) tools/genman.py $* $@

# `make check` installs the tools first (deps); `make install` only needs them.
profiles: deps apparmor selinux

# apparmor_parser always notes that it has no kernel interface for its cache:
# only other output is a problem.
apparmor:
	@for profile in $(APPARMOR_PROFILES); do \
		out=$$(apparmor_parser -Q -K -I apparmor -I /etc/apparmor.d $$profile 2>&1) \
			|| { echo "$$out"; echo "apparmor: $$profile does not parse"; exit 1; }; \
		out=$$(echo "$$out" | grep -v 'Cache read/write disabled'); \
		[ -z "$$out" ] || { echo "$$out"; echo "apparmor: $$profile: warnings"; exit 1; }; \
		echo "apparmor: $$profile parses"; \
	done

selinux: $(SELINUX_MODULES)

# The refpolicy devel Makefile runs m4, checkmodule and semodule_package; its
# warnings (deprecated interfaces) fail the build as errors do.  MAKEFLAGS is
# dropped so that our command-line variables do not leak into it.  It reads
# every installed interface file: those of an installed passt-py (the .deb
# ships them) would define ours twice, so they are left out.
SELINUX_HEADERS           = $(dir $(SELINUX_DEVEL_MAKEFILE))include
SELINUX_SYSTEM_INTERFACES = $(filter-out $(SELINUX_HEADERS)/contrib/passt.if \
	$(SELINUX_HEADERS)/contrib/pasta.if $(SELINUX_HEADERS)/contrib/passt-repair.if \
	$(SELINUX_HEADERS)/contrib/pesto.if,\
	$(wildcard $(SELINUX_HEADERS)/*/*.if))
$(SELINUX_MODULES) &: $(SELINUX_SOURCES)
	@test -f $(SELINUX_DEVEL_MAKEFILE) \
		|| { echo "selinux: $(SELINUX_DEVEL_MAKEFILE) missing (apt-get install selinux-policy-dev)"; exit 1; }
	rm -rf $(BUILD)/selinux && mkdir -p $(BUILD)/selinux
	cp $(SELINUX_SOURCES) $(BUILD)/selinux/
	cd $(BUILD)/selinux && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
		make -f $(SELINUX_DEVEL_MAKEFILE) header_interfaces='$(SELINUX_SYSTEM_INTERFACES)' \
		passt.pp pasta.pp passt-repair.pp pesto.pp >build.log 2>&1 \
		|| { cat build.log; echo "selinux: modules do not compile"; exit 1; }
	@! grep -i 'warning\|error' $(BUILD)/selinux/build.log \
		|| { echo "selinux: warnings above"; rm -f $(SELINUX_MODULES); exit 1; }
	@echo "selinux: $(SELINUX_MODULES) compiled"

install: man selinux
	$(SYSTEM_PYTHON) tools/installtree.py install --destdir '$(or $(DESTDIR),/)' \
		--prefix '$(PREFIX)' --python '$(INSTALL_PYTHON)' \
		--man-dir $(BUILD)/man --selinux-dir $(BUILD)/selinux \
		$(if $(PYSITEDIR),--sitedir '$(PYSITEDIR)')

uninstall:
	$(SYSTEM_PYTHON) tools/installtree.py uninstall --destdir '$(or $(DESTDIR),/)' --prefix '$(PREFIX)'

# The tracked files of this tree, as a clean clone has them (with their
# changes not committed yet), in $(1); outer make variables stay out of any
# make run there.
define source_copy
	rm -rf $(1) && mkdir -p $(1)
	git ls-files -z | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C $(1)
endef
# A distribution builds with its own interpreter: /usr/bin first on the PATH.
CLEAN_MAKE_ENV := env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u PYTHONPATH \
	PATH=/usr/sbin:/usr/bin:/sbin:/bin

deb:
	rm -rf $(DEB_DIR)
	$(call source_copy,$(DEB_DIR)/passt-py-$(PACKAGE_VERSION))
	cd $(DEB_DIR)/passt-py-$(PACKAGE_VERSION) && $(CLEAN_MAKE_ENV) \
		dpkg-buildpackage -us -uc >../build.log 2>&1 \
		|| { tail -40 ../build.log; echo "deb: dpkg-buildpackage failed"; exit 1; }
	lintian --fail-on error,warning --display-info $(DEB_DIR)/passt-py_*.changes \
		>$(DEB_DIR)/lintian.log 2>&1; status=$$?; cat $(DEB_DIR)/lintian.log; \
		[ $$status = 0 ] || { echo "deb: lintian reports errors or warnings"; exit 1; }
	@ls $(DEB_DIR)/*.deb

rpm:
	rm -rf $(RPM_DIR)
	$(call source_copy,$(RPM_DIR)/passt-py-$(PACKAGE_VERSION))
	tar -C $(RPM_DIR) -czf $(RPM_DIR)/passt-py-$(PACKAGE_VERSION).tar.gz passt-py-$(PACKAGE_VERSION)
	$(CLEAN_MAKE_ENV) rpmbuild -bb --nodeps --define '_topdir $(abspath $(RPM_DIR))' \
		--define '_sourcedir $(abspath $(RPM_DIR))' \
		contrib/fedora/passt-py.spec >$(RPM_DIR)/build.log 2>&1 \
		|| { tail -40 $(RPM_DIR)/build.log; echo "rpm: rpmbuild failed"; exit 1; }
	@ls $(RPM_DIR)/RPMS/*/*.rpm

# A stock Debian 12 root (debootstrap, minbase, plus make and git to clone
# and run the README's commands), made once and kept: test/e2e/test_debian12.py
# runs in copy-on-write overlays of it.  Its apt downloads are kept beside it
# too, so that later runs fetch no Debian package again.
DEBIAN12_DIR    ?= $(BUILD)/debian12
DEBIAN12_MIRROR ?= http://deb.debian.org/debian
APT_EXTRA_DEPS  += debootstrap

.PHONY: debian12-root
debian12-root: $(DEBIAN12_DIR)/.stamp
$(DEBIAN12_DIR)/.stamp:
	rm -rf $(DEBIAN12_DIR) && mkdir -p $(DEBIAN12_DIR)/archives/partial
	debootstrap --variant=minbase --include=make,git,ca-certificates \
		--cache-dir=$(abspath $(DEBIAN12_DIR))/archives \
		bookworm $(DEBIAN12_DIR)/root $(DEBIAN12_MIRROR) >$(DEBIAN12_DIR)/debootstrap.log 2>&1 \
		|| { tail -20 $(DEBIAN12_DIR)/debootstrap.log; exit 1; }
	touch $@
