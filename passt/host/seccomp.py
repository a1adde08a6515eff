"""A seccomp allow-list of system calls, assembled here as a classic BPF program.

Theory of operation
-------------------
Once passt or pasta is set up, the system calls it still makes are a short,
known list: reading and writing sockets, pipes and the tap, ``epoll``,
timers, memory management for the interpreter, and a few more.  A seccomp
filter refuses every other one, so that whatever a hostile guest might make
us run, it cannot ``execve``, ``open`` a file, ``ptrace`` or ``mount``.

**Why our own filter.**  libseccomp's Python bindings are not on PyPI, and
Debian's ``python3-seccomp`` only serves Debian's own interpreter.  The
kernel's interface is small: ``seccomp(SECCOMP_SET_MODE_FILTER, flags,
&sock_fprog)`` with a classic BPF program that reads ``struct
seccomp_data`` (``nr`` at offset 0, ``arch`` at 4, ``args[i]`` at 16 + 8i)
and returns a verdict.  An allow-list is a few dozen lines of assembler,
which ``ctypes`` hands to the kernel.

**The program** first checks the audit architecture: a call made through
another ABI (i386 ``int 0x80`` on x86_64, or x32, whose numbers have bit 30
set) would be looked up in the wrong table, so it kills the process.  The
allowed numbers, sorted, then form a binary search tree: internal nodes are
``jge k`` plus a long jump (``ja``, 32-bit offset) over the left half, so the
8-bit offsets of conditional jumps never overflow whatever the list's
length; leaves test a handful of numbers each, linearly, and end with the
default verdict.  A lookup costs about log2(n) + 4 comparisons.  A call
allowed only with given values of one argument (``ioctl`` with known
requests) tests that argument's low 32 bits (little-endian) in its leaf.

**Verdict for the rest: ``EPERM``, not death.**  Upstream's C programs kill
the process.  A Python interpreter's own system calls depend on the code
path (a traceback being formatted opens source files; the time zone is
looked up again), and a call missed in a rare path would then kill every
flow at once; with ``EPERM`` it is one ``PermissionError`` where the code
already handles ``OSError``.  What the guest can reach is the same: nothing
outside the list runs.  The architecture check still kills, since nothing
legitimate ever trips it.

**Threads.**  A filter belongs to a thread; ``SECCOMP_FILTER_FLAG_TSYNC``
installs it on every thread of the process at once (pasta's namespace
helper thread too) and fails, naming the thread, if one of them cannot take
it.  Installing needs ``no_new_privs`` (or ``CAP_SYS_ADMIN``), which the
caller sets.

**Architectures.**  The numbers differ per architecture: x86_64 has its
own table (asm/unistd_64.h), aarch64 the generic one (asm-generic/unistd.h),
which lacks the old calls (``open``, ``poll``, ``epoll_wait``...) that its C
library replaces with their ``*at``/``p*`` forms.  A name in a list that only
x86_64 has is therefore skipped on aarch64; any other unknown name is an
error.  On every other architecture ``install`` raises
``SeccompUnsupported``, and the caller refuses to start unless told to run
without a filter (``isolation``: ``PASST_NO_SECCOMP=1``): never a silently
empty filter.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterable, Mapping

from passt.record import record

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
BPF_LD_W_ABS = 0x20  # A = *(u32 *)(data + k)
BPF_JMP_JA = 0x05  # pc += k
BPF_JMP_JEQ_K = 0x15  # pc += (A == k) ? jt : jf
BPF_JMP_JGE_K = 0x35  # pc += (A >= k) ? jt : jf
BPF_RET_K = 0x06  # return k

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1

OFFSET_NR = 0
OFFSET_ARCH = 4
OFFSET_ARGS = 16
X32_SYSCALL_BIT = 0x40000000
LEAF_SIZE = 4  # numbers tested linearly at the bottom of the search tree

AUDIT_ARCH_X86_64 = 0xC000003E  # EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
AUDIT_ARCH_AARCH64 = 0xC00000B7  # EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE

# x86_64 system call numbers (asm/unistd_64.h) of every call a list may name.
_X86_64 = """
read 0 write 1 open 2 close 3 stat 4 fstat 5 lstat 6 poll 7 lseek 8 mmap 9
mprotect 10 munmap 11 brk 12 rt_sigaction 13 rt_sigprocmask 14 rt_sigreturn 15
ioctl 16 pread64 17 pwrite64 18 readv 19 writev 20 access 21 pipe 22 select 23
sched_yield 24 mremap 25 madvise 28 dup 32 dup2 33 nanosleep 35 getitimer 36
getpid 39 sendfile 40 socket 41 connect 42 accept 43 sendto 44 recvfrom 45
sendmsg 46 recvmsg 47 shutdown 48 bind 49 listen 50 getsockname 51 getpeername 52
socketpair 53 setsockopt 54 getsockopt 55 clone 56 fork 57 vfork 58 execve 59
exit 60 wait4 61 kill 62 uname 63 fcntl 72 flock 73 fsync 74 fdatasync 75
truncate 76 ftruncate 77 getdents 78 getcwd 79 chdir 80 fchdir 81 rename 82
mkdir 83 rmdir 84 creat 85 link 86 unlink 87 symlink 88 readlink 89 chmod 90
fchmod 91 chown 92 fchown 93 umask 95 gettimeofday 96 getrlimit 97 getrusage 98
sysinfo 99 ptrace 101 getuid 102 getgid 104 setuid 105 setgid 106 geteuid 107
getegid 108 setpgid 109 getppid 110 setsid 112 setgroups 116 getpgid 121
capget 125 capset 126 rt_sigpending 127 rt_sigtimedwait 128 sigaltstack 131
personality 135 prctl 157 arch_prctl 158 setrlimit 160 chroot 161 sync 162
mount 165 umount2 166 pivot_root 155 reboot 169 init_module 175
delete_module 176 gettid 186 tkill 200 time 201 futex 202 sched_getaffinity 204
epoll_create 213 getdents64 217 set_tid_address 218 restart_syscall 219
timer_create 222 timer_settime 223 timer_delete 226 clock_gettime 228
clock_getres 229 clock_nanosleep 230 exit_group 231 epoll_wait 232 epoll_ctl 233
tgkill 234 openat 257 mkdirat 258 newfstatat 262 unlinkat 263 renameat 264
pselect6 270 ppoll 271 unshare 272 set_robust_list 273 get_robust_list 274
splice 275 tee 276 sync_file_range 277 vmsplice 278 epoll_pwait 281
signalfd 282 timerfd_create 283 eventfd 284 fallocate 285 timerfd_settime 286
timerfd_gettime 287 accept4 288 signalfd4 289 eventfd2 290 epoll_create1 291
dup3 292 pipe2 293 inotify_init1 294 inotify_add_watch 254 preadv 295 pwritev 296 rt_tgsigqueueinfo 297
recvmmsg 299 prlimit64 302 sendmmsg 307 setns 308 getcpu 309 process_vm_readv 310
kcmp 312 sched_getattr 315 renameat2 316 seccomp 317 getrandom 318
memfd_create 319 bpf 321 execveat 322 userfaultfd 323 membarrier 324
mlock2 325 copy_file_range 326 preadv2 327 pwritev2 328 pkey_mprotect 329
statx 332 io_uring_setup 425 pidfd_send_signal 424 pidfd_open 434 clone3 435
close_range 436 openat2 437 pidfd_getfd 438 faccessat2 439 process_madvise 440
epoll_pwait2 441 mount_setattr 442 rseq 334
"""

# aarch64 numbers (asm-generic/unistd.h, 64-bit: __NR3264_* as __NR_*).
_AARCH64 = """
read 63 write 64 close 57 fstat 80 lseek 62 mmap 222 mprotect 226 munmap 215
brk 214 rt_sigaction 134 rt_sigprocmask 135 rt_sigreturn 139 ioctl 29 pread64 67
pwrite64 68 readv 65 writev 66 sched_yield 124 mremap 216 madvise 233 dup 23
nanosleep 101 getitimer 102 getpid 172 sendfile 71 socket 198 connect 203
accept 202 sendto 206 recvfrom 207 sendmsg 211 recvmsg 212 shutdown 210 bind 200
listen 201 getsockname 204 getpeername 205 socketpair 199 setsockopt 208
getsockopt 209 clone 220 execve 221 exit 93 wait4 260 kill 129 uname 160
fcntl 25 flock 32 fsync 82 fdatasync 83 truncate 45 ftruncate 46 getcwd 17
chdir 49 fchdir 50 fchmod 52 fchown 55 umask 166 gettimeofday 169 getrlimit 163
getrusage 165 sysinfo 179 ptrace 117 getuid 174 getgid 176 setuid 146 setgid 144
geteuid 175 getegid 177 setpgid 154 getppid 173 setsid 157 setgroups 159
getpgid 155 capget 90 capset 91 rt_sigpending 136 rt_sigtimedwait 137
sigaltstack 132 personality 92 prctl 167 setrlimit 164 chroot 51 sync 81
mount 40 umount2 39 pivot_root 41 reboot 142 init_module 105 delete_module 106
gettid 178 tkill 130 futex 98 sched_getaffinity 123 getdents64 61
set_tid_address 96 restart_syscall 128 timer_create 107 timer_settime 110
timer_delete 111 clock_gettime 113 clock_getres 114 clock_nanosleep 115
exit_group 94 epoll_ctl 21 tgkill 131 openat 56 mkdirat 34 newfstatat 79
unlinkat 35 renameat 38 pselect6 72 ppoll 73 unshare 97 set_robust_list 99
get_robust_list 100 splice 76 tee 77 sync_file_range 84 vmsplice 75
epoll_pwait 22 timerfd_create 85 fallocate 47 timerfd_settime 86
timerfd_gettime 87 accept4 242 signalfd4 74 eventfd2 19 epoll_create1 20 dup3 24
pipe2 59 inotify_init1 26 inotify_add_watch 27 preadv 69 pwritev 70 rt_tgsigqueueinfo 240
recvmmsg 243 prlimit64 261 sendmmsg 269 setns 268 getcpu 168
process_vm_readv 270 kcmp 272 sched_getattr 275 renameat2 276 seccomp 277
getrandom 278 memfd_create 279 bpf 280 execveat 281 userfaultfd 282
membarrier 283 mlock2 284 copy_file_range 285 preadv2 286 pwritev2 287
pkey_mprotect 288 statx 291 io_uring_setup 425 pidfd_send_signal 424
pidfd_open 434 clone3 435 close_range 436 openat2 437 pidfd_getfd 438
faccessat2 439 process_madvise 440 epoll_pwait2 441 mount_setattr 442 rseq 293
"""


class SeccompError(OSError):
    """The kernel refused the filter."""


class SeccompUnsupported(SeccompError):
    """No system call table for this architecture."""


def _table(text: str) -> dict[str, int]:
    words = text.split()
    return {name: int(number) for name, number in zip(words[::2], words[1::2], strict=True)}


SYSCALLS_X86_64: Mapping[str, int] = _table(_X86_64)
SYSCALLS_AARCH64: Mapping[str, int] = _table(_AARCH64)


@record(frozen=True)
class Arch:
    """One architecture's audit value and system call table."""

    name: str
    audit: int
    table: Mapping[str, int]


