"""The quicklook page as a browser shows it: a headless chromium screenshot of the samples' index.html.

Skipped, saying why, where chromium is not installed (Debian: ``apt-get install chromium``);
CI does not install it. ``make quicklook-screenshot`` makes the same screenshot into output/quicklook.png.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from arielstream.products import quicklook

from .test_quicklook import calibrated, png_size  # noqa: F401  (the module's fixture, shared)

WIDTH, HEIGHT = 1400, 2400


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium is not installed (apt-get install chromium): no browser to screenshot the page with")


def test_the_page_renders_in_a_headless_browser(calibrated, tmp_path):  # noqa: F811
    pytest.importorskip("matplotlib")
    import matplotlib.image

    browser = chromium()
    index = quicklook.quicklook(calibrated, tmp_path / "ql")
    shot = tmp_path / "quicklook.png"
    run = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}",
         index.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert shot.is_file(), f"no screenshot (exit {run.returncode}): {run.stderr[-2000:]}"
    assert png_size(shot) == (WIDTH, HEIGHT)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.std() > 0.05, "the screenshot is blank"
    # the images loaded: plots (not only black text on white) fill a good part of the page
    coloured = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 0.2
    assert coloured.mean() > 0.02, f"only {coloured.mean():.1%} of the page is in colour: did the images load?"
