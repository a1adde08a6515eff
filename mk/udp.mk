# UDP over the tap (passt/udp/tap.py): unit tests build frames with scapy; the
# end-to-end tests (test/e2e/test_udp_pasta.py) drive socat and iperf3 and
# enter pasta's namespace with nsenter (util-linux).  Listed here so that
# they stay even if other fragments or APT_TEST_DEPS change.
PIP_EXTRA_DEPS += scapy
APT_EXTRA_DEPS += socat iperf3 util-linux
