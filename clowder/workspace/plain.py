"""Whether git would do anything to a workspace's files beyond storing them as they are: ignore
rules, attributes (line endings, filters), settings that change how files are read or named. Only
where nothing of that applies do Clowder's in-process commit and checkout (worktree.py) stand for
git's `add -A` + `commit` and `read-tree -u`; anywhere else git does the work, as before.

The answer is conservative: a setting this module does not know is taken to matter."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from clowder.workspace.repo import Repo

# Sections that never change what `git add` stores or what a checkout writes.
_SAFE_SECTIONS = frozenset({
    "user", "author", "committer", "init", "color", "alias", "push", "pull", "fetch", "remote", "branch",
    "advice", "diff", "difftool", "merge", "mergetool", "log", "format", "credential", "http", "https", "url",
    "gc", "maintenance", "commit", "tag", "gpg", "safe", "protocol", "pack", "transfer", "rerere", "status",
    "help", "clean", "rebase", "am", "apply", "blame", "column", "grep", "interactive", "pager", "sendemail",
    "web", "receive", "uploadpack", "stash", "trailer", "sequence", "credentialcache", "versionsort", "tar",
    "gui", "instaweb", "i18n", "notes", "repack", "reset", "showbranch", "submodule",
})
# core.* settings and the values for which they change nothing here (None: any value).
_SAFE_CORE: dict[str, frozenset[str] | None] = {
    "repositoryformatversion": frozenset({"0"}),
    "filemode": frozenset({"true", "yes", "on", "1", ""}),
    "bare": frozenset({"false", "no", "off", "0"}),
    "symlinks": frozenset({"true", "yes", "on", "1", ""}),
    "ignorecase": frozenset({"false", "no", "off", "0"}),
    "autocrlf": frozenset({"false", "no", "off", "0"}),
    "logallrefupdates": None, "hookspath": None, "editor": None, "pager": None, "compression": None,
    "loosecompression": None, "packedgitlimit": None, "packedgitwindowsize": None, "deltabasecachelimit": None,
    "bigfilethreshold": None, "fsmonitor": None, "untrackedcache": None, "quotepath": None, "whitespace": None,
    "abbrev": None, "askpass": None, "preloadindex": None, "multipackindex": None, "commitgraph": None,
    "trustctime": None, "checkstat": None, "fsync": None, "fsyncmethod": None, "warnambiguousrefs": None,
    "commentchar": None, "commentstring": None, "sshcommand": None, "notesref": None,
}
_SECTION = re.compile(r'\[\s*([A-Za-z0-9.-]+)(\s+"(?:[^"\\]|\\.)*")?\s*\]\s*([#;].*)?$')
_KEY = re.compile(r'([A-Za-z][A-Za-z0-9-]*)\s*(?:=\s*(.*?))?\s*$')
_ENV = ("GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT", "GIT_CONFIG", "GIT_WORK_TREE", "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_ATTR_SOURCE")

_cache_lock = threading.Lock()
_cache: dict[tuple[tuple[str, int, int], ...], bool] = {}


def plain(repo: Repo) -> bool:
    """Whether git would store this repository's files exactly as they are on disk, and consider
    every file (no ignore rules, no attributes, no setting that changes either)."""
    if any(os.environ.get(v) for v in _ENV):
        return False
    files = [repo.git_dir / "config", *_global_files()]
    if any(_nonempty(p) for p in _rule_files(repo)):
        return False
    key = tuple(_signature(p) for p in files)
    with _cache_lock:
        known = _cache.get(key)
    if known is None:
        known = all(_plain_config(p) for p in files)
        with _cache_lock:
            _cache[key] = known
    return known


def _global_files() -> list[Path]:
    """The user's and the system's config files, where git reads them."""
    home = Path(os.environ.get("HOME", "/"))
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    glob_ = os.environ.get("GIT_CONFIG_GLOBAL")
    files = [Path(glob_)] if glob_ else [home / ".gitconfig", xdg / "git" / "config"]
    if not os.environ.get("GIT_CONFIG_NOSYSTEM"):
        files.append(Path(os.environ.get("GIT_CONFIG_SYSTEM") or "/etc/gitconfig"))
    return files


def _rule_files(repo: Repo) -> list[Path]:
    """Ignore and attribute files git reads besides those in the tree (found by the caller)."""
    home = Path(os.environ.get("HOME", "/"))
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [repo.git_dir / "info" / "exclude", repo.git_dir / "info" / "attributes", xdg / "git" / "ignore",
            xdg / "git" / "attributes", Path("/etc/gitattributes")]


def _nonempty(path: Path) -> bool:
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


def _signature(path: Path) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return str(path), -1, -1
    return str(path), st.st_mtime_ns, st.st_size


def _plain_config(path: Path) -> bool:
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            m = _SECTION.match(line)
            if m is None:
                return False
            section = m.group(1).lower().split(".")[0]
            continue
        if section in _SAFE_SECTIONS:  # whatever it says (quoted, continued): nothing that matters here
            continue
        if line.endswith("\\") or '"' in line:  # continued or quoted values: not parsed here
            return False
        m = _KEY.match(line.split("#")[0].split(";")[0])
        if m is None or not _safe(section, m.group(1).lower(), (m.group(2) or "").lower()):
            return False
    return True


def _safe(section: str, key: str, value: str) -> bool:
    if section != "core" or key not in _SAFE_CORE:
        return False
    values = _SAFE_CORE[key]
    return values is None or value in values
