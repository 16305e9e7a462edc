"""available_cores: joblib's count (affinity, cgroup quota, LOKY_MAX_CPU_COUNT), never more than the affinity."""

from __future__ import annotations

import os

from arielstream.run.budget import available_cores


def test_the_count_is_capped_by_the_cpu_affinity(monkeypatch):
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # as `taskset -c 0` would leave it
    assert available_cores() == 1


def test_the_count_honours_loky_max_cpu_count(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")
    assert available_cores() == 1  # 4 without it, unless a cgroup CPU quota says fewer
