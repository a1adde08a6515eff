# Isolation, hostile input and limits (issue 10): passt/host/isolation.py,
# passt/host/seccomp.py, fuzz/, test/*/test_isolation*, test_seccomp*,
# test/e2e/test_hostile*, test_limits*.
#
#   make fuzz        coverage-guided fuzzing of the frame path (atheris,
#                    fuzz/fuzz_frames.py) for FUZZ_SECONDS
#   make fuzz-short  the same for FUZZ_SHORT_SECONDS: part of `make check`
#
# Both start from a corpus of well-formed frames written by the target
# itself, kept (and grown by libFuzzer) in FUZZ_CORPUS; a finding is written
# next to it as fuzz-crash-* and fails the target.  The limit tests run the
# programs under prlimit (util-linux); the seccomp tests compare our system
# call table with the kernel's headers (linux-libc-dev); strace is how the
# allow-lists were derived (see host/isolation.py) and how to check them again.

PIP_EXTRA_DEPS += atheris
APT_EXTRA_DEPS += util-linux linux-libc-dev strace
CHECK_PREREQS  += fuzz-short

FUZZ_CORPUS        ?= $(BUILD)/fuzz-corpus
FUZZ_SECONDS       ?= 600
FUZZ_SHORT_SECONDS ?= 20
FUZZ_RUN            = $(PYTHON) fuzz/fuzz_frames.py $(FUZZ_CORPUS) -print_final_stats=1 \
	-artifact_prefix=$(BUILD)/fuzz- -max_total_time=

.PHONY: fuzz-short fuzz-seeds

fuzz-seeds: deps
	$(PYTHON) fuzz/fuzz_frames.py --write-seeds $(FUZZ_CORPUS)

fuzz: fuzz-seeds
	$(FUZZ_RUN)$(FUZZ_SECONDS)

fuzz-short: fuzz-seeds
	$(FUZZ_RUN)$(FUZZ_SHORT_SECONDS)
