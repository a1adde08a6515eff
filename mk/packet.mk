# Packet core (passt/packet.py, passt/checksum.py).
# scapy is the independent reference the unit tests compare our frames and
# checksums with (test/unit/test_packet.py).
PIP_EXTRA_DEPS += scapy

.PHONY: bench-checksum
# Checksum methods side by side, and 64 KiB TCP frame parse/build timings.
bench: bench-checksum
bench-checksum:
	$(PYTHON) bench/bench_checksum.py
