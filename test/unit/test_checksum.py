"""The Internet checksum against a textbook RFC 1071 implementation."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passt import checksum as cs


def reference_checksum(data: bytes) -> int:
    """RFC 1071 word by word, with end-around carry after every addition."""
    if len(data) & 1:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# Sizes around every branch: odd/even, the NumPy threshold, 32-bit tails.
EDGE_SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 20, 21, 40, 63, 64, 65]
EDGE_SIZES += [cs.NUMPY_THRESHOLD + d for d in range(-3, 6)]
EDGE_SIZES += [1500, 1501, 65535, 65536]


@pytest.mark.parametrize("size", EDGE_SIZES)
@pytest.mark.parametrize("fill", [0x00, 0xFF, 0x5A])
def test_uniform_buffers_match_reference(size: int, fill: int) -> None:
    data = bytes([fill]) * size
    assert cs.checksum(data) == reference_checksum(data)


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_patterned_buffers_match_reference(size: int) -> None:
    data = bytes((i * 7 + 3) & 0xFF for i in range(size))
    assert cs.checksum(data) == reference_checksum(data)


@given(st.binary(max_size=4000))
def test_random_buffers_match_reference(data: bytes) -> None:
    assert cs.checksum(data) == reference_checksum(data)


@given(st.binary(min_size=cs.NUMPY_THRESHOLD, max_size=3 * cs.NUMPY_THRESHOLD))
def test_numpy_and_integer_paths_agree(data: bytes) -> None:
    assert cs.load_numpy(), "NumPy is a test dependency"
    n = len(data)
    assert cs.csum_fold(cs._sum_numpy(data, n)) == cs.csum_fold(cs._sum_small(data, n))
    assert cs.checksum(data) == reference_checksum(data)


@pytest.fixture
def without_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """NumPy not installed, as with the Debian package's Recommends left out."""
    monkeypatch.setitem(sys.modules, "numpy", None)  # makes `import numpy` fail
    monkeypatch.setattr(cs, "_sum_large", cs._first_large)  # restored afterwards


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_without_numpy_large_sums_fall_back_to_pure_python(without_numpy, size: int) -> None:
    data = bytes((i * 13 + 1) & 0xFF for i in range(size))
    assert cs.checksum(data) == reference_checksum(data)
    assert cs.load_numpy() is False
    assert cs._sum_large is cs._sum_small


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_accepts_any_byte_buffer(kind: type) -> None:
    data = bytes(range(256)) * 9 + b"\x01"  # large and odd
    assert cs.checksum(kind(data)) == reference_checksum(data)
    assert cs.checksum(kind(data[:33])) == reference_checksum(data[:33])


@given(st.lists(st.binary(max_size=1500), max_size=5), st.binary(max_size=1500))
def test_accumulators_chain_over_even_pieces(pieces: list[bytes], last: bytes) -> None:
    pieces = [p + b"\0" if len(p) & 1 else p for p in pieces]
    acc = 0
    for piece in pieces + [last]:
        acc = cs.csum_partial(piece, acc)
    assert cs.csum_fold(acc) == reference_checksum(b"".join(pieces) + last)


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4),
       st.integers(0, 255), st.integers(0, 0xFFFF))  # fmt: skip
def test_ipv4_pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> None:
    pseudo = src + dst + struct.pack("!BBH", 0, proto, length)
    payload = b"\x12\x34\x56"
    acc = cs.csum_partial(payload, cs.pseudo_sum(src, dst, proto, length))
    assert cs.csum_fold(acc) == reference_checksum(pseudo + payload)


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16),
       st.integers(0, 255), st.integers(0, 0xFFFFFFFF))  # fmt: skip
def test_ipv6_pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> None:
    pseudo = src + dst + struct.pack("!IxxxB", length, proto)
    acc = cs.pseudo_sum(src, dst, proto, length)
    assert cs.csum_fold(acc) == reference_checksum(pseudo)


@given(st.binary(min_size=2, max_size=200).filter(lambda b: len(b) % 2 == 0),
       st.integers(0, 0xFFFF))  # fmt: skip
def test_incremental_update_with_negative_accumulator(data: bytes, new_word: int) -> None:
    """RFC 1624 style: subtract the old word, add the new one; fold copes with < 0."""
    old_word = int.from_bytes(data[:2], "big")
    acc = cs.csum_partial(data) - old_word + new_word
    updated = new_word.to_bytes(2, "big") + data[2:]
    # Both zeros of ones' complement are correct checksums for the same sum.
    assert cs.csum_fold(acc) % 0xFFFF == reference_checksum(updated) % 0xFFFF


def test_a_buffer_with_its_checksum_sums_to_zero() -> None:
    header = bytearray.fromhex("450000730000400040110000c0a80001c0a800c7")
    struct.pack_into("!H", header, 10, cs.checksum(header))
    assert header[10:12] == bytes.fromhex("b861")  # the example of Wikipedia's article
    assert cs.checksum(header) == 0


def in_fresh_interpreter(code: str) -> None:
    """Run ``code`` where nothing of NumPy was imported yet; it prints "ok"."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=os.path.dirname(os.path.dirname(cs.__file__)))
    assert result.stdout == "ok\n", result.stderr


def test_only_numpys_core_is_loaded_and_numpy_still_imports_afterwards() -> None:
    in_fresh_interpreter(
        "import sys; from passt import checksum as cs; assert cs.load_numpy(); "
        "loaded = sorted(m for m in sys.modules if m.startswith('numpy')); "
        "assert 'numpy' not in loaded and 'numpy.linalg' not in loaded, loaded; "
        "data = bytes(range(256)) * 256; assert cs._sum_large is cs._sum_numpy; "
        "assert cs.csum_partial(data) == cs._sum_small(data, len(data)); "
        "import numpy; assert int(numpy.frombuffer(data, 'u1').sum()) == 255 * 128 * 256; "
        "print('ok')")


def test_a_numpy_whose_core_cannot_be_loaded_alone_is_imported_whole() -> None:
    in_fresh_interpreter(
        "import importlib, sys; from passt import checksum as cs; real = importlib.import_module; "
        "importlib.import_module = lambda name: (_ for _ in ()).throw(RuntimeError('no')) "
        "if name.endswith('_multiarray_umath') else real(name); "
        "core = cs.numpy_core(); import numpy; assert core is numpy and sys.modules['numpy'] "
        "is numpy; print('ok')")


def test_without_numpy_keeps_large_sums_in_python_and_never_loads_it() -> None:
    """pasta with partial checksums: no NumPy, and large sums still right."""
    out = subprocess.run([sys.executable, "-c",
        "import sys; from passt import checksum as cs; cs.without_numpy(); "
        "data = bytes(range(256)) * 256; assert cs._sum_large is cs._sum_small; "
        "assert cs.csum_partial(data) == cs._sum_small(data, len(data)); "
        "assert not [m for m in sys.modules if m.startswith('numpy')]; print('ok')"],
        capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
