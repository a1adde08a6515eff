"""Files we made and must remove at exit, when the filesystem may be out of reach.

Theory of operation
-------------------
passt's socket and the ``--pid`` file are created before isolation, and
removed at exit, after it: by then the mount namespace holds an empty root
and no path resolves.  ``FileRef`` keeps a descriptor of the file's directory
(``O_PATH``) and the file's identity (device, inode) from creation time;
``remove()`` unlinks the name relative to that descriptor (``unlinkat``, in
both programs' seccomp lists), and only if the name still refers to the file
we made, so that a file someone put there since is left alone.  Failures
(permissions after ``--runas``, the name gone) are logged at debug level:
nothing can be done about them at exit.
"""

from __future__ import annotations

import os

from passt import log


class FileRef:
    """A file of ours, removable later even without the filesystem."""

    def __init__(self, path: str) -> None:
        directory, self.name = os.path.split(os.path.abspath(path))
        self._dir_fd: int | None = os.open(directory,
                                           os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.stat(self.name, dir_fd=self._dir_fd, follow_symlinks=False)
        self._identity = (st.st_dev, st.st_ino)

    def remove(self) -> None:
        """Unlink the file if the name still refers to ours; later calls do nothing."""
        if self._dir_fd is None:
            return
        try:
            st = os.stat(self.name, dir_fd=self._dir_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.name, dir_fd=self._dir_fd)
        except OSError as e:
            log.debug("Couldn't remove %s: %s", self.name, e.strerror)
        finally:
            os.close(self._dir_fd)
            self._dir_fd = None
