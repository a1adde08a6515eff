# Distribution packaging: manual pages, confinement profiles, make install /
# uninstall, and a Debian package.
#
#   make man         build/man/passt.1, pasta.1 from doc/man/*.in and the
#                    option table in passt/conf.py (tools/genman.py)
#   make profiles    parse the AppArmor profiles (apparmor_parser -Q -K, no
#                    kernel needed) and compile the SELinux modules with
#                    Debian's refpolicy devel tools; part of `make check`
#   make install     PREFIX (/usr/local), DESTDIR: programs, package, man
#                    pages, profiles, modules (tools/installtree.py, which
#                    keeps a manifest); `make uninstall` removes exactly that
#   make deb         build/passt-py_VERSION-1_all.deb with dpkg-deb
#
# The Debian package and Debian's own `passt`
# -------------------------------------------
# Both install /usr/bin/passt, /usr/bin/pasta and /etc/apparmor.d/usr.bin.passt,
# so passt-py Conflicts/Replaces/Provides passt: installing it replaces
# upstream's C programs, which is what a user installing it wants.  But the
# test machine needs upstream's programs for the comparison tests, and other
# engineers run those at the same time.  So `make check` never installs the
# package on the machine itself: test/e2e/test_installed.py installs it with
# apt-get inside a throw-away copy of the machine, an overlay mount of / in a
# private mount namespace entered with chroot, and runs the programs (and the
# end-to-end suite, PASST_IMPL=installed) there.  The mounts disappear with
# the namespace, even if the test dies; the real /usr/bin/passt is untouched.

SELINUX_DEVEL_MAKEFILE ?= /usr/share/selinux/devel/Makefile
INSTALL_PYTHON         ?= $(shell $(SYSTEM_PYTHON) -c 'import sys; print(sys.executable)')
PYSITEDIR              ?=
SOURCE_DATE_EPOCH      ?= $(shell git log -1 --format=%ct 2>/dev/null)
export SOURCE_DATE_EPOCH

# The profile tools, and the .deb's dependencies: with these present, the
# installed-package test installs the .deb without downloading anything.
APT_EXTRA_DEPS += apparmor selinux-policy-dev checkpolicy semodule-utils \
	python3-numpy python3-pyroute2
CHECK_PREREQS  += profiles
# The Makefile's `check:` rule is read before this fragment, so the variable
# alone would come too late for it: name the prerequisite directly as well.
check: profiles

MAN_PAGES         := $(BUILD)/man/passt.1 $(BUILD)/man/pasta.1
APPARMOR_PROFILES := apparmor/usr.bin.passt apparmor/usr.bin.pasta
SELINUX_SOURCES   := $(wildcard selinux/*.te selinux/*.if selinux/*.fc)
SELINUX_MODULES   := $(BUILD)/selinux/passt.pp $(BUILD)/selinux/pasta.pp
DEB_VERSION        = $(shell $(SYSTEM_PYTHON) -c 'import passt; print(passt.__version__)')-1
DEB_ROOT          := $(BUILD)/deb-root

.PHONY: man profiles apparmor selinux deb

all: man

man: $(MAN_PAGES)

$(BUILD)/man/%.1: doc/man/%.1.in $(wildcard doc/man/*.roff) tools/genman.py $(wildcard passt/conf.py)
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
# dropped so that our command-line variables do not leak into it.
$(SELINUX_MODULES) &: $(SELINUX_SOURCES)
	@test -f $(SELINUX_DEVEL_MAKEFILE) \
		|| { echo "selinux: $(SELINUX_DEVEL_MAKEFILE) missing (apt-get install selinux-policy-dev)"; exit 1; }
	rm -rf $(BUILD)/selinux && mkdir -p $(BUILD)/selinux
	cp $(SELINUX_SOURCES) $(BUILD)/selinux/
	cd $(BUILD)/selinux && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
		make -f $(SELINUX_DEVEL_MAKEFILE) passt.pp pasta.pp >build.log 2>&1 \
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

# The staging tree is what `make install PREFIX=/usr` would write, for
# Debian's python3 (dist-packages, no manifest, no .pyc: postinst runs
# py3compile), plus the DEBIAN control files.  Files under /etc are conffiles.
deb: man selinux
	rm -rf $(DEB_ROOT)
	$(SYSTEM_PYTHON) tools/installtree.py install --package --destdir $(DEB_ROOT) \
		--prefix /usr --python /usr/bin/python3 \
		--man-dir $(BUILD)/man --selinux-dir $(BUILD)/selinux >/dev/null
	install -D -m 644 packaging/deb/copyright $(DEB_ROOT)/usr/share/doc/passt-py/copyright
	install -d $(DEB_ROOT)/DEBIAN
	install -m 755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm \
		$(DEB_ROOT)/DEBIAN/
	cd $(DEB_ROOT) && find etc -type f | sed 's|^|/|' | sort >DEBIAN/conffiles
	sed -e 's/@VERSION@/$(DEB_VERSION)/' \
		-e "s/@INSTALLED_SIZE@/$$(du -sk --exclude=DEBIAN $(DEB_ROOT) | cut -f1)/" \
		packaging/deb/control.in >$(DEB_ROOT)/DEBIAN/control
	rm -f $(BUILD)/passt-py_*.deb
	dpkg-deb --root-owner-group -Zxz --build $(DEB_ROOT) $(BUILD)/passt-py_$(DEB_VERSION)_all.deb
