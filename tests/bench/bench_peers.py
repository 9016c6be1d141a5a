"""Peer benchmark: Clowder, `make -j2`, `doit -n 2` and Snakemake (its default scheduler and
`--scheduler greedy`, `--cores 2`) on the same DAGs, running the same real programs, in the same run.

Run: python tests/bench/bench_peers.py [--repeat 3] [--jobs 1000] [--peers clowder,make,doit,snakemake,greedy]
     [--kinds nochange,write] [--dags chains,fan-out] [--smoke]

The DAGs: 10 chains of 100 jobs, and a 1,000-wide fan-out with its join (--jobs sets the size). The
jobs: /usr/bin/true (changes nothing) and /usr/bin/cp of a small file of the job's own (writes a file).
Each tool runs each (DAG, job) --repeat times, taking turns with the others, in a new directory each
time; the table gives the median wall time of the whole command (range in brackets) and its ratio to
make -j2's. A tool that is not installed is skipped with a line saying how to install it (doit and
Snakemake: `pip install doit snakemake`); CI need not have them.

How each runs a job: make execs the program itself (a recipe that is one simple command needs no
shell); doit runs an action given as an argv list without a shell, from a pool of 2 processes;
Snakemake runs every `shell:` through bash (`set -euo pipefail; ...`), one more process a job, and
needs a file for each dependency, so a job that writes nothing declares `touch()` outputs, which
Snakemake touches itself; Clowder runs each attempt under its small /bin/sh wrapper, in its own
workspace, committed when it ends.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    Dag,
    Kind,
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
    timed,
    verdict,
    write_inputs,
)

SNAKEFILE = """\
import json
GRAPH = json.load(open("dag.json"))
COMMANDS = json.load(open("commands.json"))
wildcard_constraints:
    job = "[^/]+"
rule all:
    input: expand("out/{job}", job=list(GRAPH))
rule job:
    input: lambda w: [f"out/{u}" for u in GRAPH[w.job]]
    output: %s
    params: command = lambda w: COMMANDS[w.job]
    shell: "{params.command}"
"""

DODO = """\
import json
GRAPH = json.load(open("dag.json"))
COMMANDS = json.load(open("commands.json"))
DOIT_CONFIG = {"verbosity": 0}
def task_job():
    for job, needs in GRAPH.items():
        yield {"name": job, "actions": [COMMANDS[job]], "task_dep": [f"job:{u}" for u in needs]}
"""


def peer_dir(scratch: Scratch, tool: str, dag: Dag, kind: Kind, commands: Callable[[str, list[str]], object]) -> Path:
    d = scratch.new(tool)
    inputs = write_inputs(d / "inputs", dag)
    (d / "out").mkdir()
    (d / "dag.json").write_text(json.dumps(dag))
    (d / "commands.json").write_text(json.dumps({job: commands(job, argv(kind, job, inputs)) for job in dag}))
    return d


def run_doit(scratch: Scratch, dag: Dag, kind: Kind) -> float:
    d = peer_dir(scratch, "doit", dag, kind, lambda job, cmd: [*cmd[:-1], f"out/{job}"] if kind is Kind.WRITE else cmd)
    (d / "dodo.py").write_text(DODO)
    return timed([shutil.which("doit") or "doit", "-n", "2", "-f", str(d / "dodo.py"), "-d", str(d)], cwd=d,
                 log=d / "doit.log").seconds


def run_snakemake(scratch: Scratch, dag: Dag, kind: Kind, greedy: bool) -> float:
    def command(job: str, cmd: list[str]) -> str:  # the same program, as shell text: Snakemake's only way
        return " ".join([*cmd[:-1], f"out/{job}"] if kind is Kind.WRITE else cmd)

    d = peer_dir(scratch, "snakemake", dag, kind, command)
    output = '"out/{job}"' if kind is Kind.WRITE else 'touch("out/{job}")'
    (d / "Snakefile").write_text(SNAKEFILE % output)
    cmd = [shutil.which("snakemake") or "snakemake", "--cores", "2", "--quiet", "all", "-s", str(d / "Snakefile"),
           "-d", str(d)] + (["--scheduler", "greedy"] if greedy else [])
    return timed(cmd, cwd=d, log=d / "snakemake.log").seconds


@dataclass(frozen=True)
class Peer:
    key: str
    label: str
    run: Callable[[Scratch, Dag, Kind], float]
    program: str  # what must be on PATH


PEERS = (
    Peer("make", "make -j2", lambda s, d, k: run_make(s, d, k).seconds, "make"),
    Peer("clowder", "clowder run --max-parallel 2", lambda s, d, k: run_dag(s, d, k)[0].seconds, "git"),
    Peer("doit", "doit -n 2", run_doit, "doit"),
    Peer("snakemake", "snakemake --cores 2", lambda s, d, k: run_snakemake(s, d, k, greedy=False), "snakemake"),
    Peer("greedy", "snakemake --cores 2 --scheduler greedy", lambda s, d, k: run_snakemake(s, d, k, greedy=True),
         "snakemake"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (medians; default 3)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in each DAG (default 1,000)")
    parser.add_argument("--peers", default=",".join(p.key for p in PEERS), help="which tools (make always runs)")
    parser.add_argument("--kinds", default="nochange,write", help="nochange (true), write (cp a file)")
    parser.add_argument("--dags", default="chains,fan-out")
    parser.add_argument("--smoke", action="store_true", help="tiny DAGs, one run: checks the script works")
    args = parser.parse_args()
    jobs, repeat = (6, 1) if args.smoke else (args.jobs, args.repeat)
    wanted = set(args.peers.split(",")) | {"make"}
    peers = []
    for p in PEERS:
        if p.key not in wanted:
            continue
        if shutil.which(p.program) is None:
            print(f"skipped {p.label}: `{p.program}` is not installed (pip install doit snakemake)")
            continue
        peers.append(p)
    dags = {"chains": chains(max(1, jobs // 100), min(100, jobs)), "fan-out": fan_out(jobs - 2)}
    scratch = Scratch("bench-peers")
    try:
        for dag_name in args.dags.split(","):
            dag = dags[dag_name]
            for kind in (Kind(k) for k in args.kinds.split(",")):
                times = interleaved(repeat, *[lambda p=p, d=dag, k=kind: p.run(scratch, d, k) for p in peers])
                make = median(times[0])
                header(f"{len(dag)} jobs, {dag_name}, each {' '.join(argv(kind, 'JOB', Path('inputs')))} "
                       f"(s, median [range] of {repeat})")
                for p, t in zip(peers, times, strict=True):
                    goal = f"   {verdict(median(t) / make, 3)}" if p.key == "clowder" else ""
                    row(p.label, spread(t), f"{median(t) / make:.1f}x make -j2{goal}", widths=(40, 24))
    finally:
        scratch.close()


if __name__ == "__main__":
    main()
