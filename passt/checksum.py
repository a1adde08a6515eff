"""The Internet checksum (RFC 1071), fast for 64 KiB frames and for headers.

Theory of operation
-------------------
Every IPv4 header, and every TCP, UDP, ICMP and ICMPv6 message we send to
the guest, carries the ones' complement of the ones' complement sum of its
16-bit big-endian words.  We send frames of up to 64 KiB, so the sum must be
cheap for large buffers, and we also sum dozens of tiny headers per frame,
so it must be cheap *per call* for small ones.  Two facts make both easy:

* 2**16 is 1 modulo 0xffff, so the ones' complement sum of a buffer is the
  buffer read as one big integer, modulo 0xffff.  ``int.from_bytes(...)``
  followed by ``% 0xffff`` is a single C-level pass: the fastest thing Python
  has for a few hundred bytes.
* For large buffers NumPy sums machine words.  Reading the buffer as
  little-endian 32-bit words and summing them into 64 bits is still the
  same sum modulo 0xffff, up to byte order: a little-endian sum is the
  big-endian sum rotated by eight bits, i.e. multiplied by 256 modulo 0xffff,
  and 256 is its own inverse (256 * 256 = 65536 = 1).  So we multiply by 256
  and skip the byte swapping that ``'>u2'`` would cost on every element:
  about twice as fast as summing ``'>u2'`` words (see bench/bench_checksum.py).

NumPy is imported on the first large sum, not at start-up: a namespace is
ready before any frame needs it.  ``load_numpy()`` imports it on purpose
before isolation, after which its files could no longer be opened; until
then ``_sum_large`` is a stand-in that loads it, and loading rebinds
``_sum_large`` to the NumPy sum: the hot path pays nothing for the laziness.
Only NumPy's compiled core is loaded, not the package (``numpy_core``): a
quarter of the time and of the memory.  pasta, whose TCP and UDP payloads
to the namespace leave their checksums to the namespace's kernel, does not
load it at all (``without_numpy()``): what it still sums is small.

NumPy is optional (the Debian package only recommends it): where it is not
installed, loading rebinds ``_sum_large`` to the pure-Python sum, the same
``int.from_bytes`` pass as for small buffers, bit-identical and about thirty
times slower on 64 KiB frames.

Ones' complement arithmetic has two zeros, 0x0000 and 0xffff; the folded sum
of a buffer that is not all zeros is never 0x0000.  ``_reduce`` keeps that
distinction so our checksums are bit-identical to a textbook implementation
(a sum that is a non-zero multiple of 0xffff folds to 0xffff, not 0).

Accumulators
------------
``csum_partial`` returns an *unfolded* accumulator: an integer congruent,
modulo 0xffff, to the sum of the 16-bit words (and non-zero unless every byte
was zero).  Accumulators add: ``csum_partial(b, csum_partial(a))`` is the sum
of ``a`` followed by ``b`` as long as ``a`` has an even length (an odd-length
buffer is padded with one zero byte, as the last buffer of a message is).
``pseudo_sum`` gives the accumulator of a TCP/UDP/ICMPv6 pseudo-header, for
either family; ``csum_fold`` turns any accumulator (even a negative one, as
incremental updates produce) into the 16-bit value to store in a header.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
import types
from collections.abc import Callable
from typing import Any

# What the functions accept: any 1-D buffer of bytes.
Buffer = bytes | bytearray | memoryview

# Below this many bytes, int.from_bytes beats NumPy's per-call overhead
# (measured crossover on these machines: about 1 to 1.5 KiB).
NUMPY_THRESHOLD = 1024


def _reduce(total: int) -> int:
    """Reduce a non-negative word sum modulo 0xffff, keeping 'non-zero' non-zero."""
    rest = total % 0xFFFF
    if rest == 0 and total:
        return 0xFFFF
    return rest


def _sum_small(data: Buffer, length: int) -> int:
    """Word sum of a buffer with int.from_bytes (one C pass, no per-word loop)."""
    value = int.from_bytes(data, "big")
    if length & 1:
        value <<= 8  # pad the odd trailing byte with a zero byte
    return _reduce(value)


def without_numpy() -> None:
    """Keep large sums in pure Python and never load NumPy: for a process that
    hardly sums payloads (pasta with partial checksums, ``Ctx.partial_csum``),
    whose rare large sums are not worth NumPy's memory and start-up."""
    global _sum_large
    _sum_large = _sum_small


