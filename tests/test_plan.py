"""The output's plan as a table: what a run keeps, computes and drops, decided without opening a file.

Each row is a situation on disk (which copies of which observations exist, done or not,
from which inputs) and what the run wants; the plan must keep, compute and drop exactly
what the row says. :func:`arielstream.run.lifecycle.plan_output` gets what
:func:`arielstream.io.output.read_on_disk` would have read, as plain values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from arielstream.errors import ConfigMismatchError
from arielstream.io.output import OnDisk, Source
from arielstream.io.schema import STATUS_DONE, STATUS_FAILED, STATUS_PENDING
from arielstream.run.lifecycle import plan_output

A, B, C, D = (1, 0), (2, 0), (2, 1), (3, 0)  # (planet, visit)
OUT = Path("/nowhere/out.h5")


def source(name: str, published: bool, rows: dict[tuple[int, int], tuple[int, str]]) -> Source:
    """A file's copies: key -> (status, inputs fingerprint); no bytes behind it."""
    keys = list(rows)
    return Source(Path(f"/nowhere/{name}"), published, keys, {}, np.array([s for s, _ in rows.values()], np.int8),
                  [i for _, i in rows.values()], np.zeros(len(keys), "S16"), None)


def published(*rows: tuple[tuple[int, int], int, str]) -> dict:
    """``OUT.h5`` holding each row's observation, done or not, from an input fingerprint."""
    single = source("out.h5", True, {key: (status, inputs) for key, status, inputs in rows})
    return {key: (single, i) for i, key in enumerate(single.keys)}


DONE = STATUS_DONE


def fp(name: str, size: int = 1) -> str:
    """A fingerprint: one input file's size and modification time (arielstream.io.manifest.fingerprint)."""
    return json.dumps({f"train/{name}.parquet": [size, 0]})


TABLE = [
    # what is on disk, what the run wants, options -> action, kept, computed, dropped
    ("nothing new", published((A, DONE, fp("a")), (B, DONE, fp("b"))), [A, B], {}, "unchanged", [A, B], [], []),
    ("a new visit", published((A, DONE, fp("a")), (B, DONE, fp("b"))), [A, B, C], {}, "extend", [A, B], [C], []),
    ("an input changed", published((A, DONE, fp("a")), (B, DONE, fp("b"))), [A, B], {"fingerprints": {B: fp("b", 2)}},
     "recompute", [A], [B], []),
    ("a failed one is retried", published((A, DONE, fp("a")), (B, STATUS_FAILED, fp("b"))), [A, B], {}, "retry-failed",
     [A], [B], []),
    ("gone from the folder: kept", published((A, DONE, fp("a")), (B, DONE, fp("b"))), [A], {}, "unchanged",
     [A, B], [], []),
    ("gone, --drop-missing: dropped", published((A, DONE, fp("a")), (B, DONE, fp("b"))), [A], {"drop_missing": True},
     "update", [A], [], [B]),
    ("not selected, --drop-missing: kept", published((A, DONE, fp("a")), (B, DONE, fp("b"))), [A],
     {"drop_missing": True, "on_disk": {A, B}}, "unchanged", [A, B], [], []),
    ("not selected and not done: kept as it is", published((A, DONE, fp("a")), (B, STATUS_PENDING, fp("b"))), [A],
     {"on_disk": {A, B}}, "unchanged", [A, B], [], []),
    ("gone and not done: dropped", published((A, DONE, fp("a")), (B, STATUS_PENDING, fp("b"))), [A], {}, "update", [A],
     [], [B]),
]


@pytest.mark.parametrize(("case", "on_disk", "wanted", "options", "action", "kept", "todo", "dropped"), TABLE,
                         ids=[row[0] for row in TABLE])
def test_the_plan_keeps_computes_and_drops_what_the_table_says(case, on_disk, wanted, options, action, kept, todo,
                                                               dropped):
    options = dict(options)  # the table's own dict stays as written
    now = {key: {A: fp("a"), B: fp("b")}.get(key, fp("new")) for key in wanted}
    fingerprints = now | options.pop("fingerprints", {})
    plan = plan_output(OUT, sorted(wanted), OnDisk([], on_disk), fingerprints=fingerprints, **options)
    assert (plan.action if not plan.unchanged else "unchanged") == action, case
    assert sorted(plan.kept) == kept and plan.todo == todo and plan.counts["dropped"] == dropped, case
    assert plan.keys == sorted(set(kept) | set(todo)), case


def test_a_lost_part_is_repaired_and_a_renamed_index_rewritten():
    found = OnDisk([], published((A, DONE, fp("a"))), lost=[B])
    plan = plan_output(OUT, [A, B], found, fingerprints={A: fp("a"), B: fp("b")})
    assert (plan.action, plan.todo, sorted(plan.kept), plan.unchanged) == ("repair", [B], [A], False)
    renamed = OnDisk([], published((A, DONE, fp("a"))), renamed=True)
    plan = plan_output(OUT, [A], renamed, fingerprints={A: fp("a")})
    assert (plan.action, plan.todo, plan.unchanged) == ("update", [], False)  # nothing computed, index rewritten


def test_an_unfinished_copy_is_kept_only_when_it_matches_its_checksum():
    partial = source("out.h5.partial", False, {D: (DONE, fp("d"))})
    found = OnDisk([partial], published((A, DONE, fp("a"))))
    kept = plan_output(OUT, [A, D], found, fingerprints={A: fp("a"), D: fp("d")}, intact=lambda s, i: True)
    assert (sorted(kept.kept), kept.todo) == ([A, D], [])
    damaged = plan_output(OUT, [A, D], found, fingerprints={A: fp("a"), D: fp("d")}, intact=lambda s, i: False)
    assert (sorted(damaged.kept), damaged.todo) == ([A], [D])


def test_frozen_and_a_dataset_master_refuse_instead_of_recomputing():
    on_disk = published((A, DONE, fp("a")), (B, DONE, fp("b")))
    with pytest.raises(ConfigMismatchError, match="changed since they were calibrated"):
        plan_output(OUT, [A, B], OnDisk([], on_disk), fingerprints={A: fp("a"), B: fp("b", 2)}, frozen=True)
    with pytest.raises(ConfigMismatchError, match="observation list differs"):
        plan_output(OUT, [A, B, C], OnDisk([], on_disk), fingerprints={A: fp("a"), B: fp("b"), C: fp("c")},
                    extend=False)
