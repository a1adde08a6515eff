#!/bin/bash
# Fetch Debian 12's own kernel for the kernel matrix (test/e2e/test_kernels.py).
#
# Theory of operation: our users run pasta on Debian 12's 6.1 kernel, which
# lacks TCP SO_PEEK_OFF (6.9) and splices and answers netlink differently
# from the newer kernel of this machine.  The kernel matrix boots that
# kernel under QEMU with virtme-ng, which shares the host's root read-only,
# so the guest runs our Python code with the host's interpreter.  This
# script provides the kernel: the generic amd64 flavour (the cloud one has
# no 9p), the 6.1 version that bookworm's linux-image-amd64 depends on,
# fetched by package name with `apt-get download` and unpacked with
# dpkg-deb, never installed on the host.  The package carries no
# modules.dep, so `depmod -b` writes one: virtme-ng reads it to put the 9p
# and virtio modules in its initramfs, and the guest's modprobe reads it
# (tun, veth) once virtme-ng has bound the modules over /lib/modules.
#
# The tree is cached in OUTDIR/<kernel release>, keyed on the package's
# version: an unchanged key means nothing is fetched.
#
# Usage: test/kernel/fetch.sh [OUTDIR]     (default build/kernels)
# Output (last line): the path of the kernel image, OUTDIR/<rel>/boot/vmlinuz-<rel>
set -euo pipefail
# shellcheck source=../guest/unpack-package.sh
. "$(dirname "$0")/../guest/unpack-package.sh"

out=${1:-build/kernels}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# The newest 6.1 version of the meta-package, whatever backports offer.
meta_version() {
	apt-cache madison linux-image-amd64 2>/dev/null |
		awk -F' *[|] *' '$2 ~ /^6[.]1[.]/ { print $2 }' | sort -V | tail -1
}

meta=$(meta_version)
if [ -z "$meta" ]; then
	apt-get update -qq
	meta=$(meta_version)
fi
[ -n "$meta" ] || { echo "fetch.sh: no linux-image-amd64 6.1 in apt" >&2; exit 1; }

kpkg=$(apt-cache depends --important "linux-image-amd64=$meta" |
	awk '/Depends: linux-image-6[.]1[.]/ { print $2; exit }')
[[ $kpkg =~ ^linux-image-(6\.1\.[0-9]+-[0-9]+-amd64)$ ]] ||
	{ echo "fetch.sh: linux-image-amd64=$meta depends on '$kpkg', not a 6.1 amd64 kernel" >&2; exit 1; }
rel=${BASH_REMATCH[1]}
dir="$out/$rel"
key="$kpkg=$meta scripts=$(cat "$0" "$(dirname "$0")/../guest/unpack-package.sh" |
	sha256sum | cut -c1-16)"

if [ -f "$dir/key" ] && [ "$(cat "$dir/key")" = "$key" ]; then
	echo "kernel up to date: $dir"
	echo "$dir/boot/vmlinuz-$rel"
	exit 0
fi
echo "fetching $kpkg into $dir"

work=$(mktemp -d "$out/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
unpack_package "$kpkg" "$work/tree"
depmod -b "$work/tree" "$rel"
for m in 9p 9pnet_virtio virtio_pci overlay tun veth; do
	modprobe -d "$work/tree" -S "$rel" --show-depends "$m" >/dev/null ||
		{ echo "fetch.sh: module $m missing from $kpkg" >&2; exit 1; }
done
echo "$key" > "$work/tree/key"
rm -rf "$dir"
mv "$work/tree" "$dir"
echo "kernel fetched: $dir"
echo "$dir/boot/vmlinuz-$rel"
