"""The output's life as a plan: from what is on disk and in the data folder, what to compute, keep and drop.

What a run finds on disk (:func:`arielstream.io.output.read_on_disk`), and what it does
(under the run lock, ``OUT.h5.lock``):

* nothing → lay out a new ``OUT.h5.partial`` for every observation; when all have a
  final status it is renamed to ``OUT.h5``: one self-contained file;
* files made by the same numerical code, config and split
  (:mod:`arielstream.run.identity`): ``OUT.h5`` (or the parts it refers to), an
  unfinished ``OUT.h5.partial``, parts a killed run left → each observation wanted is
  **kept** from the newest file where it is done and was computed from the input
  files as they are now (their sizes and modification times, ``/inputs``, by their path
  relative to the data folder, wherever it is now); what is left is computed into a
  ``.partial`` holding only those:

  - an observation new in the data folder (**extend**), one whose inputs changed
    (**recompute**; ``frozen`` refuses instead), one failed or pending (**retry-failed**),
    one whose part is missing or damaged (**repair**);
  - nothing left and ``OUT.h5`` unchanged: every done observation is checked
    against its checksum → **nothing to do** (``complete``), or the damaged ones are
    recomputed (**repair**); an index whose parts moved with it is re-written (**update**);
  - an observation ``OUT.h5`` holds that the run's selection (``planets``) left out is kept
    as it is; one no longer in the data folder is kept, with a warning (``drop_missing``
    leaves it out);
  - the ``.partial`` is **resumed** when it holds just what is left; otherwise what it
    finished becomes a part and the rest goes into a new ``.partial``;

* anything made differently → refused (:class:`~arielstream.errors.ConfigMismatchError`,
  naming what differs and what to do); ``force`` → start afresh (the old ``OUT.h5`` stays
  until the new one is published).

:func:`plan_output` is the decision alone, over what :func:`read_on_disk` found: it opens
no file (checking an unpublished copy's checksum is a function it is given), so it is
tested as a table. :func:`prepare_output` carries a plan out; publishing is
:func:`arielstream.io.output.publish`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import ConfigMismatchError, flag
from ..io import atomic
from ..io.ledger import Ledger
from ..io.manifest import fingerprint_changes
from ..io.output import (
    Key,
    OnDisk,
    PreparedOutput,
    Source,
    finish_publish,
    held_open,
    intact,
    key_of,
    lay_out,
    lay_out_fresh,
    new_part_path,
    part_number,
    read_on_disk,
    refused,
    verify_published,
)
from ..io.schema import STATUS_DONE
from ..io.sidefiles import OutputFiles
from ..io.store import InstrumentLayout, is_output_file, read_descriptors
from ..layout import Observation
from .identity import identity_differences

log = logging.getLogger(__name__)

Intact = Callable[[Source, int], bool]  # does this unpublished copy match its checksum (a run died writing it?)
COUNTS = ("added", "recomputed", "retried", "repaired", "kept", "dropped")


def _identity_mismatch(path: Path, identity: dict[str, str], layouts: list[InstrumentLayout]) -> list[str]:
    """What differs between an existing file and this run, by category (empty: the same run may use it)."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        busy = held_open(path, exc)
        if busy is not None:
            raise busy from None
        return [f"not an HDF5 file arielstream can open ({exc})"]
    with f:
        if not is_output_file(f):  # e.g. a light-curve file: say what it is, not how its attributes differ
            return ["not an arielstream calibrated file (another HDF5 file, e.g. light curves or fits)"]
        problems = identity_differences(f.attrs, identity)
        if not problems and not ("planet_id" in f and "visit" in f):
            problems.append("observation list missing")
        if problems:  # the cubes' shapes follow from the config and the observations: not a cause of its own
            return problems
        for lay in layouts:
            name = f"{lay.name}/signal"
            if name not in f or f[name].shape[1:] != lay.signal_shape or \
                    not np.array_equal(f[f"{lay.name}/time"][()], lay.time):
                problems.append(f"{lay.name} cube or time axis differs (the data folder's axis files changed?)")
    return problems


