"""The floor of this design: what each guarantee Clowder keeps costs a job, measured with a minimal
scheduler written here, against `make -j2` and `clowder run --max-parallel 2` on the same DAG.

Run: python tests/bench/bench_floor.py [--repeat 3] [--smoke]

Issue 17 asks for 1,000 jobs in <= 3x the time of `make -j2` running the same programs on the same
DAG. This answers whether a design that keeps Clowder's guarantees can get there at all: a ready
queue in dependency order and 2 worker threads (no daemon, no file events, no index, no spec
parsing) run the jobs as layers, each adding one guarantee to the one before, through Clowder's own
functions (imported, never re-implemented), so that each layer costs what the product pays for it:

  L1 the program alone: `subprocess`, argv, no shell, waited for;
  L2 + the exit record: the program under clowder.executor.WRAPPER, its argv, log file and run file
     as LocalExecutor.start makes them, and the record read back with read_exit, as the daemon does;
  L3 + the attempt's cgroup (where the machine has one: clowder.processes), made before, and every
     process of it killed and waited for after, before the wrapper is reaped, as the reaper does;
  L4 + the job's own git repository: clowder.workspace.prepare, an empty one (there is no commit
     to start from yet), the program's working directory, where `cp` writes its file;
  L5 + the attempt's commit and its tags, in-process, and each job's repository started from its
     upstream's commit (its files checked out, a join's upstreams merged): prepare with the
     upstreams, and the commit step of clowder.workspace.finish;
  L6 + the job's status written twice (running, then ended) as TOML, atomically (temp file, fsync,
     os.replace) through the daemon's background writer, clowder.fsio.Writer.

Every row is seconds (median [range] of --repeat, interleaved), its ratio to make -j2 in the same
round, the ms a job it adds to the layer before, and CPU a job: this process's and its children's
(resource.getrusage), user + system. The jobs are real programs: /usr/bin/true (changes nothing) and
/usr/bin/cp of a small file of its own (its commit adds a blob), on 10 chains of 100 and a 1,000-wide
fan-out and join.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import resource
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    Dag,
    Kind,
    Run,
    Scratch,
    argv,
    chains,
    fan_out,
    header,
    interleaved,
    median,
    row,
    run_dag,
    run_make,
    spread,
    write_inputs,
)

from clowder import executor, workspace
from clowder.executor import WRAPPER, environ, read_exit, run_file
from clowder.fsio import Writer
from clowder.state import Attempt, JobState, JobStatus, job_status_to_toml, utcnow
from clowder.tree import PipelinePaths

LAYERS = {
    1: "L1 program alone",
    2: "L2 + exit record",
    3: "L3 + cgroup",
    4: "L4 + own repository",
    5: "L5 + commit, lineage",
    6: "L6 + status writes",
}
TOP = max(LAYERS)
LABEL = {Kind.NOCHANGE: "true", Kind.WRITE: "cp a file"}
WORKERS = 2  # make -j2, clowder run --max-parallel 2
PIPELINE = "p"


@dataclass(frozen=True)
class Sizes:
    n_chains: int
    chain_length: int
    width: int  # of the fan-out: width + 2 jobs


DEFAULT = Sizes(n_chains=10, chain_length=100, width=998)
SMOKE = Sizes(n_chains=2, chain_length=3, width=4)


def dags(sizes: Sizes, smoke: bool) -> dict[str, Dag]:
    shaped = {f"{sizes.n_chains}x{sizes.chain_length} chains": chains(sizes.n_chains, sizes.chain_length),
              f"{sizes.width + 2} fan-out+join": fan_out(sizes.width)}
    return dict(list(shaped.items())[:1]) if smoke else shaped  # --smoke: chains only, a few seconds


# ---------------------------------------------------------------------------------------------
# One job, at a layer


@dataclass
class Done:
    """What a job left for the jobs after it: its workspace's final commit (L5 and up)."""

    commits: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Place:
    """Where one run of the floor writes: a pipeline's directories as Clowder lays them out."""

    paths: PipelinePaths
    out: Path  # the programs' working directory below L4 (as make's), where `cp` writes
    inputs: Path
    tmp: Path  # the status writer's temp files: outside the watched directory, as the daemon's

    @classmethod
    def make(cls, base: Path, dag: Dag) -> Place:
        paths = PipelinePaths(base / "pipelines" / PIPELINE)
        paths.dir.mkdir(parents=True)
        (base / "out").mkdir()
        return cls(paths, base / "out", write_inputs(base / "inputs", dag), base / ".clowder" / "tmp")


