"""git's index file (`.git/index`), read and written in-process for the plain case: version 2 or 3,
no merge stages, no flags git would act on, and a cache-tree (`TREE`) extension written with it, so
that git, `unchanged.untouched` and a hand-on (handon.py) all read the tree it holds without
hashing anything. Anything else is `None`, and the caller lets git do the work."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

_ENTRY = struct.Struct(">10I20sH")  # ctime s/ns, mtime s/ns, dev, ino, mode, uid, gid, size, id, flags
_NAME_MASK = 0x0FFF
_UNHANDLED_FLAGS = 0x8000 | 0x4000 | 0x3000  # assume-valid, extended (skip-worktree, intent-to-add), stage
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Entry:
    """One index entry: a file's path (bytes, as git sorts them), its blob and the stat data git
    compares to say the file is unchanged without reading it."""

    path: bytes
    mode: int
    blob: str
    ctime_ns: int
    mtime_ns: int
    dev: int
    ino: int
    uid: int
    gid: int
    size: int

    @classmethod
    def of(cls, path: bytes, mode: int, blob: str, st: os.stat_result) -> Entry:
        return cls(path, mode, blob, st.st_ctime_ns, st.st_mtime_ns, st.st_dev, st.st_ino, st.st_uid, st.st_gid,
                   st.st_size)

    def same_stat(self, st: os.stat_result) -> bool:
        """Whether `st` is the stat data recorded (git truncates every field to 32 bits)."""
        return (self.mtime_ns, self.ctime_ns, self.ino & _U32, self.size & _U32) == (
            _ns32(st.st_mtime_ns), _ns32(st.st_ctime_ns), st.st_ino & _U32, st.st_size & _U32)


@dataclass(frozen=True)
class Index:
    entries: dict[bytes, Entry]
    mtime_ns: int  # the file's own: an entry as new as it is "racily clean" and must be compared by content


def _ns32(ns: int) -> int:
    """A time in ns as the index can hold it: 32-bit seconds and nanoseconds."""
    return (ns // 10**9 & _U32) * 10**9 + ns % 10**9


def read_index(path: Path) -> Index | None:
    """The entries of a plain index (an absent one is empty); None for anything git should handle."""
    try:
        with open(path, "rb") as f:
            data, mtime = f.read(), os.fstat(f.fileno()).st_mtime_ns
    except FileNotFoundError:
        return Index({}, 0)
    if len(data) < 32 or data[:4] != b"DIRC" or data[4:8] not in (b"\0\0\0\2", b"\0\0\0\3"):
        return None
    count, pos = int.from_bytes(data[8:12], "big"), 12
    entries: dict[bytes, Entry] = {}
    for _ in range(count):
        v = _ENTRY.unpack_from(data, pos)
        if v[11] & _UNHANDLED_FLAGS:
            return None
        end = data.index(b"\0", pos + 62)
        name = data[pos + 62:end]
        entries[name] = Entry(name, v[6], v[10].hex(), v[0] * 10**9 + v[1], v[2] * 10**9 + v[3], v[4], v[5], v[7],
                              v[8], v[9])
        pos += (end - pos + 8) & ~7  # entries are NUL-padded to a multiple of 8 bytes
    while pos < len(data) - 20:  # an extension git requires us to understand (lower-case name): not plain
        if not data[pos:pos + 1].isupper():
            return None
        pos += 8 + int.from_bytes(data[pos + 4:pos + 8], "big")
    return Index(entries, mtime)


@dataclass(frozen=True)
class CachedTree:
    """One directory's line of the cache-tree: its path below the root ("" for the root), how many
    index entries it covers, its direct subdirectories and its tree object."""

    path: bytes
    entries: int
    subtrees: tuple[bytes, ...]  # names
    tree: str


def write_index(path: Path, entries: Iterable[Entry], trees: Mapping[bytes, CachedTree]) -> None:
    """Write a version 2 index of `entries` with `trees` as its cache-tree, as git does: to
    `index.lock`, then renamed over the index."""
    out = [b"DIRC", struct.pack(">II", 2, 0)]
    count = 0
    for e in sorted(entries, key=lambda e: e.path):
        out.append(_ENTRY.pack(e.ctime_ns // 10**9 & _U32, e.ctime_ns % 10**9, e.mtime_ns // 10**9 & _U32,
                               e.mtime_ns % 10**9, e.dev & _U32, e.ino & _U32, e.mode, e.uid & _U32, e.gid & _U32,
                               e.size & _U32, bytes.fromhex(e.blob), min(len(e.path), _NAME_MASK)))
        out.append(e.path + b"\0" * (8 - (62 + len(e.path)) % 8))
        count += 1
    out[1] = struct.pack(">II", 2, count)
    if trees:
        body = b"".join(_cache_tree(trees, b""))
        out += [b"TREE", struct.pack(">I", len(body)), body]
    data = b"".join(out)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "wb") as f:
        f.write(data + hashlib.sha1(data).digest())
    os.replace(lock, path)


def _cache_tree(trees: Mapping[bytes, CachedTree], path: bytes) -> Iterable[bytes]:
    """The cache-tree's lines, depth first: "<name>\\0<entries> <subtrees>\\n<id>"."""
    node = trees[path]
    name = path.rsplit(b"/", 1)[-1]
    yield b"%s\0%d %d\n" % (name, node.entries, len(node.subtrees)) + bytes.fromhex(node.tree)
    for sub in node.subtrees:
        yield from _cache_tree(trees, path + b"/" + sub if path else sub)
