# pasta's namespaces and host discovery (passt/host/netns.py, passt/host/hostnet.py).
# The rootless tests in test/e2e/test_pasta_ns.py run our code as an
# unprivileged user under Debian's python3 (pyenv's lives under /root, closed
# to other users), which needs its own pyroute2; setpriv, nsenter and unshare
# come with util-linux, useradd with passwd.
APT_EXTRA_DEPS += python3-pyroute2 python3-numpy util-linux passwd