@dataclass(frozen=True)
class Job:
    name: str
    needs: tuple[str, ...]
    sole_consumer: frozenset[str]  # upstreams this job is the only one to start from (their files may move here)


class Floor:
    """The layers' work for one job, done in a worker thread."""

    def __init__(self, layer: int, kind: Kind, place: Place, writer: Writer | None) -> None:
        self.layer, self.kind, self.place, self.writer = layer, kind, place, writer
        self.done = Done()
        self.made: set[Path] = set()  # the executor makes each directory once (LocalExecutor._mkdir)
        self.writes = 0  # status files serialised, in the writer's one thread

    def run(self, job: Job) -> None:
        if self.layer == 1:
            self._alone(job)
            return
        ref = workspace.AttemptRef(self.place.paths.workspace(job.name), PIPELINE, job.name, 1)
        prepared = self._prepare(ref, job) if self.layer >= 4 else None
        launch = self._launch(job)
        started = utcnow()
        proc = self._start(launch, ref.ws if prepared is not None else self.place.out)
        running = Attempt(1, JobState.RUNNING, started_at=started, pid=proc.pid,
                          base_commit=prepared.base_commit if prepared else None,
                          consumed=prepared.consumed if prepared else {})
        self._status(job, JobState.RUNNING, running)
        self._wait(launch, proc)
        record = read_exit(launch.run_file)
        if record is None or record.exit_code != 0:
            raise SystemExit(f"error: {job.name} ended {record}; its log: {launch.log_file}")
        commit = self._commit(ref) if self.layer >= 5 else None
        ended = replace(running, state=JobState.SUCCEEDED, ended_at=record.ended_at, exit_code=0, commit=commit)
        self._status(job, JobState.SUCCEEDED, ended)

    def _alone(self, job: Job) -> None:
        proc = subprocess.Popen(argv(self.kind, job.name, self.place.inputs), cwd=self.place.out,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if proc.wait() != 0:
            raise SystemExit(f"error: {job.name} exited {proc.returncode}")

    def _launch(self, job: Job) -> executor.Run:
        """The attempt as the launcher describes it to the executor (the same variables)."""
        paths = self.place.paths
        log = paths.log_file(job.name, 1)
        env = {"CLOWDER_ROOT": str(paths.dir.parent.parent), "CLOWDER_PIPELINE": PIPELINE,
               "CLOWDER_JOB": job.name, "CLOWDER_ATTEMPT": "1"}
        return executor.Run(PIPELINE, job.name, 1, tuple(argv(self.kind, job.name, self.place.inputs)),
                            paths.workspace(job.name), env, log, run_file(log))

    def _start(self, launch: executor.Run, cwd: Path) -> subprocess.Popen[bytes]:
        """LocalExecutor.start's process, its argv built the same way (its cgroup from L3 on).
        Not LocalExecutor itself: it reports ends through its reaper thread and a pool of 4,
        which is the daemon's plumbing, not a guarantee."""
        self._mkdir(launch.log_file.parent)
        cgroup = launch.processes.prepare() if self.layer >= 3 else ""
        cmd = ["/bin/sh", "-c", WRAPPER, "clowder-attempt", str(launch.run_file), cgroup, *launch.argv]
        launch.run_file.unlink(missing_ok=True)  # its guards for a restart, as start() has them
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.lstat(launch.log_file).st_mode):
                launch.log_file.unlink()
        with open(launch.log_file, "ab") as log:
            return subprocess.Popen(cmd, cwd=cwd, env=environ(launch), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)

    def _mkdir(self, d: Path) -> None:
        if d not in self.made:
            d.mkdir(parents=True, exist_ok=True)
            self.made.add(d)

    def _wait(self, launch: executor.Run, proc: subprocess.Popen[bytes]) -> None:
        if self.layer >= 3:
            # As the reaper: the wrapper is a zombie until reaped, so its pid (the group's id) cannot
            # be reused while what is left of the attempt is killed and waited for.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            launch.processes.end(group=proc.pid)
        proc.wait()

    def _prepare(self, ref: workspace.AttemptRef, job: Job) -> workspace.Prepared:
        """Below L5 there is no commit to start from: every repository starts empty."""
        ups: tuple[workspace.Upstream, ...] = ()
        if self.layer >= 5:
            with self.done.lock:
                commits = [self.done.commits[u] for u in job.needs]
            ups = tuple(workspace.Upstream(u, self.place.paths.workspace(u), c, u in job.sole_consumer)
                        for u, c in zip(job.needs, commits, strict=True))
        prepared = workspace.prepare(ref, ups, workspace.Start())
        if prepared.problem:
            raise SystemExit(f"error: {ref.job} cannot start: {prepared.problem}")
        return prepared

    def _commit(self, ref: workspace.AttemptRef) -> str:
        # workspace._commit is finish()'s commit-and-tag step (in-process where the tree is plain:
        # unchanged.write_commit, else worktree.commit_worktree; then the branch, the tag and the
        # attempt ref in one packed-refs write). Private: finish() also lists the artifacts and
        # publishes objects already written to the store, which is not the commit's cost.
        commit = workspace._commit(ref, workspace.End(JobState.SUCCEEDED.value), ())
        with self.done.lock:
            self.done.commits[ref.job] = commit
        return commit

    def _status(self, job: Job, state: JobState, attempt: Attempt) -> None:
        if self.writer is None:
            return
        status = JobStatus(job.name, state, 1, attempts=(attempt,))
        # Serialised in the writer's thread, as the daemon's are; a status queued again before it
        # was written is written once, with the newer content (fsio.Writer), as in the daemon.
        self.writer.write(self.place.paths.job_status_file(job.name), partial(self._toml, status))

    def _toml(self, status: JobStatus) -> str:
        self.writes += 1
        return job_status_to_toml(status)