def _choose(key: Key, fingerprint: str | None, newest: list[Source], published: dict[Key, tuple[Source, int]],
            intact: Intact) -> tuple[tuple[Source, int] | None, list[str]]:
    """The newest copy of ``key`` that is done and computed from the inputs there now; else why none is."""
    candidates = [(s, s.position[key]) for s in newest if key in s.position]
    if key in published:
        candidates.append(published[key])
    changed: list[str] = []
    for source, index in candidates:
        if source.status[index] != STATUS_DONE:
            continue
        if fingerprint is not None:
            diff = fingerprint_changes(source.inputs[index], fingerprint)
            if diff:
                changed = changed or diff
                continue
        if not source.published and not intact(source, index):  # written by a run that died
            log.warning("%s: observation %d/visit %d does not match its checksum; recomputed", source.path, *key)
            continue
        return (source, index), []
    return None, changed


def _sort_missing(output: Path, missing: list[Key], found: OnDisk, on_disk: set[Key] | None, drop: bool,
                  counts: dict[str, list[Key]]) -> None:
    """Observations of ``OUT.h5`` this run does not compute: kept, or dropped; logged either way.

    One the run's selection (``--planets``, ``--obs``) left out but still in the data folder is
    always kept as it is, whatever ``drop``: a subset run never takes anything out of an output.
    One whose inputs are gone from the data folder is kept when done (``drop`` leaves it out).
    One whose part is lost and whose inputs are gone cannot be kept.
    """
    selected_out: list[Key] = []
    gone_kept: list[Key] = []
    for key in missing:
        if key not in found.published:  # its part is lost, and it cannot be recomputed
            counts["dropped"].append(key)
            continue
        source, index = found.published[key]
        if on_disk is not None and key in on_disk:
            selected_out.append(key)
            counts["kept"].append(key)
        elif drop or source.status[index] != STATUS_DONE:
            counts["dropped"].append(key)
        else:
            gone_kept.append(key)
            counts["kept"].append(key)
    if selected_out:
        log.info("%s: %d observation(s) not selected by this run are kept as they are", output, len(selected_out))
    if gone_kept:
        log.warning("%s: %d observation(s) no longer in the data folder are kept (%s); %s leaves them out", output,
                    len(gone_kept), ", ".join(f"{p}/visit {v}" for p, v in gone_kept), flag("drop_missing"))
    if counts["dropped"]:
        log.warning("%s: %d observation(s) no longer in the data folder are left out (%s)", output,
                    len(counts["dropped"]), ", ".join(f"{p}/visit {v}" for p, v in counts["dropped"]))


def _report_changes(output: Path, changes: dict[Key, list[str]], frozen: bool) -> None:
    """Say which inputs changed (recomputed), or refuse with ``frozen``."""
    if not changes:
        return
    lines = [f"{p}/visit {v}: {'; '.join(c[:3])}" + (f" (+{len(c) - 3} more)" if len(c) > 3 else "")
             for (p, v), c in changes.items()]
    if frozen:
        raise ConfigMismatchError(f"{output}: the inputs of {len(changes)} observation(s) changed since they "
                                  f"were calibrated: {'; '.join(lines[:5])}. Refusing with {flag('frozen')}: "
                                  f"restore the files, or run without {flag('frozen', False)} to recompute them")
    for line in lines:
        log.warning("%s: inputs changed since it was calibrated (%s); recomputed", output, line)


def _keep_or_compute(wanted: list[Key], fingerprints: dict[Key, str], found: OnDisk,
                     kept: dict[Key, tuple[Source, int]], counts: dict[str, list[Key]], output: Path,
                     frozen: bool, intact: Intact) -> list[Key]:
    """Each wanted observation kept (into ``kept``) or to compute (returned), counted by why."""
    todo_keys: list[Key] = []
    changes: dict[Key, list[str]] = {}
    newest, published, lost = found.newest, found.published, set(found.lost)
    for key in wanted:
        chosen, changed = _choose(key, fingerprints.get(key), newest, published, intact)
        if chosen is not None:
            kept[key] = chosen
            continue
        todo_keys.append(key)
        if changed:  # done somewhere, from other inputs
            counts["recomputed"].append(key)
            changes[key] = changed
        elif key in lost:  # its part is missing or damaged
            counts["repaired"].append(key)
        elif key in published:
            counts["retried"].append(key)
        elif not any(key in source.position for source in newest):  # a stopped run's pending ones are not new
            counts["added"].append(key)
    _report_changes(output, changes, frozen)
    return todo_keys


