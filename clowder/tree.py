"""The tree: where every file of a Clowder root lives (DESIGN §1). Names are checked here,
before they become paths, so nothing can point outside the root."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from clowder.errors import RootNotFound, UsageError

CONFIG_FILE = "clowder.toml"
ROOT_ENV = "CLOWDER_ROOT"

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)
NAME_RULE = "names are 1-64 characters of a-z, 0-9, '.', '_', '-' and start with a letter or digit"


def is_name(name: object) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def check_name(name: str, what: str) -> str:
    """Return `name` if it is a valid pipeline/job name, else raise UsageError."""
    if not is_name(name):
        raise UsageError(f"invalid {what} name {name!r}: {NAME_RULE}")
    return name


@dataclass(frozen=True)
class PipelinePaths:
    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def spec_file(self) -> Path:
        return self.dir / "pipeline.toml"

    @property
    def jobs_dir(self) -> Path:
        return self.dir / "jobs"

    @property
    def requests_dir(self) -> Path:
        return self.dir / "requests"

    @property
    def status_file(self) -> Path:
        return self.dir / "status.toml"

    @property
    def status_dir(self) -> Path:
        return self.dir / "status"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def workspaces_dir(self) -> Path:
        return self.dir / "workspaces"

    def job_file(self, job: str) -> Path:
        return self.jobs_dir / f"{check_name(job, 'job')}.toml"

    def job_status_file(self, job: str) -> Path:
        return self.status_dir / f"{check_name(job, 'job')}.toml"

    def log_file(self, job: str, attempt: int) -> Path:
        return self.logs_dir / check_name(job, "job") / f"{int(attempt)}.log"

    def workspace(self, job: str) -> Path:
        return self.workspaces_dir / check_name(job, "job")

    def job_names(self) -> list[str]:
        """Stems of jobs/*.toml, valid or not: the validator reports bad ones."""
        try:
            with os.scandir(self.jobs_dir) as it:
                return sorted(e.name[:-5] for e in it if e.name.endswith(".toml") and not e.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []


@dataclass(frozen=True)
class Root:
    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def templates_dir(self) -> Path:
        return self.path / "templates"

    @property
    def pipelines_dir(self) -> Path:
        return self.path / "pipelines"

    @property
    def state_dir(self) -> Path:
        return self.path / ".clowder"

    @property
    def tmp_dir(self) -> Path:
        """Temp files for atomic writes: same file system, never watched."""
        return self.state_dir / "tmp"

    @property
    def schemas_dir(self) -> Path:
        return self.state_dir / "schemas"

    @property
    def index_file(self) -> Path:
        return self.state_dir / "index.sqlite"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "watch.lock"

    def template_file(self, name: str) -> Path:
        return self.templates_dir / f"{check_name(name, 'template')}.toml"

    def pipeline(self, name: str) -> PipelinePaths:
        return PipelinePaths(self.pipelines_dir / check_name(name, "pipeline"))

    def pipeline_names(self) -> list[str]:
        # scandir: the directory entry's type, not a stat each (10,000 pipelines: 0.1 s -> 0.01 s)
        try:
            with os.scandir(self.pipelines_dir) as entries:
                return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def template_names(self) -> list[str]:
        if not self.templates_dir.is_dir():
            return []
        return sorted(p.stem for p in self.templates_dir.glob("*.toml"))


def find_root(explicit: str | Path | None = None, cwd: Path | None = None) -> Root:
    """The root named by --root or CLOWDER_ROOT, else the nearest directory upward from the
    cwd holding clowder.toml, like git finds .git."""
    given = explicit if explicit is not None else os.environ.get(ROOT_ENV) or None
    if given is not None:
        path = Path(given).expanduser().resolve()
        if not (path / CONFIG_FILE).is_file():
            raise RootNotFound(
                f"{path}: no {CONFIG_FILE} here; run `clowder init {given}` to create a root"
            )
        return Root(path)
    start = (cwd or Path.cwd()).resolve()
    for candidate in (start, *start.parents):
        if (candidate / CONFIG_FILE).is_file():
            return Root(candidate)
    raise RootNotFound(
        f"no {CONFIG_FILE} found in {start} or any parent directory; run `clowder init` "
        f"to create a root, or pass --root / set {ROOT_ENV}"
    )
