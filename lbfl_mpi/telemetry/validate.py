"""Check a rank file with plain file I/O before HDF5 opens it.

Why: rank files are read with ``swmr=True`` (``open_rank_file``) so that the file of a killed writer
stays readable. A SWMR reader skips HDF5's own "truncated file" check at open (a live writer may be
growing the file), and when it later reads metadata past the end of the bytes on disk it gets zeros,
fails the checksum and retries with a sleep that doubles every time (``H5C__load_entry``: 100
attempts by default under SWMR, starting at 1 ns, i.e. about 2**100 ns): on a truncated copy the read
never returns. Comparing the superblock's end-of-file address with the file's size first turns that
into a one-line error.

Layout used, from the HDF5 File Format Specification (version 3.0), section II.A "Disk Format:
Level 0A - Format Signature and Superblock":

- the format signature ``\\x89HDF\\r\\n\\x1a\\n`` at offset 0 (or 512, 1024, 2048, ... after a user
  block), followed by the superblock version byte;
- versions 0 and 1: size of offsets at byte 13, file consistency flags at 20 (4 bytes), then from byte
  24 (version 0) or 28 (version 1, after the indexed-storage K and 2 reserved bytes) the base address,
  the free-space info address, the end-of-file address and the driver information block address;
- versions 2 and 3: size of offsets (byte 9), size of lengths (10), file consistency flags (11), then
  the base address, superblock extension address, end-of-file address and root group object header
  address (each ``size of offsets`` bytes) and the "Superblock Checksum" of everything before it,
  which HDF5 computes with Bob Jenkins' lookup3 hash (``H5_checksum_lookup3`` in H5checksum.c);
- file consistency flags (used for file locking from version 3 on): bit 0 "opened for write access",
  bit 2 "opened for SWMR write access";
- addresses are little-endian and, except the end-of-file address (an absolute address, which is
  what HDF5 compares with the file's size when it opens a file without SWMR), relative to the base
  address; all bits set means "undefined".
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..files import NotRegularFile, open_regular

SIGNATURE = b"\x89HDF\r\n\x1a\n"
FLAG_WRITE = 0x01
FLAG_SWMR_WRITE = 0x04
_SUPERBLOCK_MAX = 128  # bytes from the signature that hold every field read here, offsets up to 16 bytes
_LIVE_RECHECKS = 10  # re-reads, LIVE_WAIT_S apart, of a file that a live writer may be growing
LIVE_WAIT_S = 0.05


class BadFile(ValueError):
    """A file that is not a whole HDF5 file; the message is the one-line reason."""


@dataclass(frozen=True)
class Superblock:
    version: int
    offset: int  # where the signature is (the user block's size)
    size_of_offsets: int
    flags: int
    base: int
    eof: int  # the end-of-file address: the file's size when it was last flushed

    @property
    def writer_open(self) -> bool:
        """The superblock says a writer has the file open (or was killed with it open)."""
        return bool(self.flags & (FLAG_WRITE | FLAG_SWMR_WRITE))

    @property
    def swmr_writer(self) -> bool:
        """The superblock says a SWMR writer has the file open (or was killed with it open)."""
        return self.version >= 3 and bool(self.flags & FLAG_SWMR_WRITE)


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    m = 0xFFFFFFFF
    a = ((a - c) & m) ^ _rot(c, 4); c = (c + b) & m
    b = ((b - a) & m) ^ _rot(a, 6); a = (a + c) & m
    c = ((c - b) & m) ^ _rot(b, 8); b = (b + a) & m
    a = ((a - c) & m) ^ _rot(c, 16); c = (c + b) & m
    b = ((b - a) & m) ^ _rot(a, 19); a = (a + c) & m
    c = ((c - b) & m) ^ _rot(b, 4); b = (b + a) & m
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    m = 0xFFFFFFFF
    c ^= b; c = (c - _rot(b, 14)) & m
    a ^= c; a = (a - _rot(c, 11)) & m
    b ^= a; b = (b - _rot(a, 25)) & m
    c ^= b; c = (c - _rot(b, 16)) & m
    a ^= c; a = (a - _rot(c, 4)) & m
    b ^= a; b = (b - _rot(a, 14)) & m
    c ^= b; c = (c - _rot(b, 24)) & m
    return c


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, the checksum of HDF5 metadata (superblock v2/v3)."""
    a = b = c = (0xDEADBEEF + len(data) + initval) & 0xFFFFFFFF
    if not data:
        return c
    rest = len(data) - 1 - (len(data) - 1) % 12  # full blocks mixed; the last 1..12 bytes are final
    for i in range(0, rest, 12):
        w = [int.from_bytes(data[i + j:i + j + 4], "little") for j in (0, 4, 8)]
        a, b, c = _mix((a + w[0]) & 0xFFFFFFFF, (b + w[1]) & 0xFFFFFFFF, (c + w[2]) & 0xFFFFFFFF)
    tail = data[rest:].ljust(12, b"\0")
    w = [int.from_bytes(tail[j:j + 4], "little") for j in (0, 4, 8)]
    return _final((a + w[0]) & 0xFFFFFFFF, (b + w[1]) & 0xFFFFFFFF, (c + w[2]) & 0xFFFFFFFF)