ARCHES: Mapping[str, Arch] = {
    "x86_64": Arch("x86_64", AUDIT_ARCH_X86_64, SYSCALLS_X86_64),
    "aarch64": Arch("aarch64", AUDIT_ARCH_AARCH64, SYSCALLS_AARCH64),
}


def syscall_numbers(names: Iterable[str], table: Mapping[str, int] = SYSCALLS_X86_64) -> list[int]:
    """Sorted, distinct numbers of ``names`` in ``table``.

    A name only x86_64 has (a call the generic table replaced) is skipped;
    any other name missing from ``table`` is a ``KeyError``.
    """
    return sorted({table[name] for name in names
                   if name in table or name not in SYSCALLS_X86_64})


# -- the assembler -------------------------------------------------------------

Insn = tuple[int, int, int, int]  # code, jt, jf, k


def _stmt(code: int, k: int) -> Insn:
    return (code, 0, 0, k)


def _jump(code: int, k: int, jt: int, jf: int) -> Insn:
    return (code, jt, jf, k)


def _leaf(numbers: list[int], only: Mapping[int, tuple[int, frozenset[int]]],
          default: int) -> list[Insn]:
    """Allow any of ``numbers`` (some only with given argument values), else ``default``.

    The accumulator holds the call number on entry; an argument test loads
    the argument, so each such entry ends with its own verdicts.
    """
    code: list[Insn] = []
    for nr in numbers:
        if nr not in only:
            code += [_jump(BPF_JMP_JEQ_K, nr, 0, 1), _stmt(BPF_RET_K, SECCOMP_RET_ALLOW)]
            continue
        arg, values = only[nr]
        tests = [insn for value in sorted(values)
                 for insn in (_jump(BPF_JMP_JEQ_K, value, 0, 1),
                              _stmt(BPF_RET_K, SECCOMP_RET_ALLOW))]
        body = [_stmt(BPF_LD_W_ABS, OFFSET_ARGS + 8 * arg), *tests, _stmt(BPF_RET_K, default)]
        code += [_jump(BPF_JMP_JEQ_K, nr, 0, len(body)), *body]
    return code + [_stmt(BPF_RET_K, default)]