@dataclass
class Plan:
    """What a run does to an output: what it keeps from where, what it computes, what the output then holds."""

    keys: list[Key]  # every observation of the output once published, in order
    kept: dict[Key, tuple[Source, int]]  # observations kept, and where their bytes are
    todo: list[Key]  # observations to compute
    counts: dict[str, list[Key]]  # added, recomputed, retried, repaired, kept, dropped
    unchanged: bool  # nothing to compute, and the output would be what it is: only its checksums to check

    @property
    def action(self) -> str:
        """The run's name for it: extend, recompute, repair, retry-failed or update."""
        c = self.counts
        return ("extend" if c["added"] else "recompute" if c["recomputed"] else "repair" if c["repaired"] else
                "retry-failed" if c["retried"] else "update")


def plan_output(output: Path, wanted: list[Key], found: OnDisk, *, fingerprints: dict[Key, str] | None = None,
                on_disk: set[Key] | None = None, drop_missing: bool = False, frozen: bool = False,
                extend: bool = True, intact: Intact = intact) -> Plan:
    """Decide, from what is on disk (``found``) and what the run wants, what to keep and what to compute.

    Opens no file: ``intact`` checks an unpublished copy's checksum. ``output`` only names
    the output in messages. Raises :class:`ConfigMismatchError` for ``frozen`` inputs that
    changed, or a changed observation list with ``extend=False``.
    """
    counts: dict[str, list[Key]] = {name: [] for name in COUNTS}
    published = found.published
    missing = sorted((set(published) | set(found.lost)) - set(wanted))
    _sort_missing(output, missing, found, on_disk, drop_missing, counts)
    kept: dict[Key, tuple[Source, int]] = {key: published[key] for key in counts["kept"]}
    todo = _keep_or_compute(wanted, fingerprints or {}, found, kept, counts, output, frozen, intact)
    if not extend and (counts["added"] or counts["recomputed"] or missing):
        problems = [f"observation list differs ({len(counts['added'])} new, {len(missing)} missing)"] \
            if counts["added"] or missing else [f"the inputs of {len(counts['recomputed'])} observation(s) changed"]
        raise refused(output, problems,
                      " (with master_calibration = \"dataset\" every observation depends on all the others)")
    keys = sorted(set(wanted) | set(counts["kept"]))
    unchanged = not todo and bool(published) and keys == list(published) and not found.lost and \
        not found.renamed and all(kept.get(k) == published[k] for k in keys)
    return Plan(keys, kept, sorted(todo), counts, unchanged)


def _repair(plan: Plan, damaged: list[Key], current: dict[Key, Observation], available: dict[Key, Observation],
            output: Path) -> None:
    """Published observations whose bytes fail their checksum: recomputed, or left out when their inputs are gone.

    One the run's selection left out is recomputed too: its inputs are still in the data folder.
    """
    log.warning("%s: %d done observation(s) no longer match their checksum (the file was damaged after it was "
                "published): %s; they are recomputed", output, len(damaged),
                ", ".join(f"{p}/visit {v}" for p, v in damaged))
    for key in damaged:
        plan.kept.pop(key)
        if key in available:
            current.setdefault(key, available[key])
        plan.counts["repaired" if key in current else "dropped"].append(key)
    lost = [k for k in damaged if k not in current]
    if lost:
        log.error("%s: %d damaged observation(s) cannot be recomputed (their inputs are no longer in the data "
                  "folder) and are left out: %s", output, len(lost), ", ".join(f"{p}/visit {v}" for p, v in lost))
        plan.keys = [k for k in plan.keys if k not in lost]
    plan.todo = sorted(plan.counts["repaired"])