# ---------------------------------------------------------------------------------------------
# The minimal scheduler


def jobs_of(dag: Dag) -> dict[str, Job]:
    consumers = collections.Counter(u for needs in dag.values() for u in needs)
    return {name: Job(name, tuple(needs), frozenset(u for u in needs[:1] if consumers[u] == 1))
            for name, needs in dag.items()}


def schedule(dag: Dag, work: Callable[[Job], None], workers: int = WORKERS) -> None:
    """Run every job of `dag` once its needs have ended, `workers` at a time: a ready queue in
    dependency order, taken from by worker threads. A job's failure stops the run."""
    jobs = jobs_of(dag)
    waiting = {name: len(job.needs) for name, job in jobs.items()}
    dependents: dict[str, list[str]] = collections.defaultdict(list)
    for name, job in jobs.items():
        for u in job.needs:
            dependents[u].append(name)
    ready = collections.deque(name for name, n in waiting.items() if n == 0)
    cond = threading.Condition()
    left = [len(jobs)]
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with cond:
                while not ready and left[0] and not errors:
                    cond.wait()
                if not left[0] or errors:
                    return
                name = ready.popleft()
            try:
                work(jobs[name])
            except BaseException as e:
                with cond:
                    errors.append(e)
                    cond.notify_all()
                return
            with cond:
                left[0] -= 1
                for d in dependents[name]:
                    waiting[d] -= 1
                    if waiting[d] == 0:
                        ready.append(d)
                cond.notify_all()

    threads = [threading.Thread(target=worker, name=f"floor-{i}") for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass(frozen=True)
class Measure:
    seconds: float
    own: float  # s of user + system CPU of this process (the floor's scheduler and its layers' work)
    children: float  # the same of the children it waited for (programs, wrappers, git; make, clowder run)
    writes: int = 0  # L6: status files written (two queued a job; the writer coalesces one queued again)

    @property
    def cpu(self) -> float:
        return self.own + self.children


def cpu_now() -> tuple[float, float]:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def measured(f: Callable[[], object]) -> Measure:
    (own, kids), t = cpu_now(), time.perf_counter()
    f()
    seconds = time.perf_counter() - t
    own_after, kids_after = cpu_now()
    return Measure(seconds, own_after - own, kids_after - kids)


def command(f: Callable[[], Run]) -> Measure:
    """A command run by benchlib (make, clowder run): its own wall time (its trees are made before
    it starts) and the CPU of it and what it waited for; none of this process's."""
    _, kids = cpu_now()
    run = f()
    return Measure(run.seconds, 0.0, cpu_now()[1] - kids)


def floor_run(scratch: Scratch, dag: Dag, kind: Kind, layer: int) -> Measure:
    """One run of the floor at `layer`; its trees made before the clock starts."""
    place = Place.make(scratch.new(f"l{layer}"), dag)
    writer = Writer(place.tmp) if layer >= 6 else None
    floor = Floor(layer, kind, place, writer)

    def run() -> None:
        schedule(dag, floor.run)
        if writer is not None:
            writer.close()  # every status on disk before the clock stops

    return replace(measured(run), writes=floor.writes)


def warm_up(scratch: Scratch) -> None:
    """One untimed run of every layer on a tiny DAG: cgroup probing, gitdb's import, the first
    `git init` are paid once per process, as the daemon pays them once, not per run."""
    for layer in LAYERS:
        for kind in (Kind.NOCHANGE, Kind.WRITE):
            floor_run(scratch, chains(1, 2), kind, layer)


@dataclass
class Results:
    jobs: int
    runs: dict[str, list[Measure]] = field(default_factory=dict)

    def add(self, name: str, m: Measure) -> float:
        self.runs.setdefault(name, []).append(m)
        return m.seconds

    def seconds(self, name: str) -> list[float]:
        return [m.seconds for m in self.runs[name]]

    def ratio(self, name: str, to: str) -> float:
        """The median of the ratios of runs in the same round."""
        return median([a / b for a, b in zip(self.seconds(name), self.seconds(to), strict=True)])

    def cpu_ms(self, name: str) -> str:
        """CPU a job: the total, and this process's + its children's (medians each)."""
        runs = self.runs[name]
        total, own, kids = (median([f(m) for m in runs]) / self.jobs * 1000
                            for f in (lambda m: m.cpu, lambda m: m.own, lambda m: m.children))
        return f"{total:.2f} ({own:.2f}+{kids:.2f})"

    def more_ms(self, name: str, before: str) -> str:
        return f"{(median(self.seconds(name)) - median(self.seconds(before))) / self.jobs * 1000:+.2f}"


def measure(scratch: Scratch, dag: Dag, kind: Kind, repeat: int) -> Results:
    res = Results(len(dag))

    def make() -> float:
        return res.add("make", command(lambda: run_make(scratch, dag, kind)))

    def layer(n: int) -> Callable[[], float]:
        return lambda: res.add(LAYERS[n], floor_run(scratch, dag, kind, n))

    def clowder() -> float:
        return res.add("clowder", command(lambda: run_dag(scratch, dag, kind)[0]))

    interleaved(repeat, make, *(layer(n) for n in LAYERS), clowder)
    return res


def table(name: str, kind: Kind, res: Results, repeat: int) -> None:
    header(f"{name} / {LABEL[kind]}: s, median [range] of {repeat}; x make -j2; ms a job more than the "
           f"row before; CPU ms a job, this process's + its children's")
    widths = (32, 22, 8, 10, 20)
    row("", "s", "x make", "+ms/job", "CPU ms (own+kids)", widths=widths)
    row("make -j2", spread(res.seconds("make")), "1.0x", "", res.cpu_ms("make"), widths=widths)
    before = "make"
    for title in LAYERS.values():
        row(title, spread(res.seconds(title)), f"{res.ratio(title, 'make'):.1f}x", res.more_ms(title, before),
            res.cpu_ms(title), widths=widths)
        before = title
    top = LAYERS[TOP]
    row("clowder run --max-parallel 2", spread(res.seconds("clowder")), f"{res.ratio('clowder', 'make'):.1f}x",
        res.more_ms("clowder", top), res.cpu_ms("clowder"), f"{res.ratio('clowder', top):.1f}x L6", widths=widths)
    writes = [m.writes for m in res.runs[top]]
    print(f"  (L6 wrote {min(writes)}-{max(writes)} status files of the {2 * res.jobs} queued: the writer writes "
          f"a file queued again before it was written once, as the daemon's does)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure (medians; default 3)")
    parser.add_argument("--smoke", action="store_true", help="tiny DAGs, one run: checks the script works")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else DEFAULT
    repeat = 1 if args.smoke else args.repeat
    scratch = Scratch("bench-floor")
    try:
        print(f"{os.cpu_count()} cores, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"trees under {scratch.path}", flush=True)
        warm_up(scratch)
        for name, dag in dags(sizes, args.smoke).items():
            for kind in (Kind.NOCHANGE, Kind.WRITE):
                table(name, kind, measure(scratch, dag, kind, repeat), repeat)
        print(f"\nload {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    finally:
        scratch.close()


if __name__ == "__main__":
    main()
