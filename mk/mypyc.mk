# The optional mypyc build of the hot modules (passt/compiled.py,
# tools/build_mypyc.py): C extensions in $(BUILD)/mypyc/<source hash>, never
# in the source tree, used only with PASST_MYPYC=$(BUILD)/mypyc in the
# environment.  Pure Python stays the default and the fallback.
#
#   make mypyc         build it (about a minute; cached by source hash)
#   make check-mypyc   build it, then check that the compiled modules load and
#                      pass the TCP core's unit tests, header prediction's
#                      differential test included (part of `make check`)
#   make bench-ab AB_ARGS='--mypyc build/mypyc --only tcp_rr_tap,tcp_crr_tap'
#                      pure Python against the build, alternately
#
# mypyc comes with mypy (the lint extra); it needs a C compiler and the
# Python headers, and setuptools to drive the compiler.
APT_EXTRA_DEPS += gcc python3-dev
PIP_EXTRA_DEPS += setuptools
MYPYC_OUT ?= $(BUILD)/mypyc

.PHONY: mypyc check-mypyc
mypyc: deps
	$(PYTHON) tools/build_mypyc.py --out $(MYPYC_OUT)

check-mypyc: mypyc
	PASST_MYPYC=$(abspath $(MYPYC_OUT)) $(PYTEST) -q -p no:cacheprovider \
		test/unit/test_compiled.py test/unit/tcp/test_tcp_core.py test/unit/tcp/test_tcp_core_sim.py \
		test/unit/tcp/test_tcp_core_fastpath.py

CHECK_PREREQS += check-mypyc
