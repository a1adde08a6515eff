"""passt's side of a live migration: the device state, moved through QEMU's pipe.

Theory of operation
-------------------
The vhost-user back end (``backends.vhost_backend``) calls ``transfer(fd,
load)`` once QEMU has asked for the device state and has its reply, with the
guest stopped.  On the source (``load`` false) we gather the state
(``wire.DeviceState``: the guest's addresses and MAC, every established TCP
connection dumped by ``migrate.tcp``), encode it and write it all to the
pipe; QEMU reads until we close it.  On the target we read the pipe to its
end (QEMU writes everything, then closes), decode the whole stream first
(``wire.decode``: a stream that does not decode whole changes nothing),
then take the MAC and restore the connections.  The result, 0 or an errno,
is what ``CHECK_DEVICE_STATE`` answers; a stream we refuse answers
``EPROTO`` after one line saying why.

When QEMU checks a successful save, the guest runs on the target from now
on: with ``--migrate-exit`` the source passt exits (status 0), otherwise
it stays, serving whatever connects next, as upstream does (it no longer
exits when QEMU goes, even with ``--one-off``).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from passt import log
from passt.migrate import tcp as migrate_tcp
from passt.migrate import wire
from passt.migrate.repair import RepairChannel, RepairError, default_path
from passt.tcp import tap as tcp_tap

if TYPE_CHECKING:
    from passt.context import Ctx

READ_CHUNK = 1 << 20


class Migration:
    """Source or target of one passt's migrations (``DeviceStateHandler``)."""

    def __init__(self, ctx: Ctx, repair: RepairChannel, no_linger: bool = False,
                 on_migrated: Callable[[], None] | None = None) -> None:
        self.ctx = ctx
        self.repair = repair
        self.no_linger = no_linger
        self.on_migrated = on_migrated  # a save was checked successful
        self.lingering: list[socket.socket] = []  # sockets kept silent, without --migrate-no-linger

    # -- DeviceStateHandler --------------------------------------------------

    def transfer(self, fd: int, load: bool) -> int:
        started = time.monotonic()
        try:
            os.set_blocking(fd, True)
            if load:
                count = self.load(_read_all(fd))
            else:
                count = self.save(fd)
        except wire.StateError as e:
            log.err("Migration: %s", e)
            return errno.EPROTO
        except OSError as e:
            log.err("Migration failed: %s", e.strerror or e)
            return e.errno or errno.EIO
        except Exception as e:  # noqa: BLE001 - a bug here must not end the guest's network
            log.err("Migration failed: %r", e)
            return errno.EIO
        finally:
            os.close(fd)
        log.info("Migration: %s %d TCP connections in %.1f ms", "restored" if load else "sent",
                 count, (time.monotonic() - started) * 1000)
        return 0

    def checked(self, result: int, load: bool) -> None:
        if result or load:
            return
        log.info("Migration complete")
        if self.on_migrated is not None:
            self.on_migrated()

    # -- the two sides -------------------------------------------------------

    def state(self) -> wire.DeviceState:
        """What the source sends: addresses and MAC, established connections."""
        ctx = self.ctx
        tcp = ctx.tcp
        flows = migrate_tcp.dump(ctx, self.repair, self.no_linger, self.lingering)
        return wire.DeviceState(
            addr6=tcp.guest6 or bytes(16), addr4=tcp.guest4 or bytes(4),
            mac=ctx.guest_mac, flows=flows)

    def save(self, fd: int) -> int:
        state = self.state()
        _write_all(fd, wire.encode(state))
        return len(state.flows)

    def load(self, data: bytes) -> int:
        state = wire.decode(data)
        ctx = self.ctx
        if not state.mac[0] & 1 and any(state.mac):
            ctx.guest_mac = state.mac
            tcp_tap.guest_mac_changed(ctx)
        if any(state.addr4):
            ctx.tcp.guest4 = state.addr4
        if any(state.addr6):
            ctx.tcp.guest6 = state.addr6
        try:
            return migrate_tcp.restore(ctx, self.repair, state.flows)
        except RepairError as e:
            log.err("Migration: %s", e.strerror or e)
            return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def setup(ctx: Ctx, conf: object, socket_path: str | None,
          on_migrated: Callable[[], None]) -> Migration | None:
    """The migration of ``passt --vhost-user`` (None otherwise): the repair socket listens."""
    if not getattr(conf, "vhost_user", False):
        return None
    path = getattr(conf, "repair_path", None)
    if path is None and socket_path is not None:
        path = default_path(socket_path)
    return Migration(ctx, RepairChannel.listen(path), bool(getattr(conf, "migrate_no_linger",
                                                                      False)), on_migrated)


def close(migration: Migration | None) -> None:
    if migration is not None:
        migration.repair.close()
        for sock in migration.lingering:
            sock.close()