def prepare_output(output: Path, observations: list[Observation], layouts: list[InstrumentLayout],
                   attrs: dict[str, Any], identity: dict[str, str], force: bool = False, *,
                   fingerprints: dict[Key, str] | None = None, frozen: bool = False, drop_missing: bool = False,
                   extend: bool = True, on_disk: dict[Key, Observation] | None = None,
                   parts: bool = False) -> PreparedOutput:
    """Carry out :func:`plan_output` on what is on disk: the ``.partial`` to compute into, laid out or resumed.

    ``fingerprints``: each observation's inputs now (:func:`arielstream.io.manifest.fingerprint`);
    ``frozen``: refuse rather than recompute observations whose inputs changed;
    ``drop_missing``: leave out of the output what is no longer in the data folder;
    ``on_disk``: every observation in the data folder, selected or not (``None``: those of
    ``observations``): what the output holds of the others is kept, whatever ``drop_missing``, and
    one of them whose part is lost or whose bytes are damaged is recomputed;
    ``extend=False``: the observations depend on each other (a master over the whole
    dataset), so a changed observation list or input is refused instead;
    ``parts``: parts mode (:mod:`arielstream.io.parts`): nothing is laid out, each observation
    to compute gets a part of its own; a ``.partial`` left by a default-mode run becomes a part
    when it holds done observations, and parts a killed run left are kept like any other.
    """
    output = Path(output)
    files = OutputFiles.of(output)
    partial = files.partial
    finish_publish(output)
    for leftover in (files.partial_staging, files.journal_staging):
        leftover.unlink(missing_ok=True)
    current = {key_of(o): o for o in observations}
    wanted = sorted(current)
    if force:
        return _fresh_parts(output, observations) if parts else lay_out_fresh(output, observations, layouts, attrs)
    found = read_on_disk(output, lambda path: _identity_mismatch(path, identity, layouts))
    fresh_from = _fresh_parts_from(files)
    if files.fresh.exists() and found.newest and found.newest[0].path == partial:  # a --force run stopped: it
        if found.newest[0].keys != wanted:  # goes on, alone
            log.warning("%s: the --force run that stopped was for other observations; starting it again", output)
            return lay_out_fresh(output, observations, layouts, attrs)
        found = OnDisk(found.newest[:1], {})
        files.fresh.unlink(missing_ok=True)
    elif fresh_from is not None:  # a --force run in parts mode stopped: it goes on with its own parts alone
        own = [s for s in found.newest if s.path.parent == files.parts and part_number(s.path) >= fresh_from]
        if any(key not in current for s in own for key in s.keys):
            log.warning("%s: the --force run that stopped was for other observations; starting it again", output)
            return _fresh_parts(output, observations) if parts else lay_out_fresh(output, observations, layouts,
                                                                                  attrs)
        found = OnDisk(own, {})  # the marker stays until the publish
    else:
        files.fresh.unlink(missing_ok=True)
    if not found.newest and not found.published and not found.lost:
        if parts:
            return _parts_for(observations, "new", partial, observations)
        return lay_out(files, observations, layouts, attrs, "new", observations)
    available = on_disk if on_disk is not None else current
    revived = [key for key in found.lost if key not in current and key in available]
    if revived:  # the selection left them out, but their part is gone: recomputed from the inputs still here
        log.warning("%s: %d observation(s) not selected by this run are recomputed: their part is missing or "
                    "damaged (%s)", output, len(revived), ", ".join(f"{p}/visit {v}" for p, v in revived))
        current.update({key: available[key] for key in revived})
    plan = plan_output(output if output.exists() else partial, sorted(current), found, fingerprints=fingerprints,
                       on_disk=set(available), drop_missing=drop_missing, frozen=frozen, extend=extend)
    if plan.unchanged or (not plan.todo and found.renamed):  # nothing computed: what is kept is checked first
        damaged = verify_published(output, {key: copy for key, copy in plan.kept.items()
                                            if found.published.get(key) == copy})
        if not damaged and plan.unchanged:
            if partial.exists():  # nothing of it is kept (what it finished is older than OUT.h5's copies)
                atomic.discard(partial)
            return PreparedOutput("complete", partial, keys=plan.keys, counts=plan.counts)
        if damaged:
            _repair(plan, damaged, current, available, output)
    action = "resume" if parts and plan.kept and not found.published else plan.action  # a killed parts run's
    prepared = _partial_for(output, found.newest, plan.kept, plan.todo, current, layouts, attrs, action, parts)
    prepared.keys, prepared.counts = plan.keys, plan.counts
    prepared.kept = {k: (s.path, i) for k, (s, i) in plan.kept.items() if s.path != partial}
    prepared.sizes = {s.path: len(s.keys) for s, _ in plan.kept.values() if s.path != partial}
    return prepared


