"""The host: addresses and routes, namespaces, isolation, seccomp, daemonizing."""
