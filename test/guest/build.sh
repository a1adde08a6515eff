#!/bin/bash
# Build the end-to-end test guest: a Debian cloud kernel and an initramfs.
#
# Theory of operation: the guest only has to boot fast under QEMU TCG and
# run iperf3, socat and busybox behind passt.  So the image is the kernel
# of Debian's linux-image-cloud-amd64 (fetched by package name with
# `apt-get download`, never committed), the eight virtio modules its network
# driver needs, and an uncompressed cpio initramfs (no decompression at boot)
# holding busybox-static, iperf3, socat and exactly the shared libraries
# `ldd` says they load.  The result lives in OUTDIR (default build/guest),
# keyed on the versions of every package that went in and on the contents
# of this directory: an unchanged key means nothing is rebuilt.
#
# Usage: test/guest/build.sh [OUTDIR]
# Output: OUTDIR/vmlinuz, OUTDIR/initramfs.cpio, OUTDIR/key
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=unpack-package.sh
. "$here/unpack-package.sh"
out=${1:-build/guest}
mkdir -p "$out"
out=$(cd "$out" && pwd)

MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
	virtio_pci failover net_failover virtio_net"
PROGRAMS="/usr/bin/iperf3 /usr/bin/socat"
BUSYBOX=/bin/busybox

kernel_package() {
	apt-cache depends --important linux-image-cloud-amd64 2>/dev/null |
		awk '/Depends: linux-image-/ && !k { k = $2 } END { print k }'
}

candidate_version() {
	apt-cache policy "$1" | awk '/Candidate:/ && !v { v = $2 } END { print v }'
}

installed_version() {
	dpkg-query -W -f '${Version}' "$1"
}

kpkg=$(kernel_package)
if [ -z "$kpkg" ]; then
	apt-get update -qq
	kpkg=$(kernel_package)
fi
[ -n "$kpkg" ] || { echo "build.sh: no linux-image-cloud-amd64 in apt" >&2; exit 1; }

key="$kpkg=$(candidate_version "$kpkg")"
for p in busybox-static iperf3 libiperf0 socat libc6 libssl3; do
	key="$key $p=$(installed_version "$p")"
done
key="$key scripts=$(cat "$here"/init "$here"/udhcpc.script "$here"/unpack-package.sh "$0" |
	sha256sum | cut -c1-16)"

if [ -f "$out/key" ] && [ "$(cat "$out/key")" = "$key" ] &&
   [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.cpio" ]; then
	echo "guest image up to date: $out ($kpkg)"
	exit 0
fi
echo "building guest image in $out: $key"

work=$(mktemp -d "$out/work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The kernel package, by name, from the registry.
unpack_package "$kpkg" "$work/kernel"
kver=${kpkg#linux-image-}
moddir="$work/kernel/lib/modules/$kver/kernel"

root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib/modules,etc,proc,sys,dev,tmp,run}

# busybox and its applets as symlinks, made here rather than at boot.
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$BUSYBOX" --list-full); do
	[ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done

# iperf3, socat and the libraries they load, at the paths ldd resolved.
for prog in $PROGRAMS; do
	cp "$prog" "$root/usr/bin/"
	for lib in $(ldd "$prog" | grep -o '/[^ ]*'); do
		mkdir -p "$root/$(dirname "$lib")"
		cp -L "$lib" "$root/$lib"
	done
done

for m in $MODULES; do
	found=$(find "$moddir" -name "$m.ko" -print -quit)
	[ -n "$found" ] || { echo "build.sh: module $m not in $kpkg" >&2; exit 1; }
	cp "$found" "$root/lib/modules/"
done

cp "$here/init" "$root/init"
mkdir -p "$root/usr/share/udhcpc"
cp "$here/udhcpc.script" "$root/usr/share/udhcpc/default.script"
chmod +x "$root/init" "$root/usr/share/udhcpc/default.script"
echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"

(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) \
	> "$work/initramfs.cpio"
cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"
mv "$work/vmlinuz" "$work/initramfs.cpio" "$out/"
echo "$key" > "$out/key"
echo "guest image built: $out ($(du -h "$out/initramfs.cpio" | cut -f1) initramfs)"
