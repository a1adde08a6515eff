"""The seccomp filter: the assembler's program, checked by interpretation and by the kernel.

The program is run through ``seccomp.run`` (a classic BPF interpreter of the
few opcodes we emit) for every call number around the allowed ones, so a
wrong jump shows as a wrong verdict; the jumps' ranges are checked too.
Then a forked child installs the real passt and pasta lists and tries
what must be refused (``execve``, ``fork``, ``open``) and what must work.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import socket

import pytest

from passt.host import isolation, seccomp
from passt.host.seccomp import (
    AUDIT_ARCH_X86_64,
    BPF_JMP_JA,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SYSCALLS_X86_64,
    assemble,
    run,
)

EPERM = SECCOMP_RET_ERRNO | errno.EPERM
HEADER = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
on_x86_64 = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 table only")


def test_numbers_are_the_kernels() -> None:
    with open(HEADER) as f:
        kernel = {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+) (\d+)", f.read())}
    assert {name: kernel.get(name) for name in SYSCALLS_X86_64} == dict(SYSCALLS_X86_64)


def test_every_listed_name_is_in_the_table() -> None:
    for names in (isolation.PASST_SYSCALLS, isolation.PASTA_SYSCALLS):
        assert set(names) <= set(SYSCALLS_X86_64)


@pytest.mark.parametrize("size", [1, 2, 4, 5, 17, 64, 130, 400])
def test_exactly_the_listed_calls_are_allowed(size: int) -> None:
    rng = random.Random(size)
    allowed = set(rng.sample(range(600), size))
    program = assemble(allowed)
    verdicts = {nr: run(program, nr) for nr in range(700)}
    assert {nr for nr, v in verdicts.items() if v == SECCOMP_RET_ALLOW} == allowed
    assert {v for nr, v in verdicts.items() if nr not in allowed} == {EPERM}
    assert_jumps_in_range(program)


def assert_jumps_in_range(program: list[tuple[int, int, int, int]]) -> None:
    for pc, (code, jt, jf, k) in enumerate(program):
        assert 0 <= jt <= 255 and 0 <= jf <= 255
        if code & 0x07 != BPF_JMP_JA:  # not a jump (BPF_JMP class): a load or a return
            continue
        target = pc + 1 + (k if code == BPF_JMP_JA else max(jt, jf))
        assert target < len(program), f"jump past the end at {pc}"


def test_another_abi_is_killed() -> None:
    program = assemble({0, 1, 2})
    assert run(program, 1, arch=0x40000003) == SECCOMP_RET_KILL_PROCESS  # i386
    assert run(program, 1 | 0x40000000) == SECCOMP_RET_KILL_PROCESS  # x32
    assert run(program, 1, arch=AUDIT_ARCH_X86_64) == SECCOMP_RET_ALLOW


def test_a_call_restricted_to_argument_values() -> None:
    ioctl = SYSCALLS_X86_64["ioctl"]
    program = assemble({0, 1}, only={ioctl: (1, (0x5411, 0x541B))})
    assert run(program, ioctl, args=(3, 0x5411)) == SECCOMP_RET_ALLOW
    assert run(program, ioctl, args=(3, 0x541B)) == SECCOMP_RET_ALLOW
    assert run(program, ioctl, args=(3, 0x8933)) == EPERM  # SIOCGIFINDEX: not listed
    assert run(program, 0) == run(program, 1) == SECCOMP_RET_ALLOW
    assert run(program, 2) == EPERM


def _in_filtered_child(names: tuple[str, ...]) -> dict[str, str]:
    """Install ``names`` in a forked child, try a few calls there; their outcomes."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            isolation.no_new_privs()
            seccomp.install(names, only={"ioctl": (1, isolation.IOCTLS)})
            outcomes = {name: _outcome(attempt) for name, attempt in ATTEMPTS.items()}
            os.write(write_fd, json.dumps(outcomes).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def _outcome(attempt) -> str:
    try:
        attempt()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e))
    return "ok"