def _tree(numbers: list[int], only: Mapping[int, tuple[int, frozenset[int]]],
          default: int) -> list[Insn]:
    if len(numbers) <= LEAF_SIZE:
        return _leaf(numbers, only, default)
    middle = len(numbers) // 2
    left = _tree(numbers[:middle], only, default)
    right = _tree(numbers[middle:], only, default)
    # A >= pivot: fall through to the long jump over the left half; else skip it.
    return [_jump(BPF_JMP_JGE_K, numbers[middle], 0, 1), _stmt(BPF_JMP_JA, len(left)),
            *left, *right]


def assemble(numbers: Iterable[int], arch: int = AUDIT_ARCH_X86_64,
             only: Mapping[int, tuple[int, Iterable[int]]] | None = None,
             default: int = SECCOMP_RET_ERRNO | 1) -> list[Insn]:
    """The filter: kill on a foreign ABI, allow ``numbers``, ``default`` for the rest.

    ``only`` maps a call number to ``(argument index, allowed values)``;
    ``default`` is ``ERRNO | EPERM`` unless told otherwise.
    """
    allowed = sorted(set(numbers) | set(only or ()))
    restricted = {nr: (arg, frozenset(values)) for nr, (arg, values) in (only or {}).items()}
    kill = _stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS)
    return [
        _stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        _jump(BPF_JMP_JEQ_K, arch, 1, 0),
        kill,
        _stmt(BPF_LD_W_ABS, OFFSET_NR),
        _jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        kill,
        *_tree(allowed, restricted, default),
    ]


