"""The HDF5 superblock's few fields lorascope needs: where the file ends, and the consistency flags
a SWMR writer sets while it has the file open ("open for writing", "SWMR writer"). A writer that
was killed never clears them, and then every HDF5 reader but a SWMR one refuses the file ("file is
already open for write (may use <h5clear file> to clear file consistency flags)").

Clearing them is what ``h5clear -s`` does: zero the flags byte and rewrite the superblock's
checksum (Jenkins' lookup3, as HDF5 computes metadata checksums). Only version 2 and 3
superblocks (HDF5 ≥ 1.8 with a new-style superblock; every lorascope recording) at offset 0 are
handled: for anything else the caller is told to use ``h5clear -s``.

Layout (HDF5 File Format Specification, "Superblock Format Version 2 and 3"): signature (8 bytes),
version (1), size of offsets (1), size of lengths (1), consistency flags (1), then four addresses
(base, superblock extension, end of file, root group object header), then a 4-byte checksum of
everything before it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Superblock", "read_superblock", "clear_write_flags", "lookup3", "WRITE_FLAGS"]

SIGNATURE = b"\x89HDF\r\n\x1a\n"
FLAGS_OFFSET = 11
# bit 0: opened for writing; bit 2: opened by a SWMR writer (bit 1 is reserved)
WRITE_FLAGS = 0b101
_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class Superblock:
    version: int
    flags: int
    eof: int  # the end-of-file address plus the base address: the file size HDF5 expects
    size: int  # bytes of the superblock, checksum included

    @property
    def open_for_writing(self) -> bool:
        return bool(self.flags & WRITE_FLAGS)


def read_superblock(path: str | Path) -> Superblock | None:
    """The superblock at offset 0 when it is version 2 or 3 with 8-byte offsets, else None."""
    with open(path, "rb") as fh:
        head = fh.read(48)
    if len(head) < 48 or head[:8] != SIGNATURE or head[8] not in (2, 3) or head[9] != 8:
        return None
    base = int.from_bytes(head[12:20], "little")
    eof = int.from_bytes(head[28:36], "little")
    return Superblock(version=head[8], flags=head[FLAGS_OFFSET], eof=base + eof, size=48)


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _MASK; a ^= _rot(c, 4); c = (c + b) & _MASK
    b = (b - a) & _MASK; b ^= _rot(a, 6); a = (a + c) & _MASK
    c = (c - b) & _MASK; c ^= _rot(b, 8); b = (b + a) & _MASK
    a = (a - c) & _MASK; a ^= _rot(c, 16); c = (c + b) & _MASK
    b = (b - a) & _MASK; b ^= _rot(a, 19); a = (a + c) & _MASK
    c = (c - b) & _MASK; c ^= _rot(b, 4); b = (b + a) & _MASK
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b; c = (c - _rot(b, 14)) & _MASK
    a ^= c; a = (a - _rot(c, 11)) & _MASK
    b ^= a; b = (b - _rot(a, 25)) & _MASK
    c ^= b; c = (c - _rot(b, 16)) & _MASK
    a ^= c; a = (a - _rot(c, 4)) & _MASK
    b ^= a; b = (b - _rot(a, 14)) & _MASK
    c ^= b; c = (c - _rot(b, 24)) & _MASK
    return c


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` of ``data``: HDF5's metadata checksum."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _MASK
    if n == 0:
        return c
    # whole 12-byte blocks but the last (which may be whole too) are mixed; the last block is
    # zero-padded, which adds nothing, and finalised
    head = (n - 1) // 12 * 12
    for i in range(0, head, 12):
        a = (a + int.from_bytes(data[i:i + 4], "little")) & _MASK
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & _MASK
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & _MASK
        a, b, c = _mix(a, b, c)
    tail = data[head:].ljust(12, b"\0")
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + int.from_bytes(tail[8:12], "little")) & _MASK
    return _final(a, b, c)


def clear_write_flags(path: str | Path) -> bool:
    """Clears the 'open for writing' flags of a file whose writer is gone, as ``h5clear -s``
    does; False when they were clear already. The caller makes sure no writer is alive."""
    block = read_superblock(path)
    if block is None:
        raise ValueError(f"{path} has no HDF5 superblock of version 2 or 3 at its start")
    if not block.flags:
        return False
    with open(path, "r+b") as fh:
        head = bytearray(fh.read(block.size))
        if lookup3(bytes(head[:-4])) != int.from_bytes(head[-4:], "little"):
            raise ValueError(f"{path}: the superblock's checksum does not match its contents")
        head[FLAGS_OFFSET] = 0
        head[-4:] = lookup3(bytes(head[:-4])).to_bytes(4, "little")
        fh.seek(0)
        fh.write(head)
        fh.flush()
        os.fsync(fh.fileno())
    return True