def _find_signature(fh, size: int) -> int:
    """Offset of the format signature: 0, or a power of two >= 512 (after a user block)."""
    at = 0
    while at + len(SIGNATURE) <= size:
        fh.seek(at)
        if fh.read(len(SIGNATURE)) == SIGNATURE:
            return at
        at = 512 if at == 0 else at * 2
    raise BadFile("not an HDF5 file (no HDF5 format signature)")


def _addr(buf: bytes, at: int, size: int) -> int:
    if at + size > len(buf):
        raise BadFile("truncated (file ends inside the HDF5 superblock)")
    return int.from_bytes(buf[at:at + size], "little")


def parse_superblock(sb: bytes, at: int = 0) -> Superblock:
    """The fields of the superblock ``sb`` (the bytes from the signature on, found at ``at``)."""
    if len(sb) < 12:
        raise BadFile("truncated (file ends inside the HDF5 superblock)")
    version = sb[8]
    if version in (0, 1):
        o, flags = sb[13], _addr(sb, 20, 4)
        first = 24 if version == 0 else 28
        base_at, eof_at = first, first + 2 * o
    elif version in (2, 3):
        o, flags = sb[9], sb[11]
        base_at, eof_at = 12, 12 + 2 * o
        end = 12 + 4 * o
        if _addr(sb, end, 4) != lookup3(sb[:end]):
            raise BadFile("corrupt HDF5 superblock (checksum mismatch)")
    else:
        raise BadFile(f"unknown HDF5 superblock version {version}")
    if o not in (2, 4, 8, 16):
        raise BadFile(f"corrupt HDF5 superblock (size of offsets {o})")
    undefined = (1 << (8 * o)) - 1
    base, eof = _addr(sb, base_at, o), _addr(sb, eof_at, o)
    if eof == undefined:
        raise BadFile("corrupt HDF5 superblock (end-of-file address undefined)")
    return Superblock(version=version, offset=at, size_of_offsets=o, flags=flags, base=base, eof=eof)


def read_superblock(path: str | os.PathLike) -> tuple[Superblock | None, int]:
    """(superblock, file size) of a regular file; (None, 0) for an empty one. Raises BadFile."""
    try:
        with open_regular(path) as fh:  # O_NONBLOCK + fstat: a FIFO swapped in after a stat cannot block
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return None, 0
            at = _find_signature(fh, size)
            fh.seek(at)
            return parse_superblock(fh.read(_SUPERBLOCK_MAX), at), size
    except NotRegularFile:
        raise BadFile("not a regular file") from None
    except OSError as e:
        raise BadFile(f"cannot read ({e.strerror or e})") from None


def _check_once(path: Path) -> tuple[str | None, bool]:
    """(reason or None, whether a writer may still be extending the file)."""
    sb, size = read_superblock(path)
    if sb is None:
        return "empty file (0 bytes)", False
    if size < sb.eof:
        return f"truncated (file is {size} bytes, the HDF5 superblock says {sb.eof})", sb.writer_open
    return None, False


def check_rank_file(path: str | os.PathLike) -> str | None:
    """None when ``path`` looks like a whole HDF5 file (signature, superblock, its checksum, and an
    end-of-file address within the file), else a one-line reason without the path (the caller adds
    it). Damage inside a whole-sized file is beyond this check: the reader must still bound its own
    retries (analysis/load.py).

    A file that a live writer is flushing can show a superblock end-of-file address ahead of the bytes
    on disk for a moment (seen under SWMR: sub-millisecond, up to tens of kB); a file whose superblock
    says a writer has it open is therefore re-read for up to half a second before it is called
    truncated. A file is never passed while it is shorter than its superblock says: a copy taken in
    that moment stays "truncated", and is (HDF5 cannot tell which of its blocks are missing).
    """
    p = Path(path)
    try:
        reason, live = _check_once(p)
        for _ in range(_LIVE_RECHECKS if live else 0):
            time.sleep(LIVE_WAIT_S)
            reason, live = _check_once(p)
            if reason is None or not live:
                break
    except BadFile as e:
        return str(e)
    return reason
