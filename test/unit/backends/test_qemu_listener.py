"""passt's QEMU socket: paths, one client at a time, reconnects, --one-off, --fd."""

from __future__ import annotations

import os
import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from passt.backends import qemu
from passt.backends.dispatch import Dispatcher
from passt.backends.qemu import QemuError, QemuListener
from passt.context import Ctx
from passt.loop import EventLoop


@dataclass
class Opts:
    socket: str | None = None
    fd: int | None = None
    vhost_user: bool = False


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    ev = EventLoop()
    yield ev
    ev.close()


@pytest.fixture
def probe_dir(tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Probed paths in a directory of the test's own, not /tmp."""
    monkeypatch.setattr(qemu, "SOCKET_PATH_TEMPLATE", str(tmp_path / "passt_{}.socket"))
    return str(tmp_path)


def stale_socket(path: str) -> None:
    """A socket file nobody listens on any more."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()


def live_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1)
    return sock


def connect(path: str) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5)
    client.connect(path)
    return client


def run_until(loop: EventLoop, condition, rounds: int = 50) -> None:
    for _ in range(rounds):
        if condition():
            return
        loop.run_once(0.1)
    raise AssertionError("condition not met within the loop rounds")


# -- paths -------------------------------------------------------------------


def test_given_path_is_bound_and_announced(tmp_path, capsys) -> None:
    path = str(tmp_path / "passt.sock")
    listener = qemu.listen(Opts(socket=path))
    try:
        assert os.path.exists(path)
        err = capsys.readouterr().err
        assert f"UNIX domain socket bound at {path}" in err
        assert f"-netdev stream,id=s,server=off,addr.type=unix,addr.path={path}" in err
        assert "qrap 5" in err
    finally:
        listener.close()
    assert not os.path.exists(path)


def test_path_in_use_is_refused(tmp_path) -> None:
    path = str(tmp_path / "busy.sock")
    other = live_socket(path)
    try:
        with pytest.raises(QemuError, match=f"^Socket path {path} already in use$"):
            qemu.listen(Opts(socket=path))
        assert os.path.exists(path)
    finally:
        other.close()


def test_a_file_that_is_no_socket_is_left_alone(tmp_path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(QemuError, match="exists and is not a socket"):
        qemu.listen(Opts(socket=str(path)))
    assert path.read_text() == "keep me"


def test_stale_socket_is_replaced(tmp_path) -> None:
    path = str(tmp_path / "stale.sock")
    stale_socket(path)
    listener = qemu.listen(Opts(socket=path))
    try:
        connect(path).close()
    finally:
        listener.close()


def test_unbindable_path_is_one_clear_error(tmp_path) -> None:
    path = str(tmp_path / "no" / "such" / "dir.sock")
    with pytest.raises(QemuError, match=f"^Failed to bind UNIX domain socket {path}: "):
        qemu.listen(Opts(socket=path))


def test_probing_skips_busy_paths_and_reuses_stale_ones(probe_dir: str) -> None:
    busy = live_socket(os.path.join(probe_dir, "passt_1.socket"))
    open(os.path.join(probe_dir, "passt_2.socket"), "w").close()
    stale_socket(os.path.join(probe_dir, "passt_3.socket"))
    try:
        listener = qemu.listen(Opts())
        assert listener.path == os.path.join(probe_dir, "passt_3.socket")
        listener.close()
    finally:
        busy.close()


def test_probing_gives_up_after_the_last_path(
    probe_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemu, "SOCKET_PATH_PROBES", range(1, 3))
    busy = [live_socket(os.path.join(probe_dir, f"passt_{n}.socket")) for n in (1, 2)]
    try:
        with pytest.raises(QemuError, match="No free UNIX domain socket path from .*passt_1"):
            qemu.listen(Opts())
    finally:
        for sock in busy:
            sock.close()


def test_socket_file_is_removed_even_after_its_directory_moved(tmp_path) -> None:
    """Removal goes through a directory descriptor: isolation can't break it."""
    (tmp_path / "a").mkdir()
    listener = qemu.listen(Opts(socket=str(tmp_path / "a" / "passt.sock")))
    os.rename(tmp_path / "a", tmp_path / "b")
    listener.close()
    assert os.listdir(tmp_path / "b") == []


def test_a_socket_someone_else_put_there_is_not_removed(tmp_path) -> None:
    path = str(tmp_path / "passt.sock")
    listener = qemu.listen(Opts(socket=path))
    os.unlink(path)
    stale_socket(path)  # another instance's
    listener.close()
    assert os.path.exists(path)


# -- clients -------------------------------------------------------------------


def wire(listener: QemuListener, loop: EventLoop, one_off: bool = False) -> Dispatcher:
    """What runtime.run_passt does: clients go to the dispatcher; when one hangs
    up, stop (``--one-off``) or resume listening."""
    dispatcher = Dispatcher(Ctx(loop=loop), {})

    def on_hangup() -> None:
        if one_off:
            loop.stop(0)
        else:
            listener.resume()

    listener.start(loop, lambda stream: dispatcher.attach(stream, on_hangup))
    return dispatcher


def test_clients_are_served_one_at_a_time_and_may_come_back(tmp_path, loop) -> None:
    path = str(tmp_path / "passt.sock")
    listener = qemu.listen(Opts(socket=path))
    dispatcher = wire(listener, loop)
    try:
        first = connect(path)
        run_until(loop, lambda: listener.client is not None)
        served = listener.client

        second = connect(path)  # refused while the first one is served
        run_until(loop, lambda: select.select([second], [], [], 0)[0])
        assert second.recv(1) == b""
        assert listener.client is served

        first.close()
        run_until(loop, lambda: listener.client is None)
        assert dispatcher.ctx.tap is None

        third = connect(path)
        run_until(loop, lambda: listener.client is not None)
        assert listener.client is not served
        third.close()
    finally:
        dispatcher.detach()
        listener.close()


def run_to_the_end(loop: EventLoop, listener: QemuListener) -> int:
    """The loop's exit status (99 if nothing stopped it within 5 s); then close."""
    loop.call_later(5, lambda: loop.stop(99))
    try:
        return loop.run()
    finally:
        listener.close()


def test_hang_up_reaches_the_caller_and_close_removes_the_file(tmp_path, loop) -> None:
    path = str(tmp_path / "passt.sock")
    listener = qemu.listen(Opts(socket=path))
    wire(listener, loop, one_off=True)
    client = connect(path)
    client.sendall(struct.pack("!I", 14) + bytes(14))
    client.close()
    assert run_to_the_end(loop, listener) == 0
    assert not os.path.exists(path)


def test_pre_opened_socket_is_served_at_once_and_is_one_off(loop) -> None:
    ours, theirs = socket.socketpair()
    listener = qemu.listen(Opts(fd=ours.detach()))
    assert listener.path is None
    wire(listener, loop)  # not --one-off: the socket alone implies it
    assert listener.client is not None
    theirs.sendall(struct.pack("!I", 20) + bytes(range(20)))
    assert [bytes(f) for f in listener.client.recv_frames()] == [bytes(range(20))]
    theirs.close()
    assert run_to_the_end(loop, listener) == 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: os.open(os.devnull, os.O_RDONLY), "is not a socket"),
        (lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).detach(),
         "is not a stream socket"),
        (lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).detach(),
         "is not a connected socket"),
    ],
    ids=["file", "datagram", "unconnected"],
)
def test_bad_pre_opened_descriptor_is_refused(make, message: str) -> None:
    fd = make()
    try:
        with pytest.raises(QemuError, match=f"--fd {fd} {message}"):
            qemu.listen(Opts(fd=fd))
    finally:
        os.close(fd)


