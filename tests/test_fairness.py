"""Fairness with the real daemon: `clowder run` over two pipelines, real processes, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from clowder.tree import Root
from clowder.validate import check_pipeline
from tests.conftest import Invoke, MakePipeline

FAN_WIDTH = 40


def test_a_small_pipeline_runs_while_a_big_ones_backlog_waits(root: Root, make_pipeline: MakePipeline,
                                                                tmp_path: Path) -> None:
    """Two slots, a 40-job fan-out named to sort first, and a chain of three beside it: each
    chain job starts as soon as its upstream ends, while most of the fan-out still waits. Every
    job appends its name to one file as it starts, so the file is the order of the starts."""
    order = tmp_path / "order.txt"

    def job(name: str, needs: str = "") -> str:
        return f'command = ["sh", "-c", "echo {name} >> {order}"]\n' + (f'needs = ["{needs}"]\n' if needs else "")

    make_pipeline("a-fan", {f"w{i:02}": job(f"w{i:02}") for i in range(FAN_WIDTH)})
    make_pipeline("b-chain", {"c0": job("c0"), "c1": job("c1", "c0"), "c2": job("c2", "c1")})
    done = subprocess.run([sys.executable, "-m", "clowder", "run", "a-fan", "b-chain", "--max-parallel", "2"],
                          cwd=root.path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    starts = order.read_text().split()
    assert sorted(starts) == sorted([f"w{i:02}" for i in range(FAN_WIDTH)] + ["c0", "c1", "c2"])
    fan_before = [sum(1 for s in starts[:starts.index(c)] if s.startswith("w")) for c in ("c0", "c1", "c2")]
    # The chain's third job started with at most a fifth of the fan-out started: the rest was
    # its backlog. Served in name order, the chain waited for nearly all of it.
    assert fan_before[-1] <= FAN_WIDTH // 5, starts


def test_a_templates_priority_reaches_its_pipelines(root: Root, cli: Invoke) -> None:
    (root.templates_dir / "urgent.toml").write_text('priority = 3\n[jobs.a]\ncommand = ["true"]\n')
    made = cli("new", "urgent", "--prompt", "now", "--name", "u")
    assert made.exit_code == 0, made.output
    pipeline, problems = check_pipeline(root.pipeline("u"))
    assert problems == [] and pipeline is not None and pipeline.spec.priority == 3


def test_clowder_validate_names_the_file_and_key_of_a_bad_priority(root: Root, make_pipeline: MakePipeline,
                                                                     cli: Invoke) -> None:
    d = make_pipeline("p", {"a": 'command = ["true"]\n'}, spec='prompt = "x"\npriority = 99\n')
    result = cli("validate")
    assert result.exit_code == 2
    assert f"{d / 'pipeline.toml'}: priority: " in result.output
