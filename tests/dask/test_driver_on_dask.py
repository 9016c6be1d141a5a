"""The driver's end-to-end tests, run again with the Dask executor: the same test bodies (imported
from the everyday suite, which runs them with the local executor), on a root whose clowder.toml
points at the loopback cluster. What a user sees must not depend on where attempts run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clowder.tree import Root
from tests.dask.conftest import Cluster, end_attempts

# Imported, so collected here too: each is a test of this module, with its `root` the one below.
from tests.test_driver import (  # noqa: F401
    test_a_job_killed_with_sigkill_is_retried,
    test_a_timed_out_attempt_whose_exit_record_is_lost_says_the_same_everywhere,
    test_cancel_command_with_no_daemon_is_applied_by_the_next_one,
    test_cancel_kills_a_grandchild_and_skips_dependents,
    test_daemon_killed_with_sigkill_and_restarted_finishes_each_job_once,
    test_max_parallel_is_never_exceeded,
    test_retries_wait_a_growing_backoff,
    test_retry_command_reruns_a_failed_job_and_what_it_gated,
    test_run_executes_a_pipeline_and_exits_zero,
    test_run_exits_one_when_a_job_fails,
    test_timeout_kills_the_whole_process_group,
)
from tests.test_export import test_export_of_a_fan_in_holds_every_upstream_s_work  # noqa: F401
from tests.test_regression import (  # noqa: F401
    test_a_failing_fixup_fails_the_spawner_and_skips_its_dependents,
    test_the_regression_loop_example_runs_to_success,
    test_the_spawner_runs_again_as_soon_as_its_fixup_succeeds,
)
from tests.test_runner import terminal, test_run_takes_over_when_the_daemon_is_killed  # noqa: F401

pytestmark = pytest.mark.dask


@pytest.fixture
def root(root: Root, dask_cluster: Cluster) -> Iterator[Root]:
    """The everyday tests' root, its attempts run on the shared loopback cluster."""
    dask_cluster.configure(root)
    yield root
    end_attempts(root)