def _fork_and_reap() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


ATTEMPTS = {
    "execve": lambda: os.execv("/bin/true", ["true"]),
    "fork": _fork_and_reap,
    "open": lambda: os.close(os.open("/etc/hostname", os.O_RDONLY)),
    "getpid": os.getpid,
    "pipe": lambda: [os.close(fd) for fd in os.pipe()],
    "socketpair": socket.socketpair,
}


@on_x86_64
@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_the_installed_filter_refuses_execve_and_more(mode: str) -> None:
    names = isolation.PASST_SYSCALLS if mode == "passt" else isolation.PASTA_SYSCALLS
    outcomes = _in_filtered_child(names)
    print(outcomes)
    assert outcomes["execve"] == "EPERM"
    assert outcomes["fork"] == "EPERM"
    assert outcomes["open"] == "EPERM"
    assert outcomes["getpid"] == "ok"
    assert outcomes["socketpair"] == "EPERM"  # not on the list: nobody needs it once running
    assert outcomes["pipe"] == ("ok" if mode == "pasta" else "EPERM")  # splice pipe pool


# -- architectures ----------------------------------------------------------------

GENERIC_HEADER = "/usr/include/asm-generic/unistd.h"


def test_aarch64_numbers_are_the_generic_tables() -> None:
    with open(GENERIC_HEADER) as f:
        text = f.read()
    kernel = {m[2]: int(m[3]) for m in re.finditer(r"#define __NR(3264)?_(\w+) (\d+)", text)}
    kernel["newfstatat"] = kernel["fstatat"]  # __NR3264_fstatat is newfstatat on 64-bit
    assert {name: kernel.get(name) for name in seccomp.SYSCALLS_AARCH64} == dict(
        seccomp.SYSCALLS_AARCH64)


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_every_listed_call_has_a_number_or_an_aarch64_replacement(machine: str) -> None:
    arch = seccomp.native_arch(machine)
    for names in (isolation.PASST_SYSCALLS, isolation.PASTA_SYSCALLS):
        numbers = seccomp.syscall_numbers(names, arch.table)
        assert len(numbers) >= len(set(names)) - 2, machine
        program = assemble(numbers, arch.audit)
        assert run(program, arch.table["read"], arch.audit) == SECCOMP_RET_ALLOW
        assert run(program, arch.table["execve"], arch.audit) == EPERM
        foreign = next(a.audit for a in seccomp.ARCHES.values() if a is not arch)
        assert run(program, arch.table["read"], foreign) == SECCOMP_RET_KILL_PROCESS


def test_an_unknown_name_is_an_error_on_every_architecture() -> None:
    with pytest.raises(KeyError):
        seccomp.syscall_numbers(["no_such_call"], seccomp.SYSCALLS_AARCH64)


def test_other_architectures_are_refused_with_the_way_out_named(monkeypatch) -> None:
    monkeypatch.setattr(seccomp, "uname_machine", lambda: "riscv64")
    with pytest.raises(seccomp.SeccompUnsupported, match="riscv64"):
        seccomp.native_arch()
    monkeypatch.delenv(isolation.NO_SECCOMP_VARIABLE, raising=False)
    with pytest.raises(isolation.IsolationError, match="PASST_NO_SECCOMP=1"):
        isolation.apply(_unfiltered_plan(monkeypatch))
    monkeypatch.setenv(isolation.NO_SECCOMP_VARIABLE, "1")
    isolation.apply(_unfiltered_plan(monkeypatch))  # warns, returns


def _unfiltered_plan(monkeypatch) -> isolation.Plan:
    """A plan whose isolation steps do nothing, so only the seccomp step runs."""
    monkeypatch.setattr(isolation, "_check_threads", lambda runner: None)
    monkeypatch.setattr(isolation, "_isolate_with_runner", lambda p, runner: None)
    monkeypatch.setattr(isolation, "LATE_IMPORTS", ())
    return isolation.Plan("passt", (0, 0), False, 0, 0, isolation.PASST_SYSCALLS)
