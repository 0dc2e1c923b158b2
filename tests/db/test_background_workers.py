"""Worker-slot arithmetic: which server settings let TimescaleDB's jobs start, and what the
embedded cluster starts with."""

from __future__ import annotations

from service.db.background_workers import WorkerSettings, embedded_options


def test_postgresql_defaults_with_timescaledb_defaults_are_a_problem_naming_what_to_set() -> None:
    stock = WorkerSettings(max_worker_processes=8, max_background_workers=16, max_parallel_workers=8)
    [problem] = stock.problems()
    assert problem.startswith("max_worker_processes = 8 is less than the 18 slots TimescaleDB may take")
    assert "HINT: raise max_worker_processes in tandem with timescaledb.max_background_workers" in problem
    assert "max_worker_processes >= 26" in problem
    assert stock.warnings() == []  # the problem says it already


def test_no_background_worker_for_jobs_is_a_problem() -> None:
    for workers in (0, 1):
        [problem] = WorkerSettings(64, workers, 8).problems()
        assert problem.startswith(f"timescaledb.max_background_workers = {workers} ")
        assert "no TimescaleDB job runs in the background; HINT: set it to 16" in problem


def test_room_for_the_jobs_but_not_beside_parallel_queries_is_a_warning_only() -> None:
    tight = WorkerSettings(max_worker_processes=20, max_background_workers=16, max_parallel_workers=8)
    assert tight.problems() == []
    [warning] = tight.warnings()
    assert warning.startswith("max_worker_processes = 20 is less than the 26 ")
    assert WorkerSettings(26, 16, 8).warnings() == []
    # Without logical replication its launcher takes no slot.
    assert WorkerSettings(25, 16, 8, logical_replication=False).warnings() == []


def test_the_embedded_cluster_gets_what_timescaledb_tune_sets_and_explicit_options_win() -> None:
    assert embedded_options({}) == {"timescaledb.max_background_workers": "16", "max_worker_processes": "27"}
    small = embedded_options({"timescaledb.max_background_workers": "4", "max_parallel_workers": "2"})
    assert small == {"timescaledb.max_background_workers": "4", "max_worker_processes": "9"}
    for options in ({}, {"timescaledb.max_background_workers": "4"}):
        chosen = embedded_options(options)
        settings = WorkerSettings(
            int(chosen["max_worker_processes"]), int(chosen["timescaledb.max_background_workers"]), 8
        )
        assert settings.problems() == [] and settings.warnings() == []
