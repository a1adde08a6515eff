"""Logging: levels, destinations, the bounded log file, syslog, die()."""

from __future__ import annotations

import os
import re
import socket
from types import SimpleNamespace

import pytest

from passt import log

STAMP = r"\d+\.\d{4}: "


def options(**overrides: object) -> SimpleNamespace:
    values: dict[str, object] = dict(
        debug=False, trace=False, quiet=False, stderr=False,
        log_file=None, log_size=log.LOG_SIZE_DEFAULT, foreground=True,
    )  # fmt: skip
    values.update(overrides)
    return SimpleNamespace(**values)


@pytest.fixture(autouse=True)
def fresh_log():
    log.close()
    yield
    log.close()


def emit_all_levels() -> None:
    log.err("an error %d", 1)
    log.warn("a warning")
    log.info("some info")
    log.debug("debugging")
    log.trace("tracing")


def test_before_setup_messages_are_plain_lines_on_stderr(capsys):
    log.info("hello %s", "world")
    log.debug("not shown")
    assert capsys.readouterr().err == "hello world\n"


def test_default_level_is_info_without_timestamps(capsys):
    log.setup(options())
    emit_all_levels()
    assert capsys.readouterr().err == "an error 1\na warning\nsome info\n"
    assert not log.DEBUG and not log.TRACE


def test_quiet_keeps_errors_and_warnings(capsys):
    log.setup(options(quiet=True))
    emit_all_levels()
    assert capsys.readouterr().err == "an error 1\na warning\n"


def test_debug_adds_debug_messages_and_relative_timestamps(capsys):
    log.setup(options(debug=True))
    emit_all_levels()
    lines = capsys.readouterr().err.splitlines()
    assert [re.sub(STAMP, "", line, count=1) for line in lines] == [
        "an error 1", "a warning", "some info", "debugging",
    ]  # fmt: skip
    assert all(re.match(STAMP, line) for line in lines)
    assert log.DEBUG and not log.TRACE


def test_trace_implies_debug(capsys):
    log.setup(options(trace=True))
    emit_all_levels()
    assert "tracing" in capsys.readouterr().err
    assert log.DEBUG and log.TRACE


def test_disabled_levels_do_not_format_their_arguments():
    class Explosive:
        def __str__(self) -> str:
            raise AssertionError("formatted")

    log.setup(options())
    log.debug("%s", Explosive())
    log.trace("%s", Explosive())


def test_log_file_gets_everything_with_prefixes_and_stderr_nothing(tmp_path, capsys):
    path = tmp_path / "passt.log"
    log.setup(options(log_file=str(path), debug=True), ident="pasta")
    emit_all_levels()
    assert capsys.readouterr().err == ""
    lines = path.read_text().splitlines()
    assert re.fullmatch(rf"pasta \S+: .+ \({os.getpid()}\)", lines[0])
    body = [re.sub(STAMP, "", line, count=1) for line in lines[1:]]
    assert body == [
        "ERROR:   an error 1", "WARNING: a warning", "info:    some info", "         debugging",
    ]  # fmt: skip
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_stderr_option_copies_file_messages_to_stderr(tmp_path, capsys):
    path = tmp_path / "passt.log"
    log.setup(options(log_file=str(path), stderr=True))
    log.info("both")
    assert capsys.readouterr().err == "both\n"
    assert path.read_text().endswith("info:    both\n")


def test_unopenable_log_file_is_one_line_and_exit_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        log.setup(options(log_file=str(tmp_path / "missing" / "x.log")))
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Couldn't open log file")


def test_log_file_never_exceeds_its_size_and_keeps_the_newest_lines(tmp_path):
    path = tmp_path / "small.log"
    size = 4096
    logfile = log.LogFile.open(str(path), size, b"header line\n")
    for i in range(3000):
        logfile.write(f"line {i:05d} {'x' * (i % 97)}\n".encode())
        assert os.path.getsize(path) <= size
    logfile.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[0] == b"header line" and lines[-1] == b""
    numbers = [int(line.split()[1]) for line in lines[1:-1]]
    assert numbers == list(range(numbers[0], 3000))
    assert os.path.getsize(path) > size * (1 - log.CUT_RATIO) - 200


def test_overlong_line_is_cut_but_still_a_line(tmp_path):
    path = tmp_path / "small.log"
    logfile = log.LogFile.open(str(path), 1024, b"h\n")
    logfile.write(b"y" * 5000 + b"\n")
    logfile.write(b"after\n")
    logfile.close()
    data = path.read_bytes()
    assert len(data) <= 1024 and data.endswith(b"\nafter\n")


def test_die_logs_one_line_and_exits_1(capsys):
    with pytest.raises(SystemExit) as exc:
        log.die("fatal: %s", "reason")
    assert exc.value.code == 1
    assert capsys.readouterr().err == "fatal: reason\n"


@pytest.fixture
def syslog_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    monkeypatch.setattr(log, "SYSLOG_PATH", path)
    yield sock
    sock.close()


def test_detached_without_log_file_goes_to_syslog(syslog_socket, capsys):
    log.setup(options(foreground=False), ident="passt")
    log.info("before detaching")
    log.set_detached()
    log.warn("to syslog %d", 42)
    message = syslog_socket.recv(4096).decode()
    assert re.fullmatch(rf"<28>\w{{3}} [ \d]\d \d\d:\d\d:\d\d passt\[{os.getpid()}\]: to syslog 42",
                        message)
    assert capsys.readouterr().err == "before detaching\n"


def test_debug_never_uses_syslog(syslog_socket):
    log.setup(options(foreground=False, debug=True))
    log.set_detached()
    log.err("not to syslog")
    syslog_socket.setblocking(False)
    with pytest.raises(BlockingIOError):
        syslog_socket.recv(4096)


def test_missing_syslog_socket_is_silent(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(log, "SYSLOG_PATH", str(tmp_path / "no-such-socket"))
    log.setup(options(foreground=False))
    log.set_detached()
    for _ in range(100):
        log.err("lost")
    assert capsys.readouterr().err == ""
