"""A downstream workspace's files copied from its upstream's checkout instead of checked out.

Where the file system shares data between files (FICLONE: btrfs, XFS with reflink, bcachefs),
the copies share the upstream's blocks: a chain of jobs costs about one working tree of disk,
where each checkout writes a full one. Elsewhere (ext4 here) copying is no faster than git's
checkout (both wait on creating ~10,000 inodes; git reads one pack where a copy opens every
file: 2.4 s against 3.3 s, medians on the dev machine), so `auto` (the default) checks out
there; CLOWDER_WORKSPACE_COPY=always|never overrides it. The upstream's index comes
along with each entry's stat data replaced by the copy's, so git finds the copy clean without
re-hashing a file. Only files the upstream's index lists, and only when the upstream's HEAD is
the commit being started from, its index holds exactly that commit's tree, and each file's stat
data still says it is what the index recorded (checked on the open file, before and after the
copy): anything else, and the caller checks out as before. Copies are the new workspace's own
files (never hard links): what a job writes never appears in another job's files."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from clowder.workspace.repo import EMPTY_TREE, Repo

_HEADER = struct.Struct(">4sII")
_STAT = struct.Struct(">6I")  # ctime s/ns, mtime s/ns, dev, ino
_OWNER = struct.Struct(">3I")  # uid, gid, size
_FICLONE = 0x40049409  # ioctl(dst, FICLONE, src): share the source's blocks (Linux)
_REGULAR, _EXECUTABLE, _SYMLINK = 0o100644, 0o100755, 0o120000
_RACY_HASH_MAX = 1 << 20  # a file as new as its index is compared by content up to this size
_NO_CLONE = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS, errno.EBADF}
_clone_works: dict[int, bool] = {}  # st_dev -> whether FICLONE works there


class Unsuitable(Exception):
    """The upstream's checkout cannot stand for its commit: check out instead."""


@dataclass(frozen=True)
class _Entry:
    start: int  # offset of the entry in the index
    end: int  # offset of the next entry
    path: str
    mode: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    size: int
    blob: str


MODE_VAR = "CLOWDER_WORKSPACE_COPY"


def _wanted(repo: Repo, upstream: Repo) -> bool:
    """Whether to copy: always, never, or (auto) when both are on one file system that shares data."""
    mode = os.environ.get(MODE_VAR, "auto")
    if mode in ("always", "never"):
        return mode == "always"
    try:
        dev = os.stat(repo.path).st_dev
        if os.stat(upstream.path).st_dev != dev:
            return False
    except OSError:
        return False
    if dev not in _clone_works:
        _clone_works[dev] = _probe_clone(repo.path)
    return _clone_works[dev]


def _probe_clone(where: Path) -> bool:
    """Whether FICLONE works in this directory (two small files, removed at once)."""
    a, b = where / ".clowder-clone-probe-a", where / ".clowder-clone-probe-b"
    try:
        a.write_bytes(b"probe\n")
        with open(a, "rb") as src, open(b, "wb") as dst:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
        return True
    except OSError:
        return False
    finally:
        a.unlink(missing_ok=True)
        b.unlink(missing_ok=True)


def copy_checkout(repo: Repo, upstream: Repo, commit: str) -> bool:
    """Fill `repo` (a new skeleton at `commit`) with the upstream's files and index; False, with
    nothing written, if copying is not wanted here or the upstream's checkout does not hold
    exactly `commit`'s tree."""
    if not _wanted(repo, upstream):
        return False
    try:
        data, entries, extensions, index_mtime = _parse(upstream.git_dir / "index")
        if upstream.head() != commit or _tree(data, extensions) != repo.objects().tree_of(commit):
            return False
        _check_names(entries)
    except (Unsuitable, OSError, ValueError):
        return False
    try:
        stats = _copy_all(upstream.path, repo.path, entries, index_mtime)
    except Unsuitable:
        _undo(repo.path, entries)
        return False
    _write_index(repo.git_dir / "index", data, entries, stats, extensions, max(s[0] for s in stats) if stats else 0)
    return True


