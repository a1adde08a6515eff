#!/usr/bin/env bash
# The README's first command: pasta starts a command in a new network
# namespace, and that command reaches a service on the host's loopback.
#
# A small HTTP server listens on the host's 127.0.0.1 only.  Inside the
# namespace, the command fetches a page from it twice:
#   - through the gateway address, which pasta maps to the host's loopback
#     (tap path: the namespace's TCP segments become host socket calls);
#   - through the namespace's own loopback, forwarded with -T to the host's
#     loopback (spliced path: bytes moved by splice(2), never copied).
# Nothing leaves the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PORT=${PORT:-8089}
dir=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$dir"' EXIT
echo "Hello from the host's loopback, served to a pasta namespace." >"$dir/index.html"
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$dir" "$PORT" >/dev/null 2>&1 &
server=$!
# Wait until the server listens: a refused connection is the expected
# answer until then, not an error to print.
for _ in $(seq 100); do
	"$PYTHON" - "$PORT" <<'PY' && break
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
except OSError:
    sys.exit(1)
PY
	sleep 0.1
done

# pasta from this tree (PYTHONPATH, set by the Makefile), as its launcher runs it.
"$PYTHON" -c 'from passt.cli import main_pasta; main_pasta()' --config-net -T "$PORT" -t none -u none -U none -- \
	"$PYTHON" - "$PORT" <<'PY'
import socket, subprocess, sys, urllib.request

port = int(sys.argv[1])
route = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True, text=True)
gateway = route.stdout.split()[2] if route.stdout.split()[:1] == ["default"] else None
print("inside the namespace:")
print(subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout)
targets = [("the namespace's loopback (spliced, -T)", "127.0.0.1")]
if gateway:
    targets.insert(0, (f"the gateway {gateway} (mapped to the host's loopback)", gateway))
for what, host in targets:
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as reply:
        print(f"via {what}: {reply.read().decode().strip()}")
PY