def _partial_for(output: Path, newest: list[Source], kept: dict[Key, tuple[Source, int]], todo_keys: list[Key],
                 current: dict[Key, Observation], layouts: list[InstrumentLayout], attrs: dict[str, Any],
                 action: str, parts: bool = False) -> PreparedOutput:
    """The ``.partial`` that computes ``todo_keys``: the one there, resumed, if it holds just those; else a new one.

    A ``.partial`` laid out for other observations (or any, in parts mode) becomes a part
    (the observations it finished are kept from there), or is removed when it holds nothing kept.
    """
    files = OutputFiles.of(output)
    partial = files.partial
    existing = newest[0] if newest and newest[0].path == partial else None
    if existing is not None:
        from_partial = {k for k, (s, _) in kept.items() if s is existing}
        if not parts and set(existing.keys) == set(todo_keys) | from_partial:
            ledger = Ledger(existing.descriptors)
            todo = ledger.reconcile(existing.status, retry_failed=True)
            for key in todo_keys:  # done there but no longer kept: inputs changed, or its checksum failed
                index = existing.position[key]
                if index not in todo:
                    ledger.reset(index)
                    todo.append(index)
            return PreparedOutput("resume", partial, existing.descriptors, sorted(todo),
                                  [current[k] for k in existing.keys])
        if from_partial:
            existing.path = new_part_path(output)
            existing.path.parent.mkdir(exist_ok=True)
            with atomic.output_errors(existing.path, "keep the finished observations of the unfinished run"):
                os.replace(partial, existing.path)
                existing.descriptors = read_descriptors(existing.path)
            log.info("%s: the unfinished run's %d done observation(s) are kept in %s", output, len(from_partial),
                     existing.path)
        else:
            atomic.discard(partial)
    if not todo_keys:
        return PreparedOutput(action, partial, parts=parts)
    observations = [current[k] for k in todo_keys]
    if parts:
        return _parts_for(observations, action, partial, observations)
    return lay_out(files, observations, layouts, attrs, action, observations)


def _parts_for(observations: list[Observation], action: str, partial: Path, keys_from: list[Observation],
               ) -> PreparedOutput:
    """Parts mode: ``observations`` to compute, each into a part of its own; nothing laid out here."""
    return PreparedOutput(action, partial, {}, list(range(len(observations))), observations,
                          [key_of(o) for o in keys_from], parts=True)


def _fresh_parts(output: Path, observations: list[Observation]) -> PreparedOutput:
    """Parts mode, ``--force``: every observation computed; the marker names this run's first part number.

    A rerun after a kill goes on with the parts numbered from there alone (:func:`_fresh_parts_from`).
    """
    files = OutputFiles.of(output)
    atomic.discard(files.partial)  # a default-mode run's: nothing older is kept
    with atomic.output_errors(files.fresh, "mark the --force run"):
        files.fresh.write_text(str(part_number(new_part_path(output))))
    return _parts_for(observations, "new", files.partial, observations)


def _fresh_parts_from(files: OutputFiles) -> int | None:
    """The first part number of a stopped ``--force`` run in parts mode (its marker's content), else None."""
    try:
        text = files.fresh.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