def load_numpy() -> bool:
    """Import NumPy's core now (before isolation) and switch large sums to it.

    Returns False, and keeps large sums in pure Python, where NumPy is not
    installed.
    """
    global _sum_large, _np_reduce, _np_words, _U32_LE, _U64
    # NumPy's BLAS starts a pool of idle threads at import unless told not to;
    # we never call BLAS, and an extra thread would keep isolation.py from
    # entering a user namespace.  The variable is read once, at load: put
    # back the caller's.
    blas_threads = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        core = numpy_core()
    except ImportError:
        _sum_large = _sum_small
        return False
    finally:
        if blas_threads is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = blas_threads
    _np_reduce, _np_words = core.add.reduce, core.frombuffer
    _U32_LE, _U64 = core.dtype("<u4"), core.dtype("<u8").type
    _sum_large = _sum_numpy
    return True


def numpy_core() -> Any:
    """NumPy's compiled core (``frombuffer``, ``dtype``, the ``add`` ufunc), without
    the rest of NumPy if it was not imported yet.

    ``import numpy`` runs the package's ``__init__``, which imports its whole
    library (linalg, fft, random, masked arrays, polynomials...): 50-60 ms
    and 17 MiB resident, against 14 ms and 4 MiB for the one extension
    module we call.  So the packages on the way (``numpy`` and ``numpy.core``,
    ``numpy._core`` since NumPy 2) stand in as bare package objects with
    their real paths while the extension module is imported, then are taken
    out of ``sys.modules`` again: the extension and the few submodules it
    imports itself stay, and a later ``import numpy`` elsewhere runs the
    package as usual and finds them there.  A NumPy whose core cannot be
    loaded that way is imported whole.  Raises ``ImportError`` where NumPy
    is not installed.
    """
    if "numpy" in sys.modules:  # imported already (or made unimportable: None)
        return importlib.import_module("numpy")
    spec = importlib.machinery.PathFinder.find_spec("numpy")  # (importlib.util costs 2 ms)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("no NumPy")
    base = spec.submodule_search_locations[0]
    core = "_core" if os.path.isdir(os.path.join(base, "_core")) else "core"
    name = f"numpy.{core}._multiarray_umath"
    before = set(sys.modules)
    stand_ins = []
    for package, path in (("numpy", base), (f"numpy.{core}", os.path.join(base, core))):
        module = types.ModuleType(package)
        module.__path__ = [path]
        sys.modules[package] = module
        stand_ins.append(module)
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a NumPy whose core wants more: the whole of it
        for leftover in set(sys.modules) - before:
            del sys.modules[leftover]
        return importlib.import_module("numpy")
    finally:
        for module in stand_ins:
            if sys.modules.get(module.__name__) is module:
                del sys.modules[module.__name__]


def _first_large(data: Buffer, length: int) -> int:
    """Stands for ``_sum_large`` until the first large sum has loaded NumPy (or not)."""
    load_numpy()
    return _sum_large(data, length)


_np_words: Callable[..., Any]
_np_reduce: Callable[..., Any]
_U32_LE: Any
_U64: Any


def _sum_numpy(data: Buffer, length: int) -> int:
    """Word sum of a large buffer: 32-bit little-endian words summed by NumPy."""
    words = length >> 2
    main = int(_np_reduce(_np_words(data, _U32_LE, words), dtype=_U64))
    tail_len = length & 3
    total = main << 8  # little-endian sum times 256 == big-endian sum (mod 0xffff)
    if tail_len:
        tail = memoryview(data)[words << 2 :]
        total += int.from_bytes(tail, "big") << (8 if tail_len & 1 else 0)
    return _reduce(total)


_sum_large: Callable[[Buffer, int], int] = _first_large


def csum_partial(data: Buffer, acc: int = 0) -> int:
    """Add the 16-bit big-endian words of ``data`` to the accumulator ``acc``."""
    length = len(data)
    if length < NUMPY_THRESHOLD:
        return acc + _sum_small(data, length)
    return acc + _sum_large(data, length)


def csum_fold(acc: int) -> int:
    """Fold an accumulator to 16 bits and invert it: the value for the header."""
    return 0xFFFF - (_reduce(acc) if acc >= 0 else acc % 0xFFFF)


def needs_csum_field(acc: int) -> int:
    """The checksum field of a frame sent for the device to complete (``NEEDS_CSUM``,
    ``Ctx.partial_csum``): the pseudo-header's sum ``acc`` folded, not inverted; the
    device adds the rest and inverts the whole."""
    return 0xFFFF ^ csum_fold(acc)


def checksum(data: Buffer) -> int:
    """The Internet checksum of ``data`` (IPv4 header, ICMP message)."""
    return csum_fold(csum_partial(data))


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Accumulator of the IPv4 or IPv6 pseudo-header (addresses of 4 or 16 bytes).

    Both pseudo-headers hold the two addresses, the protocol number and the
    upper-layer length (16 bits for IPv4, 32 for IPv6); summed as words, the
    layouts differ only in zeros, so one formula serves both.
    """
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length