def _parse(path: Path) -> tuple[bytes, list[_Entry], list[tuple[bytes, bytes]], int]:
    """The index's bytes, entries, extensions and mtime; Unsuitable for what is not handled here
    (version 4, merge stages, skip-worktree or intent-to-add entries, required extensions)."""
    data = path.read_bytes()
    index_mtime = os.stat(path).st_mtime_ns
    if len(data) < 32 or hashlib.sha1(data[:-20]).digest() != data[-20:]:
        raise Unsuitable("index checksum")
    sig, version, count = _HEADER.unpack_from(data)
    if sig != b"DIRC" or version not in (2, 3):
        raise Unsuitable(f"index version {version}")
    pos, entries = 12, []
    for _ in range(count):
        ctime_s, ctime_n, mtime_s, mtime_n, _dev, ino = _STAT.unpack_from(data, pos)
        mode = int.from_bytes(data[pos + 24:pos + 28], "big")
        size = int.from_bytes(data[pos + 36:pos + 40], "big")
        blob = data[pos + 40:pos + 60].hex()
        flags = int.from_bytes(data[pos + 60:pos + 62], "big")
        start = pos + 62
        if flags & 0x4000:
            if int.from_bytes(data[start:start + 2], "big"):  # skip-worktree, intent-to-add
                raise Unsuitable("extended flags")
            start += 2
        if flags & 0x3000:
            raise Unsuitable("merge stage")
        if mode not in (_REGULAR, _EXECUTABLE, _SYMLINK):  # a submodule: checked out as before
            raise Unsuitable("submodule")
        end = data.index(b"\0", start)
        entries.append(_Entry(pos, pos + ((end - pos + 8) & ~7), data[start:end].decode(errors="surrogateescape"),
                              mode, mtime_s * 10**9 + mtime_n, ctime_s * 10**9 + ctime_n, ino, size, blob))
        pos = entries[-1].end
    extensions = []
    while pos < len(data) - 20:
        name, length = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "big")
        if not name[:1].isupper():  # an extension git requires (split index, sparse index)
            raise Unsuitable(f"index extension {name!r}")
        extensions.append((name, data[pos + 8:pos + 8 + length]))
        pos += 8 + length
    return data, entries, extensions, index_mtime


def _tree(data: bytes, extensions: list[tuple[bytes, bytes]]) -> str | None:
    """The root tree the index's cache-tree says it holds (None: not recorded or invalidated)."""
    count = _HEADER.unpack_from(data)[2]
    for name, body in extensions:
        if name == b"TREE":
            header_end = body.index(b"\n")
            if body[1:header_end].split(b" ")[0] == b"-1":
                return None
            return body[header_end + 1:header_end + 21].hex()
    return EMPTY_TREE if count == 0 else None


def _check_names(entries: list[_Entry]) -> None:
    """Paths git itself would refuse, twice the same path, or a path below another entry (a file
    or symlink): the index is a file in a job's workspace, which the job may have written."""
    paths = {e.path for e in entries}
    if len(paths) != len(entries):
        raise Unsuitable("duplicate paths")
    for e in entries:
        parts = e.path.split("/")
        if e.path.startswith("/") or any(p in ("", ".", "..") or p.lower() == ".git" for p in parts):
            raise Unsuitable(f"path {e.path!r}")
        if any("/".join(parts[:i]) in paths for i in range(1, len(parts))):
            raise Unsuitable(f"path {e.path!r} below a file")


def _same(st: os.stat_result, e: _Entry) -> bool:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size % 2**32, st.st_ino % 2**32) == (e.mtime_ns, e.ctime_ns,
                                                                                     e.size, e.ino)


def _mode_of(st: os.stat_result) -> int:
    return _SYMLINK if stat.S_ISLNK(st.st_mode) else _EXECUTABLE if st.st_mode & 0o100 else _REGULAR


def _copy_all(src_top: Path, dst_top: Path, entries: list[_Entry],
              index_mtime: int) -> list[tuple[int, os.stat_result]]:
    """Copy every entry's file; per entry (mtime of the copy, its stat). Unsuitable if the
    upstream's file no longer matches its index entry."""
    made: set[str] = {""}
    out: list[tuple[int, os.stat_result]] = []
    src_root, dst_root = str(src_top), str(dst_top)
    for e in entries:
        parent = e.path.rpartition("/")[0]
        if parent not in made:
            os.makedirs(os.path.join(dst_root, parent), exist_ok=True)
            made.add(parent)
        src, dst = os.path.join(src_root, e.path), os.path.join(dst_root, e.path)
        if e.mode == _SYMLINK:
            try:
                before = os.lstat(src)
            except OSError as err:
                raise Unsuitable(e.path) from err
            if not stat.S_ISLNK(before.st_mode) or not _fresh(before, e, index_mtime, src):
                raise Unsuitable(e.path)
            os.symlink(os.readlink(src), dst)
            after = os.lstat(dst)
        else:
            after = _copy_file(src, dst, e, index_mtime)
        out.append((after.st_mtime_ns, after))
    return out


