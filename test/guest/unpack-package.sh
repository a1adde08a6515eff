# Sourced by test/guest/build.sh and test/kernel/fetch.sh.
#
# Theory of operation: the test kernels come from Debian's packages, fetched
# by package name with `apt-get download` (as root, hence no sandbox user)
# and unpacked with dpkg-deb: never installed on the machine, never
# committed.  The .deb itself is thrown away once unpacked.
#
# unpack_package PACKAGE DIR: unpack PACKAGE's files into DIR (created).
unpack_package() {
	local scratch status=0
	scratch=$(mktemp -d "$(dirname "$2")/download.XXXXXX")
	(cd "$scratch" && apt-get download -q -o APT::Sandbox::User=root "$1" >/dev/null) &&
		dpkg-deb -x "$scratch"/"$1"_*.deb "$2" || status=$?
	rm -rf "$scratch"
	return "$status"
}