def run(program: list[Insn], nr: int, arch: int = AUDIT_ARCH_X86_64,
        args: tuple[int, ...] = ()) -> int:
    """What ``program`` answers for a call (an interpreter for tests and checks)."""
    data = struct.pack("<iI Q 6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    acc = pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == BPF_LD_W_ABS:
            (acc,) = struct.unpack_from("<I", data, k)
        elif code == BPF_RET_K:
            return k
        elif code == BPF_JMP_JA:
            pc += k
        elif code == BPF_JMP_JEQ_K:
            pc += jt if acc == k else jf
        elif code == BPF_JMP_JGE_K:
            pc += jt if acc >= k else jf
        else:
            raise ValueError(f"unknown BPF opcode {code:#x}")


# -- installing it ---------------------------------------------------------------


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def uname_machine() -> str:
    """``platform.machine()``, without importing ``platform`` (its regular expressions
    are compiled at import: milliseconds of start-up)."""
    return os.uname().machine


def native_arch(machine: str | None = None) -> Arch:
    """Our architecture (or ``machine``'s); ``SeccompUnsupported`` where we have no table."""
    machine = machine or uname_machine()
    arch = ARCHES.get(machine)
    if arch is None or struct.calcsize("P") != 8:
        raise SeccompUnsupported(0, f"no seccomp system call table for {machine} "
                                    f"(only for {', '.join(ARCHES)})")
    return arch


def install(names: Iterable[str], only: Mapping[str, tuple[int, Iterable[int]]] | None = None,
            ) -> int:
    """Install the allow-list of ``names`` on every thread; returns its length.

    The calling thread must have ``no_new_privs`` set.  Raises
    ``SeccompError`` if the kernel refuses (or a thread can't be synced),
    ``SeccompUnsupported`` on an architecture without a table.
    """
    arch = native_arch()
    restricted = {arch.table[name]: spec for name, spec in (only or {}).items()}
    program = assemble(syscall_numbers(names, arch.table), arch.audit, restricted)
    if len(program) > 4096:  # BPF_MAXINSNS
        raise SeccompError(0, f"filter of {len(program)} instructions is too long")
    insns = (_SockFilter * len(program))(*(_SockFilter(*insn) for insn in program))
    prog = _SockFprog(len(program), insns)
    ret = _libc.syscall(arch.table["seccomp"], SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
                        ctypes.byref(prog))
    if ret < 0:
        code = ctypes.get_errno()
        raise SeccompError(code, f"Can't install seccomp filter: {os.strerror(code)}")
    if ret > 0:
        raise SeccompError(0, f"Can't install seccomp filter on thread {ret}")
    return len(program)
