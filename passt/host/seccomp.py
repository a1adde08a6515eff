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

Only x86_64 has a table here: elsewhere ``install`` raises
``SeccompUnsupported`` and the caller decides (``isolation`` warns).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Iterable, Mapping

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

AUDIT_ARCH_X86_64 = 0xC000003E
SYS_SECCOMP_X86_64 = 317

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
dup3 292 pipe2 293 inotify_init1 294 preadv 295 pwritev 296 rt_tgsigqueueinfo 297
recvmmsg 299 prlimit64 302 sendmmsg 307 setns 308 getcpu 309 process_vm_readv 310
kcmp 312 sched_getattr 315 renameat2 316 seccomp 317 getrandom 318
memfd_create 319 bpf 321 execveat 322 userfaultfd 323 membarrier 324
mlock2 325 copy_file_range 326 preadv2 327 pwritev2 328 pkey_mprotect 329
statx 332 io_uring_setup 425 pidfd_send_signal 424 pidfd_open 434 clone3 435
close_range 436 openat2 437 pidfd_getfd 438 faccessat2 439 process_madvise 440
epoll_pwait2 441 mount_setattr 442 rseq 334
"""


class SeccompError(OSError):
    """The kernel refused the filter."""


class SeccompUnsupported(SeccompError):
    """No system call table for this architecture."""


def _table(text: str) -> dict[str, int]:
    words = text.split()
    return {name: int(number) for name, number in zip(words[::2], words[1::2], strict=True)}


SYSCALLS_X86_64: Mapping[str, int] = _table(_X86_64)


def syscall_numbers(names: Iterable[str], table: Mapping[str, int] = SYSCALLS_X86_64) -> list[int]:
    """Sorted, distinct numbers of ``names``; an unknown name is a ``KeyError``."""
    return sorted({table[name] for name in names})


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


def native_arch() -> int:
    """Our audit architecture; ``SeccompUnsupported`` where we have no table."""
    if platform.machine() != "x86_64" or struct.calcsize("P") != 8:
        raise SeccompUnsupported(0, f"no system call table for {platform.machine()}")
    return AUDIT_ARCH_X86_64


def install(names: Iterable[str], only: Mapping[str, tuple[int, Iterable[int]]] | None = None,
            ) -> int:
    """Install the allow-list of ``names`` on every thread; returns its length.

    The calling thread must have ``no_new_privs`` set.  Raises
    ``SeccompError`` if the kernel refuses (or a thread can't be synced),
    ``SeccompUnsupported`` off x86_64.
    """
    arch = native_arch()
    restricted = {SYSCALLS_X86_64[name]: spec for name, spec in (only or {}).items()}
    program = assemble(syscall_numbers(names), arch, restricted)
    if len(program) > 4096:  # BPF_MAXINSNS
        raise SeccompError(0, f"filter of {len(program)} instructions is too long")
    insns = (_SockFilter * len(program))(*(_SockFilter(*insn) for insn in program))
    prog = _SockFprog(len(program), insns)
    ret = _libc.syscall(SYS_SECCOMP_X86_64, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
                        ctypes.byref(prog))
    if ret < 0:
        code = ctypes.get_errno()
        raise SeccompError(code, f"Can't install seccomp filter: {os.strerror(code)}")
    if ret > 0:
        raise SeccompError(0, f"Can't install seccomp filter on thread {ret}")
    return len(program)
