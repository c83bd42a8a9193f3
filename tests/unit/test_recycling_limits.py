"""Worker recycling's settings, decisions and the CLI flags (the processes: see
tests/integration/test_recycling.py)."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from shoal.cli import cli
from shoal.errors import ConfigurationError
from shoal.recycling import (
    Recycled,
    RecycleLimits,
    RecycleNote,
    Recycler,
    ResidentMemory,
)
from shoal.settings import Settings


def test_recycling_is_off_by_default() -> None:
    settings = Settings.from_env({})
    assert settings.worker_max_tasks_per_process == 0
    assert settings.worker_max_memory_per_process_mib == 0
    assert not RecycleLimits(
        settings.worker_max_tasks_per_process, settings.worker_max_memory_per_process_mib
    )


def test_recycling_limits_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "SHOAL_WORKER_MAX_TASKS_PER_PROCESS": "1000",
            "SHOAL_WORKER_MAX_MEMORY_PER_PROCESS_MIB": "500",
        }
    )
    assert settings.worker_max_tasks_per_process == 1000
    assert settings.worker_max_memory_per_process_mib == 500


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SHOAL_WORKER_MAX_TASKS_PER_PROCESS", "-1", "must be 0 (off) or a positive number"),
        ("SHOAL_WORKER_MAX_MEMORY_PER_PROCESS_MIB", "-5", "must be 0 (off) or a positive number"),
        ("SHOAL_WORKER_MAX_MEMORY_PER_PROCESS_MIB", "1.5G", "is not a valid int; set a number"),
        ("SHOAL_WORKER_MAX_TASKS_PER_PROCESS", "lots", "is not a valid int; set a number"),
    ],
)
def test_a_bad_recycling_limit_is_refused_naming_the_variable(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({variable: value})
    assert variable in str(caught.value)
    assert expected in str(caught.value)


def test_a_negative_recycling_argument_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="SHOAL_WORKER_MAX_TASKS_PER_PROCESS"):
        Settings.from_env({}, worker_max_tasks_per_process=-3)


def test_recycler_replaces_after_n_finished_tasks() -> None:
    recycler = Recycler(RecycleLimits(max_tasks=3))
    assert [recycler.check(n) for n in (1, 2)] == [None, None]
    assert recycler.check(3) == Recycled("tasks", 3, 3)
    assert recycler.check(5) == Recycled("tasks", 5, 3)  # slot threads report in batches
    assert Recycled("tasks", 1000, 1000).describe() == "after 1000 tasks"


def test_recycler_reads_memory_at_most_every_so_often() -> None:
    now = [100.0]
    reads: list[float] = []
    rss = [400.0]

    def read() -> float:
        reads.append(now[0])
        return rss[0]

    recycler = Recycler(RecycleLimits(max_memory_mib=500), rss_mib=read, clock=lambda: now[0])
    assert recycler.check(1) is None
    rss[0] = 512.3
    assert recycler.check(2) is None  # within the interval: not read again
    now[0] += 0.1
    recycled = recycler.check(3)
    assert recycled == Recycled("memory", 512, 500)
    assert recycled.describe() == "after reaching 512 MiB (limit 500)"
    assert reads == [100.0, 100.1]


def test_resident_memory_reads_this_process() -> None:
    first = ResidentMemory().mib()
    block = bytearray(64 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    assert 1 < first < ResidentMemory().mib()


def test_a_note_carries_why_across_a_fork() -> None:
    note = RecycleNote()
    assert note.read() is None
    pid = os.fork()
    if pid == 0:  # the child writes, as a recycled worker process does before it exits
        note.write(Recycled("memory", 612, 600))
        os._exit(0)
    os.waitpid(pid, 0)
    assert note.read() == Recycled("memory", 612, 600)


def test_worker_help_lists_the_recycling_flags() -> None:
    result = CliRunner().invoke(cli, ["worker", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--max-tasks-per-process N" in result.output
    assert "--max-memory-per-process MiB" in result.output
    assert "SHOAL_WORKER_MAX_TASKS_PER_PROCESS" in result.output
    assert "SHOAL_WORKER_MAX_MEMORY_PER_PROCESS_MIB" in result.output


def test_worker_refuses_a_negative_limit() -> None:
    result = CliRunner().invoke(cli, ["worker", "tasks", "--max-tasks-per-process", "-1"])
    assert result.exit_code == 2
    assert "--max-tasks-per-process" in result.output
    assert "-1 is not in the range x>=0" in result.output


def test_the_worker_crd_takes_the_recycling_limits_and_refuses_negative_ones() -> None:
    from shoal import manifests

    def worker(**spec: int) -> dict[str, object]:
        base = {"image": "example/tasks:1", "module": "tasks", "queues": ["tasks"]}
        return {
            "apiVersion": "shoal.dev/v1alpha1",
            "kind": "Worker",
            "metadata": {"name": "tasks"},
            "spec": {**base, **spec},
        }

    assert manifests.check(worker(maxTasksPerProcess=1000, maxMemoryPerProcessMiB=400))[1] == []
    (error,) = manifests.check(worker(maxMemoryPerProcessMiB=-1))[1]
    assert "spec.maxMemoryPerProcessMiB" in error
