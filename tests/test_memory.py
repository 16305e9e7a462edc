"""The memory policy: sizes parsed, chunk plans fit their budget, impossible budgets are refused."""

from __future__ import annotations

import pytest

from arielstream.errors import MemoryBudgetError
from arielstream.io.signal import (
    COLUMN_OVERHEAD_BYTES,
    COMPUTE_BYTES_PER_VALUE,
    READS_IN_FLIGHT,
    RESIDENT_BYTES_PER_VALUE,
    plan_chunks,
)
from arielstream.units import parse_bytes


def test_parse_bytes():
    assert parse_bytes("2GB") == 2 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5 GB") == 1_500_000_000
    assert parse_bytes(1234) == 1234
    for bad in ("lots", "-1GB", "0", "3 parsecs"):
        with pytest.raises(ValueError):
            parse_bytes(bad)


@pytest.mark.parametrize("budget", [10**6, 2 * 10**7, 10**8, 10**9])
@pytest.mark.parametrize("row_groups", [[11250], [1000] * 11 + [250], [135000], [97] * 116])
def test_plans_fit_their_budget_and_use_whole_rows(budget, row_groups):
    n_frames = sum(row_groups) // 60 * 60
    try:
        plan = plan_chunks(9024, 282, row_groups, n_frames, 60, budget)
    except MemoryBudgetError:
        assert (max(row_groups) + 60) * READS_IN_FLIGHT * RESIDENT_BYTES_PER_VALUE + 60 * COMPUTE_BYTES_PER_VALUE \
            + READS_IN_FLIGHT * COLUMN_OVERHEAD_BYTES > budget
        return
    assert plan.estimated_bytes <= budget
    assert max(row_groups) <= plan.rows_per_read or plan.rows_per_read >= n_frames
    assert 1 <= plan.block_pixels <= 9024
    if plan.block_pixels >= 282:
        assert plan.block_pixels % 282 == 0
    if plan.chunk_frames is not None:
        assert plan.chunk_frames % 60 == 0


def test_a_budget_below_one_pixel_is_refused():
    with pytest.raises(MemoryBudgetError, match="cannot hold one pixel"):
        plan_chunks(1024, 32, [135000], 134640, 720, 10**5)


def test_reads_shrink_before_blocks_lose_whole_rows():
    # 116 row groups of 97 frames: a whole-file read of one AIRS row (282 pixels) needs ~80 MB
    plan = plan_chunks(9024, 282, [97] * 116, 11220, 60, 40_000_000)
    assert plan.block_pixels == 282 and plan.rows_per_read < 11220 and plan.chunk_frames is None
    assert plan_chunks(9024, 282, [97] * 116, 11220, 60, 10**9).rows_per_read == 11220


def test_release_memory_gives_freed_heap_back_so_the_plan_measures_what_is_held():
    """glibc keeps freed heap pages; a run measures its process's size to plan the budget (subprocess: clean heap)."""
    import subprocess
    import sys

    from .conftest import REPO

    code = """
import numpy as np
from arielstream.run.budget import current_rss, release_memory
blocks = [np.ones(100_000 // 8) for _ in range(3000)]  # 300 MB of 100 kB blocks: heap, not mmap
kept = blocks[::10]  # every tenth stays: the heap cannot shrink from its top
del blocks
held = current_rss()
release_memory()
print(held, current_rss())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    held, after = map(int, proc.stdout.split())
    assert held - after > 150 * 2**20, f"released only {(held - after) >> 20} MB of the ~270 MB freed"


def test_pin_threads_leaves_the_decoding_thread_a_core_when_numba_runs_the_kernels():
    """numba's kernels run beside the prefetch thread's decode: one thread fewer; numexpr and Arrow get them all.

    The whole-series cosmic-ray rejection gets them all too, and only while it runs.
    """
    import numexpr
    import numpy as np
    import pyarrow

    from arielstream.calibration import compiled
    from arielstream.run.budget import pin_threads

    numba = pytest.importorskip("numba")
    was = numexpr.get_num_threads(), pyarrow.cpu_count(), numba.get_num_threads()
    try:
        for threads, kernel_threads in ((1, 1), (2, 1), (4, 3)):
            if kernel_threads > numba.config.NUMBA_NUM_THREADS:
                continue
            pin_threads(threads)
            assert (numexpr.get_num_threads(), pyarrow.cpu_count(), numba.get_num_threads()) == \
                (threads, threads, kernel_threads)
            assert compiled._series_threads == threads  # the whole-series rejection: seconds of compute, all
    finally:
        numexpr.set_num_threads(was[0])
        pyarrow.set_cpu_count(was[1])
        compiled.set_threads(was[2])
    rng = np.random.default_rng(3)
    pin_threads(2)
    before = numba.get_num_threads()
    compiled.reject_temporal_outliers(rng.normal(size=(4, 60)), 6)
    assert numba.get_num_threads() == before
    compiled.set_threads(was[2])