def test_closed_descriptor_is_refused() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(QemuError, match=f"Invalid --fd {fd}: Bad file descriptor"):
        qemu.listen(Opts(fd=fd))


def vhost_user_features(client: socket.socket, loop: EventLoop) -> int:
    """GET_FEATURES through the listener's vhost-user client, as QEMU starts."""
    from passt.backends import vhost_user

    client.sendall(vhost_user.HEADER.pack(vhost_user.Request.GET_FEATURES, vhost_user.VERSION, 0))
    run_until(loop, lambda: select.select([client], [], [], 0)[0])
    _, _, size = vhost_user.HEADER.unpack(client.recv(vhost_user.HEADER_SIZE))
    return struct.unpack("<Q", client.recv(size))[0]


def test_vhost_user_clients_come_back_and_one_off_ends(tmp_path, loop) -> None:
    from passt.backends.vhost_backend import VhostUserBackend
    from passt.backends.vhost_user import FEATURES

    path = str(tmp_path / "passt.sock")
    listener = qemu.listen(Opts(socket=path, vhost_user=True))
    dispatcher = wire(listener, loop)
    try:
        for _ in range(2):  # QEMU goes away, the next one is served as well
            client = connect(path)
            run_until(loop, lambda: listener.client is not None)
            assert isinstance(listener.client, VhostUserBackend)
            assert vhost_user_features(client, loop) == FEATURES
            client.close()
            run_until(loop, lambda: listener.client is None)
    finally:
        dispatcher.detach()
        listener.close()
    listener = qemu.listen(Opts(socket=path, vhost_user=True))
    wire(listener, loop, one_off=True)
    connect(path).close()
    assert run_to_the_end(loop, listener) == 0
