"""Master calibration frames: a visit's dark and flat replaced by a combination over visits or planets.

refstis and eloy build superdarks and master flats from many frames; here the
frames of every visit of a planet (``planet``) or of every observation of the
run (``dataset``) are combined per pixel with a sigma-clipped mean, and the
usual hot-pixel clip then runs on the master (the iterative flag of refstis).
"""

from __future__ import annotations

import numpy as np

from .calibration_files import read_frame_table
from .errors import InputError
from .layout import Instrument, Observation

COMBINED = ("dark", "flat")


def master_frame(frames: np.ndarray, sigma: float = 3.0, maxiters: int = 5) -> np.ndarray:
    """Per-pixel clipped mean of ``(n, rows, cols)`` frames (the plain mean of fewer than three).

    The spread is the median absolute deviation (x1.4826), not the standard
    deviation: with a handful of frames one bad frame inflates the standard
    deviation enough to hide itself.
    """
    frames = np.asarray(frames, dtype=np.float64)
    if frames.shape[0] < 3:
        return frames.mean(axis=0)
    keep = np.isfinite(frames)
    for _ in range(maxiters):
        kept = np.where(keep, frames, np.nan)
        centre = np.nanmedian(kept, axis=0)
        spread = 1.4826 * np.nanmedian(np.abs(kept - centre), axis=0)
        new = keep & (np.abs(frames - centre) <= sigma * np.maximum(spread, 1e-300))
        if np.array_equal(new, keep):
            break
        keep = new
    return np.nanmean(np.where(keep, frames, np.nan), axis=0)


def load_masters(observations: list[Observation], inst: Instrument) -> tuple[dict[str, np.ndarray], int]:
    """Master dark and flat over the calibration folders of ``observations`` (those present)."""
    frames: dict[str, list[np.ndarray]] = {name: [] for name in COMBINED}
    for obs in observations:
        for name in COMBINED:
            path = obs.calibration_path(inst, name)
            if path.exists():
                frames[name].append(read_frame_table(path, inst.rows, inst.columns, "float"))
    missing = [name for name, found in frames.items() if not found]
    if missing:
        raise InputError(observations[0].folder, f"no {', '.join(missing)} frame to build a master from")
    return {name: master_frame(np.stack(found)) for name, found in frames.items()}, len(frames["dark"])