def _fresh(st: os.stat_result, e: _Entry, index_mtime: int, path: str) -> bool:
    """Whether the file is still what the index recorded, judged as git does: by stat data, and
    by content when it is as new as the index (a write in the same clock tick hides behind
    unchanged stat data)."""
    if _mode_of(st) != e.mode or not _same(st, e):
        return False
    if st.st_mtime_ns < index_mtime:
        return True
    if st.st_size > _RACY_HASH_MAX:
        return False
    data = os.readlink(path).encode() if e.mode == _SYMLINK else Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == e.blob


def _copy_file(src: str, dst: str, e: _Entry, index_mtime: int) -> os.stat_result:
    try:
        fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:  # gone, or a symlink now (ELOOP): not what the index says
        raise Unsuitable(e.path) from err
    try:
        before = os.fstat(fd_in)
        if not stat.S_ISREG(before.st_mode) or not _fresh(before, e, index_mtime, src):
            raise Unsuitable(e.path)
        # The mode git would give it: 0777/0666 less the umask.
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o777 if e.mode == _EXECUTABLE else 0o666)
        try:
            _clone_or_copy(fd_in, fd_out, before)
            after = os.fstat(fd_out)
        finally:
            os.close(fd_out)
        if os.fstat(fd_in).st_ctime_ns != before.st_ctime_ns:  # written to while copied
            raise Unsuitable(e.path)
        return after
    finally:
        os.close(fd_in)


def _clone_or_copy(fd_in: int, fd_out: int, st: os.stat_result) -> None:
    if _clone_works.get(st.st_dev, True):
        try:
            fcntl.ioctl(fd_out, _FICLONE, fd_in)
            _clone_works[st.st_dev] = True
            return
        except OSError as e:
            if e.errno not in _NO_CLONE:
                raise
            _clone_works[st.st_dev] = False
    left = st.st_size
    while left > 0:
        n = os.copy_file_range(fd_in, fd_out, left)
        if n == 0:  # the file shrank: the ctime check after the copy says so
            break
        left -= n


def _undo(top: Path, entries: list[_Entry]) -> None:
    """Remove what a copy cut short wrote, so the checkout starts from an empty working tree."""
    for e in entries:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            os.unlink(top / e.path)
    made = []
    for dirpath, dirs, _ in os.walk(top):
        if dirpath == str(top):
            dirs[:] = [d for d in dirs if d != ".git"]
        made += [os.path.join(dirpath, d) for d in dirs]
    for d in reversed(made):  # deepest first
        with contextlib.suppress(OSError):
            os.rmdir(d)


def _write_index(path: Path, data: bytes, entries: list[_Entry], stats: list[tuple[int, os.stat_result]],
                 extensions: list[tuple[bytes, bytes]], newest_ns: int) -> None:
    """The upstream's index with each entry's stat data the copy's; only the cache-tree
    extension is kept (the others describe the upstream's directories)."""
    parts = [data[:12]]
    for e, (_, st) in zip(entries, stats, strict=True):
        entry = bytearray(data[e.start:e.end])
        _STAT.pack_into(entry, 0, int(st.st_ctime) % 2**32, st.st_ctime_ns % 10**9, int(st.st_mtime) % 2**32,
                        st.st_mtime_ns % 10**9, st.st_dev % 2**32, st.st_ino % 2**32)
        _OWNER.pack_into(entry, 28, st.st_uid % 2**32, st.st_gid % 2**32, st.st_size % 2**32)
        parts.append(bytes(entry))
    parts += [name + len(body).to_bytes(4, "big") + body for name, body in extensions if name == b"TREE"]
    body = b"".join(parts)
    tmp = path.with_name("index.lock")
    tmp.write_bytes(body + hashlib.sha1(body).digest())
    os.replace(tmp, path)
    # A file as new as the index is "racily clean": git would re-hash it. The clock is coarse:
    # wait for it to pass the newest copy (a few ms at most) and date the index after it.
    deadline = time.monotonic() + 1
    while os.stat(path).st_mtime_ns <= newest_ns and time.monotonic() < deadline:
        time.sleep(0.002)
        os.utime(path)
