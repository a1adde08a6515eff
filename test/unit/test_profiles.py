"""Confinement profiles: they compile, grant what the options write, and no more.

For each program and each profile set (AppArmor, SELinux) the tests ask
three things of the profile text:

- it compiles with the distribution's tools (``apparmor_parser -Q -K``;
  the refpolicy devel Makefile, i.e. ``checkmodule`` and
  ``semodule_package``), with no error;
- every file path the program writes because an option names it (socket,
  PID file, log file, capture file), in the places callers put them, is
  granted;
- paths the program must never touch (``/etc/shadow``, SSH keys, its own
  code...) are not.

Nothing is loaded into a kernel.  AppArmor rules are evaluated here, on the
text ``apparmor_parser -p`` prints with every include expanded: variables
substituted, globs turned into regular expressions, deny rules subtracted.
SELinux rules are read from the m4-expanded module the devel Makefile leaves
in ``tmp/``: allow rules, type transitions (which type a new file gets), and
the attributes the module asks for, so that a broad attribute (which might
contain ``shadow_t``) cannot sneak in as a target.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPARMOR = ROOT / "apparmor"
SELINUX = ROOT / "selinux"
SYSTEM_APPARMOR = Path("/etc/apparmor.d")
SELINUX_DEVEL_MAKEFILE = Path("/usr/share/selinux/devel/Makefile")
PROGRAMS = ("passt", "pasta")
CONFINED = (*PROGRAMS, "passt-repair", "pesto")  # these two write nothing an option names

# Files written through options, where their callers put them.
WRITTEN_BY_BOTH = (
    "/tmp/passt.pid", "/tmp/vm/guest.pcap", "/var/tmp/net.log",
    "/home/alice/passt.log", "/home/alice/vm/capture.pcap", "/root/pasta.pid",
    "/run/user/1000/net.pid", "/run/user/1000/vm/net.log",
    "/run/user/1000/pasta.ctl", "/tmp/vm/passt.ctl",              # -c, pesto's socket
)
WRITTEN = {
    "passt": WRITTEN_BY_BOTH + (
        "/tmp/passt_1.socket",                                    # default --socket
        "/run/user/1000/libvirt/qemu/run/passt/1-guest-net0.socket",
        "/run/libvirt/qemu/passt/1-guest-net0-passt.pid",         # libvirt, system
        "/run/libvirt/qemu/passt/1-guest-net0.socket",
        "/var/lib/libvirt/qemu/domain-1-guest/net0.socket",
        "/var/log/libvirt/qemu/guest-net0-passt.log",
    ),
    "pasta": WRITTEN_BY_BOTH + (
        "/run/pasta-box.pid",                                     # root, see pasta(1)
        "/run/user/1000/containers/networks/pasta.pid",           # rootless Podman
        "/run/containers/networks/pasta.pid",                     # Podman as root
    ),
}
# What the programs read to run at all.
READ_BY_BOTH = (
    "/usr/bin/python3.11", "/usr/lib/python3/dist-packages/passt/cli.py",
    "/usr/lib/python3.11/socket.py", "/etc/resolv.conf", "/etc/passwd",
    "/usr/lib/python3/dist-packages/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so",
    "/proc/sys/net/ipv4/ip_local_port_range",
)
READ = {
    "passt": READ_BY_BOTH + ("/usr/bin/passt",),
    "pasta": READ_BY_BOTH + ("/usr/bin/pasta", "/proc/net/tcp", "/proc/net/udp6",
                             "/proc/4242/task/4243/net/tcp6", "/proc/4242/ns/net",
                             "/proc/4242/ns/user", "/run/netns/box", "/run/netns/",
                             "/run/user/1000/netns/netns-1234", "/dev/net/tun"),
}
# Never read nor written, whatever the options say.
UNTOUCHABLE = (
    "/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/sudoers.d/admins",
    "/root/.ssh/authorized_keys", "/home/alice/.ssh/id_ed25519", "/home/alice/.gnupg/pubring.kbx",
    "/boot/vmlinuz-6.1.0-13-amd64", "/dev/sda", "/dev/mem", "/proc/kcore",
    "/proc/sysrq-trigger", "/var/lib/dpkg/status",
)
# Readable (libraries, configuration) but never written.
READ_ONLY = (
    "/etc/passwd", "/etc/resolv.conf", "/usr/bin/passt", "/usr/bin/pasta",
    "/usr/bin/python3.11", "/usr/lib/python3/dist-packages/passt/cli.py",
    "/etc/apparmor.d/usr.bin.passt", "/home/alice/.config/autostart/evil.desktop",
    "/proc/sys/kernel/core_pattern", "/sys/kernel/mm/transparent_hugepage/enabled",
)


# -- AppArmor ----------------------------------------------------------------


@dataclass
class FileRule:
    deny: bool
    perms: str
    pattern: re.Pattern[str]
    text: str


@dataclass
class AppArmorProfile:
    """The file rules of one profile, with includes and variables resolved."""

    name: str
    rules: list[FileRule] = field(default_factory=list)

    def matching(self, path: str, perm: str) -> list[FileRule]:
        return [r for r in self.rules if perm in r.perms and r.pattern.fullmatch(path)]

    def grants(self, path: str, perm: str) -> bool:
        rules = self.matching(path, perm)
        return any(not r.deny for r in rules) and not any(r.deny for r in rules)

    def allowing(self, path: str) -> list[str]:
        """The allow rules matching ``path``, to explain a failure."""
        return [r.text for r in self.rules if not r.deny and r.pattern.fullmatch(path)]


_FILE_RULE = re.compile(
    r"^(?:audit\s+)?(?P<deny>deny\s+)?(?:owner\s+|other\s+)?(?:file\s+)?"
    r"(?P<path>\"[^\"]*\"|[@/]\S*)\s+(?P<perms>[rwaklmixupcPUC]+)\s*(?:->\s*\S+)?$")
_VARIABLE = re.compile(r"^(@\{\w+\})\s*(\+?=)\s*(.*)$")


def apparmor_statements(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """Split preprocessed profile text into statements of the first profile.

    Returns the statements found at depth 1 of the profile block and the
    variables defined at top level.
    """
    variables: dict[str, list[str]] = {}
    statements: list[str] = []
    depth, pending = 0, ""
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        var = _VARIABLE.match(line) if depth == 0 else None
        if var:
            values = [v.strip('"') for v in var.group(3).split()]
            variables[var.group(1)] = (variables.get(var.group(1), []) if var.group(2) == "+="
                                       else []) + values
        elif line.endswith("{") and not pending:
            depth += 1
        elif line == "}":
            depth -= 1
        elif depth == 1:
            pending = f"{pending} {line}".strip()
            if pending.endswith(","):
                statements.append(pending[:-1].strip())
                pending = ""
    return statements, variables


def expand_variables(pattern: str, variables: dict[str, list[str]]) -> str:
    """Replace every ``@{var}`` by an alternation of its (expanded) values."""
    for _ in range(10):
        found = re.search(r"@\{\w+\}", pattern)
        if not found:
            return pattern
        values = variables[found.group(0)]
        alternation = values[0] if len(values) == 1 else "{" + ",".join(values) + "}"
        pattern = pattern.replace(found.group(0), alternation)
    raise ValueError(f"variables nested too deep in {pattern}")


def brace_expand(glob: str) -> list[str]:
    """``/a/{b,c{d,}}`` to ``/a/b``, ``/a/cd``, ``/a/c``: one glob per alternative."""
    start = glob.find("{")
    if start < 0:
        return [glob]
    depth = 0
    for end in range(start, len(glob)):
        depth += {"{": 1, "}": -1}.get(glob[end], 0)
        if depth == 0:
            break
    alternatives, depth, item = [], 0, ""
    for c in glob[start + 1:end]:
        if c == "," and depth == 0:
            alternatives.append(item)
            item = ""
            continue
        depth += {"{": 1, "}": -1}.get(c, 0)
        item += c
    alternatives.append(item)
    return [expanded for alternative in alternatives
            for expanded in brace_expand(glob[:start] + alternative + glob[end + 1:])]


def glob_to_regex(glob: str) -> str:
    """AppArmor glob (without braces) to a regular expression, as the parser reads it.

    Repeated slashes count as one; ``*`` and ``**`` right after a slash match
    at least one character (so ``/tmp/**`` does not match ``/tmp/`` itself);
    ``**`` crosses slashes.
    """
    glob = re.sub(r"/{2,}", "/", glob)
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        after_slash = i > 0 and glob[i - 1] == "/"
        if glob.startswith("**", i):
            out.append("[^/].*" if after_slash else ".*")
            i += 1
        elif c == "*":
            out.append("[^/]+" if after_slash else "[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = glob.index("]", i + 1)
            out.append(glob[i:end + 1])
            i = end
        elif c == "\\":
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def parse_apparmor(name: str, text: str) -> AppArmorProfile:
    statements, variables = apparmor_statements(text)
    profile = AppArmorProfile(name)
    for statement in statements:
        rule = _FILE_RULE.match(statement)
        if not rule:
            continue
        path = expand_variables(rule.group("path").strip('"'), variables)
        regex = "|".join(glob_to_regex(glob) for glob in brace_expand(path))
        profile.rules.append(FileRule(bool(rule.group("deny")), rule.group("perms"),
                                      re.compile(regex), statement))
    return profile


def apparmor_parser(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["apparmor_parser", *args, "-I", str(APPARMOR),
                           "-I", str(SYSTEM_APPARMOR)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def apparmor_profiles() -> dict[str, AppArmorProfile]:
    profiles = {}
    for program in CONFINED:
        result = apparmor_parser("-p", str(APPARMOR / f"usr.bin.{program}"))
        assert result.returncode == 0, result.stderr
        profiles[program] = parse_apparmor(program, result.stdout)
    return profiles


@pytest.mark.parametrize("program", CONFINED)
def test_apparmor_profile_compiles_without_kernel(program):
    result = apparmor_parser("-Q", "-K", str(APPARMOR / f"usr.bin.{program}"))
    errors = [line for line in result.stderr.splitlines() if "Cache read/write" not in line]
    assert result.returncode == 0 and not errors, result.stderr


def test_apparmor_profiles_share_one_abstraction():
    for program in PROGRAMS:
        text = (APPARMOR / f"usr.bin.{program}").read_text()
        assert "include <abstractions/passt-py>" in text
        assert re.search(rf"^profile {program} @{{passt_bindir}}/{program} ", text, re.M)


@pytest.mark.parametrize("program", PROGRAMS)
def test_apparmor_grants_every_file_an_option_writes(apparmor_profiles, program):
    profile = apparmor_profiles[program]
    refused = [path for path in WRITTEN[program] if not profile.grants(path, "w")]
    assert not refused, f"{program} may not write: {refused}"


@pytest.mark.parametrize("program", PROGRAMS)
def test_apparmor_grants_what_the_program_reads_to_run(apparmor_profiles, program):
    profile = apparmor_profiles[program]
    refused = [path for path in READ[program] if not profile.grants(path, "r")]
    assert not refused, f"{program} may not read: {refused}"
    assert profile.grants("/usr/bin/python3.11", "m"), "interpreter not mappable"


# Shared objects the programs map (see /proc/PID/maps of a running pasta with
# NumPy loaded), and shared objects they must not: any other .so.
MAPPED = (
    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libffi.so.8.1.2",
    "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
    "/usr/lib/x86_64-linux-gnu/blas/libblas.so.3.11.0",
    "/usr/lib/x86_64-linux-gnu/libgfortran.so.5.0.0",
    "/usr/lib/python3.11/lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so",
    "/usr/lib/python3/dist-packages/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so",
    "/usr/lib/python3/dist-packages/numpy/random/_pcg64.cpython-311-x86_64-linux-gnu.so",
)
NOT_MAPPED = (
    "/usr/lib/python3/dist-packages/yaml/_yaml.cpython-311-x86_64-linux-gnu.so",
    "/usr/local/lib/python3.11/dist-packages/evil.cpython-311-x86_64-linux-gnu.so",
    "/usr/lib/x86_64-linux-gnu/libevil.so.1", "/usr/lib/x86_64-linux-gnu/sane/libsane.so.1",
    "/usr/lib/libreoffice/program/libmergedlo.so", "/tmp/evil.so",
    "/home/alice/.local/lib/python3.11/site-packages/evil.cpython-311-x86_64-linux-gnu.so",
    "/usr/lib/python3/dist-packages/passt/evil.so",
)


@pytest.mark.parametrize("program", CONFINED)
def test_apparmor_maps_only_the_shared_objects_the_program_loads(apparmor_profiles, program):
    profile = apparmor_profiles[program]
    refused = [path for path in MAPPED if not profile.grants(path, "m")]
    assert not refused, f"{program} may not map: {refused}"
    granted = {path: profile.allowing(path) for path in NOT_MAPPED if profile.grants(path, "m")}
    assert not granted, f"{program} may map: {granted}"


@pytest.mark.parametrize("program", CONFINED)
def test_apparmor_never_grants_untouchable_paths(apparmor_profiles, program):
    profile = apparmor_profiles[program]
    for path in UNTOUCHABLE:
        granted = [perm for perm in "rwaklmx" if profile.grants(path, perm)]
        assert not granted, f"{program} granted {granted} on {path}: {profile.allowing(path)}"


@pytest.mark.parametrize("program", CONFINED)
def test_apparmor_never_grants_writing_read_only_paths(apparmor_profiles, program):
    profile = apparmor_profiles[program]
    written = [path for path in READ_ONLY if profile.grants(path, "w") or profile.grants(path, "a")]
    assert not written, f"{program} may write: {written}"


def test_apparmor_passt_repair_reaches_passt_socket_and_nothing_more(apparmor_profiles):
    """It connects to passt's .repair socket where passt makes its own, runs
    the interpreter, and has net_admin (TCP_REPAIR) and no other privilege
    passt and pasta use to set up."""
    profile = apparmor_profiles["passt-repair"]
    for socket_path in ("/tmp/passt_1.socket.repair", "/run/user/1000/vm/passt.socket.repair",
                        "/var/lib/libvirt/qemu/domain-1-guest/net0.socket.repair"):
        assert profile.grants(socket_path, "w"), socket_path
    assert profile.grants("/usr/lib/python3/dist-packages/passt/repair_helper.py", "r")
    text = (APPARMOR / "usr.bin.passt-repair").read_text()
    assert "include <abstractions/passt-py-python>" in text
    assert "abstractions/passt-py>" not in text
    capabilities = set(re.findall(r"^\s*capability (\w+),", text, re.M))
    assert capabilities == {"net_admin", "dac_override"}


def test_apparmor_pesto_reaches_control_sockets_and_nothing_more(apparmor_profiles):
    """It connects to the control socket (-c) where passt and pasta may make it,
    runs the interpreter, and has no privilege but reaching another user's socket."""
    profile = apparmor_profiles["pesto"]
    for socket_path in ("/run/user/1000/pasta.ctl", "/tmp/vm/passt.ctl",
                        "/home/alice/vm/pasta.ctl", "/var/tmp/pasta.ctl"):
        assert profile.grants(socket_path, "w"), socket_path
    for path in ("/run/utmp", "/run/user/1000/", "/etc/passwd", "/usr/bin/pesto"):
        assert not profile.grants(path, "w"), path
    assert profile.grants("/usr/lib/python3/dist-packages/passt/pesto.py", "r")
    text = (APPARMOR / "usr.bin.pesto").read_text()
    assert "abstractions/passt-py>" not in text
    capabilities = set(re.findall(r"^\s*capability (\w+),", text, re.M))
    assert capabilities == {"dac_override"}


def test_apparmor_evaluator_can_tell_granted_from_refused():
    """The evaluator itself: globs, variables, owner, deny subtraction."""
    text = """@{HOME}=@{HOMEDIRS}/*/ /root/
@{HOMEDIRS}=/home/
profile t /usr/bin/t {
  owner @{HOME}/** rw,
  /usr/{lib,share}/t/*.py r,
  /tmp/** w,
  deny @{HOME}/.ssh/{,**} rw,
}
"""
    profile = parse_apparmor("t", text)
    assert profile.grants("/home/bob/x/y.log", "w")
    assert profile.grants("/root/y.log", "r")
    assert not profile.grants("/home/bob/.ssh/id_rsa", "r")
    assert not profile.grants("/home/bob/.ssh/", "w")
    assert profile.grants("/usr/share/t/a.py", "r")
    assert not profile.grants("/usr/share/t/sub/a.py", "r")
    assert not profile.grants("/tmp/", "w")
    assert not profile.grants("/etc/shadow", "r")


# -- SELinux -----------------------------------------------------------------


@dataclass
class SelinuxModule:
    """Allow rules, type transitions and required attributes of one module."""

    allows: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)
    transitions: dict[tuple[str, str, str], str] = field(default_factory=dict)
    attributes: set[str] = field(default_factory=set)

    def allowed(self, source: str, target: str, cls: str, perms: set[str]) -> bool:
        return perms <= self.allows.get((source, target, cls), set())

    def created_type(self, source: str, parent: str, cls: str) -> str:
        """The type of an object ``source`` creates in a directory of type ``parent``."""
        return self.transitions.get((source, parent, cls), parent)

    def targets(self, source: str) -> set[str]:
        return {target for (src, target, _) in self.allows if src == source}


def _names(field_text: str) -> list[str]:
    return field_text.replace("{", " ").replace("}", " ").split()


def parse_selinux(expanded: str, domain: str) -> SelinuxModule:
    text = re.sub(r"#[^\n]*", "", expanded)
    module = SelinuxModule()
    for names in re.findall(r"\battribute\s+([^;]+);", text):
        module.attributes.update(n.strip() for n in names.split(","))
    for body in re.findall(r"\ballow\s+([^;]+);", text):
        parts = re.match(r"(\{[^}]*\}|\S+)\s+(\{[^}]*\}|\S+)\s*:\s*(\{[^}]*\}|\S+)\s*(.*)",
                         body, re.S)
        source, target, classes, perms = parts.groups()
        if domain not in _names(source):
            continue
        for tgt, cls in itertools.product(_names(target), _names(classes)):
            tgt = domain if tgt == "self" else tgt
            module.allows.setdefault((domain, tgt, cls), set()).update(_names(perms))
    for source, parent, classes, new in re.findall(
            r"\btype_transition\s+(\S+)\s+(\S+)\s*:\s*(\{[^}]*\}|\S+)\s+(\w+)", text):
        for cls in _names(classes):
            module.transitions[(source, parent, cls)] = new
    return module


@pytest.fixture(scope="module")
def selinux_modules(tmp_path_factory) -> dict[str, SelinuxModule]:
    build = tmp_path_factory.mktemp("selinux")
    for source in SELINUX.glob("*.[tif][ef]"):
        shutil.copy(source, build)
    result = subprocess.run(["make", "-f", str(SELINUX_DEVEL_MAKEFILE),
                             *(f"{program}.pp" for program in CONFINED)],
                            cwd=build, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in result.stderr.lower(), result.stderr
    for program in CONFINED:
        assert (build / f"{program}.pp").stat().st_size > 0
    return {program: parse_selinux((build / "tmp" / f"{program}.tmp").read_text(),
                                   selinux_domain(program))
            for program in CONFINED}


def selinux_domain(program: str) -> str:
    return program.replace("-", "_") + "_t"


# Where option targets are created (type of the directory), as labelled by
# Debian's reference policy, and the class of what is created there.
SELINUX_OPTION_TARGETS = (
    ("/tmp/passt.pid", "tmp_t", "file"),
    ("/tmp/passt_1.socket", "tmp_t", "sock_file"),
    ("/tmp/vm/guest.pcap (directory made by the user)", "user_tmp_t", "file"),
    ("/home/alice/passt.log", "user_home_dir_t", "file"),
    ("/home/alice/vm/capture.pcap", "user_home_t", "file"),
    ("/home/alice/vm/passt.socket", "user_home_t", "sock_file"),
    ("/run/user/1000/net.pid", "user_runtime_t", "file"),
    ("/run/user/1000/passt.socket", "user_runtime_t", "sock_file"),
    ("/run/passt.pid", "var_run_t", "file"),
    ("/var/log/passt.log", "var_log_t", "file"),
)
CREATE_IN_DIR = {"search", "write", "add_name"}
CREATE_FILE = {"create", "open", "write"}
# Types no rule of ours may name, and the attributes that contain them.
SELINUX_UNTOUCHABLE = {"shadow_t", "security_t", "sudo_exec_t", "auth_cache_t", "boot_t",
                       "fixed_disk_device_t", "memory_device_t", "proc_kcore_t",
                       "sysctl_kernel_t", "user_ssh_home_t", "ssh_home_t"}
SELINUX_ATTRIBUTES_ALLOWED_AS_TARGET = {"port_type", "privfd"}


@pytest.mark.parametrize("program", PROGRAMS)
def test_selinux_module_creates_every_file_an_option_writes(selinux_modules, program):
    module = selinux_modules[program]
    domain = f"{program}_t"
    for where, parent, cls in SELINUX_OPTION_TARGETS:
        assert module.allowed(domain, parent, "dir", CREATE_IN_DIR), f"{where}: directory"
        created = module.created_type(domain, parent, cls)
        assert module.allowed(domain, created, cls, {"create"} | (
            CREATE_FILE if cls == "file" else set())), f"{where}: {created}:{cls}"


@pytest.mark.parametrize("program", PROGRAMS)
def test_selinux_module_keeps_files_it_creates_apart_from_the_callers(selinux_modules, program):
    module = selinux_modules[program]
    domain = f"{program}_t"
    assert module.created_type(domain, "tmp_t", "file") == f"{program}_tmp_t"
    assert module.created_type(domain, "var_log_t", "file") == f"{program}_log_t"
    assert module.created_type(domain, "var_run_t", "file") == f"{program}_runtime_t"


@pytest.mark.parametrize("program", CONFINED)
def test_selinux_module_names_no_untouchable_type_nor_broad_attribute(selinux_modules, program):
    module = selinux_modules[program]
    domain = selinux_domain(program)
    targets = module.targets(domain)
    assert not targets & SELINUX_UNTOUCHABLE, targets & SELINUX_UNTOUCHABLE
    broad = (targets & module.attributes) - SELINUX_ATTRIBUTES_ALLOWED_AS_TARGET
    assert not broad, f"{program} rules name attributes that may hold anything: {broad}"
    for read_only in ("etc_t", "bin_t", "lib_t", "usr_t", "passwd_file_t",
                      domain.replace("_t", "_exec_t")):
        for cls in ("file", "dir", "lnk_file"):
            granted = module.allows.get((domain, read_only, cls), set())
            assert not granted & {"write", "append", "create", "unlink", "setattr",
                                  "add_name"}, f"{program} may modify {read_only}:{cls}"


@pytest.mark.parametrize("program", PROGRAMS)
def test_selinux_module_reaches_what_the_program_needs(selinux_modules, program):
    module = selinux_modules[program]
    domain = f"{program}_t"
    assert module.allowed(domain, "bin_t", "file", {"execute", "map", "read"})  # interpreter
    assert module.allowed(domain, "net_conf_t", "file", {"read", "open"})       # resolv.conf
    assert module.allowed(domain, domain, "netlink_route_socket", {"create", "nlmsg_read"})
    assert module.allowed(domain, domain, "tcp_socket", {"create", "connect", "listen"})
    assert module.allowed(domain, "port_type", "tcp_socket", {"name_bind"})
    if program == "pasta":
        assert module.allowed(domain, "tun_tap_device_t", "chr_file", {"open", "read", "write"})
        assert module.allowed(domain, "proc_net_t", "file", {"open", "read"})
        assert module.allowed(domain, "nsfs_t", "file", {"open", "read"})
        assert module.allowed(domain, "ifconfig_runtime_t", "dir", {"read", "watch"})  # /run/netns
    else:
        assert module.allowed(domain, domain, "unix_stream_socket", {"listen", "accept"})


def test_selinux_passt_repair_sets_options_on_passt_sockets_only(selinux_modules):
    """passt-repair: the interpreter, passt's socket, TCP_REPAIR (net_admin) on the
    sockets passt passes it; none of the privileges passt and pasta set up with."""
    module = selinux_modules["passt-repair"]
    domain = "passt_repair_t"
    assert module.allowed(domain, "bin_t", "file", {"execute", "map", "read"})
    assert module.allowed(domain, domain, "capability", {"net_admin"})
    assert not module.allowed(domain, domain, "capability", {"sys_admin"})
    assert module.allowed(domain, "passt_t", "unix_stream_socket", {"connectto"})
    assert module.allowed(domain, "passt_t", "tcp_socket", {"setopt"})
    assert module.allowed(domain, "passt_t", "fd", {"use"})


def test_selinux_pesto_connects_to_passt_and_pasta_only(selinux_modules):
    """pesto: the interpreter and the control sockets of passt and pasta, where
    they made them (their own types, or the user's in home and tmp)."""
    module = selinux_modules["pesto"]
    domain = "pesto_t"
    assert module.allowed(domain, "bin_t", "file", {"execute", "map", "read"})
    for server in ("passt_t", "pasta_t"):
        assert module.allowed(domain, server, "unix_stream_socket", {"connectto"})
    for socket_type in ("passt_tmp_t", "pasta_tmp_t", "pasta_runtime_t", "user_home_t",
                        "user_tmp_t"):
        assert module.allowed(domain, socket_type, "sock_file", {"write"}), socket_type
        assert not module.allowed(domain, socket_type, "file", {"write"}), socket_type
    assert module.allowed(domain, domain, "capability", {"dac_override"})
    assert not module.allowed(domain, domain, "capability", {"net_admin"})
    assert not module.allowed(domain, domain, "capability", {"sys_admin"})
