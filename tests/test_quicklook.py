"""Quicklook: real PNGs (decoded here), one set per observation, and an index that links every one."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import struct
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest

import arielstream
from arielstream.cli import app as cli
from arielstream.cli import products as cli_products
from arielstream.errors import ArielstreamError, InputError, OutputError
from arielstream.io.schema import STATUS_DONE, STATUS_FAILED
from arielstream.products import quicklook

from .conftest import DATA_SAMPLES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("quicklook") / "samples.h5"
    arielstream.calibrate(DATA_SAMPLES, out, jobs=1, progress=False, log_file=False)
    return out


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.href: list[str] = []
        self.src: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and "href" in attrs:
            self.href.append(attrs["href"])
        if tag == "section" and "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img" and "src" in attrs:
            self.src.append(attrs["src"])


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk (which must come first)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def check_png(path: Path) -> None:
    import matplotlib.image

    width, height = png_size(path)
    assert 300 <= width <= 2000 and 200 <= height <= 1500, f"{path.name}: {width}x{height}"
    pixels = matplotlib.image.imread(path)  # decodes the whole image (a truncated file fails here)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.02, f"{path.name} is blank"


def test_quicklook_writes_decodable_pngs_and_an_index_linking_them(calibrated, tmp_path):
    pytest.importorskip("matplotlib")
    index = quicklook.quicklook(calibrated, tmp_path / "ql")
    assert index == tmp_path / "ql" / "index.html"
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert len(pngs) == 3 * len(quicklook.PLOTS)  # every observation, every plot
    for name in pngs:
        check_png(index.parent / name)
    links = Links()
    links.feed(index.read_text())
    files = [h for h in links.href if not h.startswith("#")]
    assert set(files) == set(pngs) and set(links.src) == set(pngs)
    anchors = {h[1:] for h in links.href if h.startswith("#")}
    assert anchors == set(links.ids) and len(anchors) == 3  # a table of contents, one entry per observation
    for href in files:  # relative links that resolve beside the page
        assert "://" not in href and not href.startswith("/")
        assert (index.parent / href).is_file()
    assert "4225610805_visit1" in index.read_text()


def test_quicklook_of_chosen_observations_only(calibrated, tmp_path):
    pytest.importorskip("matplotlib")
    index = quicklook.quicklook(calibrated, tmp_path, obs=[2])
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == sorted(f"4225610805_visit1_{what}.png" for what in quicklook.PLOTS)
    assert index.read_text().count("<section") == 1


def test_without_matplotlib_the_error_says_what_to_install(calibrated, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ArielstreamError, match="quicklook needs matplotlib: pip install matplotlib"):
        quicklook.quicklook(calibrated, tmp_path)
    assert not list(tmp_path.glob("*.png"))


def parse(argv):
    parser = argparse.ArgumentParser(prog="arielstream")
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-q", "--quiet", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = cli_products.add_commands(sub, [verbosity])
    args = parser.parse_args(argv)
    assert handlers[args.command] is args.handler
    return args


def test_cli_quicklook_extract_and_export(calibrated, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    args = parse(["quicklook", str(calibrated), "--obs", "0", "-o", str(tmp_path / "ql"), "-q"])
    assert args.handler(args) == 0
    assert len(list((tmp_path / "ql").glob("*.png"))) == len(quicklook.PLOTS)
    args = parse(["extract", str(calibrated), "-o", str(tmp_path / "lc.h5"), "--half-width", "4", "--weighted"])
    assert args.handler(args) == 0 and (tmp_path / "lc.h5").is_file()
    args = parse(["export", str(tmp_path / "lc.h5"), "--format", "csv", "-o", str(tmp_path / "tab")])
    assert args.handler(args) == 0
    assert (tmp_path / "tab" / "lightcurves.csv").stat().st_size > 1000
    assert "lightcurves.csv" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parse(["export", str(calibrated), "--format", "xlsx", "-o", str(tmp_path)])
    with pytest.raises(SystemExit):
        parse(["extract", str(calibrated), "--half-width", "-1"])
    args = parse(["quicklook", str(calibrated), "--obs", "7", "-o", str(tmp_path / "none")])
    assert args.handler(args) == 2  # an observation the file does not have: a usage error, not a crash
    assert "observation 7 outside 0..2" in capsys.readouterr().err
    args = parse(["extract", str(tmp_path / "missing.h5")])
    with pytest.raises(InputError, match="cannot read"):  # cli.main turns it into exit 66
        args.handler(args)


def edited_copy(calibrated: Path, tmp_path: Path, edit) -> Path:
    """A copy of the calibrated file changed by ``edit(f)`` (the module's file stays as it is)."""
    copy = tmp_path / "edited.h5"
    shutil.copy(calibrated, copy)
    with h5py.File(copy, "r+") as f:
        edit(f)
    return copy


def stems(calibrated: Path) -> list[str]:
    with h5py.File(calibrated, "r") as f:
        return [f"{p}_visit{v}" for p, v in zip(f["planet_id"][()], f["visit"][()], strict=True)]


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file of ``folder``: inode, modification time and content (a rewrite changes one of them)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def not_done(*indices):
    def edit(f):
        status = f["status"][()]
        status[list(indices)] = STATUS_FAILED
        f["status"][...] = status
    return edit


def no_format(f):
    del f.attrs["format"]


@pytest.mark.parametrize(("case", "match"), [
    ("not hdf5", "cannot read"),
    ("not arielstream", "not an arielstream output file"),
    ("nothing done", r"no done observation to show \(none of its 3 observations is done\)"),
    ("chosen not done", r"no done observation to show among observations \[1, 2\]"),
])
def test_a_bad_source_is_an_input_error_and_creates_no_folder(calibrated, tmp_path, case, match, caplog):
    pytest.importorskip("matplotlib")
    obs = None
    if case == "not hdf5":
        source = tmp_path / "notes.h5"
        source.write_text("not HDF5")
    elif case == "not arielstream":
        source = edited_copy(calibrated, tmp_path, no_format)
    elif case == "nothing done":
        source = edited_copy(calibrated, tmp_path, not_done(0, 1, 2))
    else:
        source, obs = edited_copy(calibrated, tmp_path, not_done(1, 2)), [1, 2]
    out = tmp_path / "deep" / "ql"
    with pytest.raises(InputError, match=match):
        quicklook.quicklook(source, out, obs=obs)
    assert not (tmp_path / "deep").exists()  # checked before anything is created
    if case == "chosen not done":
        assert "observation 1 is not done" in caplog.text and "observation 2 is not done" in caplog.text
        with h5py.File(source, "r") as f:
            assert f["status"][0] == STATUS_DONE  # the observation not chosen is shown when asked for
        assert quicklook.quicklook(source, out, obs=[0, 1]).read_text().count("<section") == 1
    argv = ["quicklook", str(source), "-o", str(tmp_path / "cli"), "-q"] + (["--obs", "1", "2"] if obs else [])
    assert cli.main(argv) == cli.EXIT_NOINPUT  # 66, not an empty page and exit 0
    assert not (tmp_path / "cli").exists()


def test_an_observation_outside_the_file_creates_no_folder(calibrated, tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ArielstreamError, match="observation 7 outside 0..2"):
        quicklook.quicklook(calibrated, tmp_path / "ql", obs=[7])
    assert not (tmp_path / "ql").exists()


@pytest.mark.parametrize("obstacle", ["parent is a file", "index is a folder", "image is a folder"])
def test_an_output_that_cannot_be_written_is_an_output_error_naming_it(calibrated, tmp_path, obstacle, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "ql"
    if obstacle == "parent is a file":
        (tmp_path / "file").write_text("a file, not a folder")  # root ignores permissions; this stops it
        out, blocked = tmp_path / "file" / "ql", tmp_path / "file" / "ql"
    elif obstacle == "index is a folder":
        blocked = out / "index.html"
    else:
        blocked = out / f"{stems(calibrated)[0]}_frames.png"
    if blocked != out:
        blocked.mkdir(parents=True)
    with pytest.raises(OutputError, match=f"^{blocked}: cannot "):
        quicklook.quicklook(calibrated, out, obs=[0])
    assert cli.main(["quicklook", str(calibrated), "--obs", "0", "-o", str(out), "-q"]) == cli.EXIT_CANTCREAT  # 73
    assert f"arielstream: {blocked}: cannot " in capsys.readouterr().err
    if out.is_dir():
        assert not list(out.glob("*.partial"))
        assert not [p for p in out.iterdir() if p.is_file()]  # no image renamed into place alone


def test_images_and_index_are_replaced_never_rewritten_in_place(calibrated, tmp_path):
    pytest.importorskip("matplotlib")
    out, old = tmp_path / "ql", tmp_path / "old"
    quicklook.quicklook(calibrated, out)
    old.mkdir()
    for p in out.iterdir():  # a previous run's files, each also reachable through a second name
        p.write_bytes(b"old " + p.name.encode())
        os.link(p, old / p.name)
    index = quicklook.quicklook(calibrated, out)
    for p in old.iterdir():  # a file rewritten in place (a reader could see it half written) would show here
        assert p.read_bytes() == b"old " + p.name.encode()
        assert not os.path.samefile(p, out / p.name)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in old.iterdir())  # no *.partial left
    assert index.read_text().count("<section") == 3
    for p in out.glob("*.png"):
        check_png(p)


@pytest.mark.slow
def test_a_failed_rerun_leaves_the_previous_page_and_images_as_they_were(calibrated, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    out = tmp_path / "ql"
    quicklook.quicklook(calibrated, out)
    before = snapshot(out)
    savefig, calls = matplotlib.figure.Figure.savefig, []

    failing = len(quicklook.PLOTS) + 2  # observation 1, second image (dq)

    def disk_full_on_the_dq_of_observation_1(self, fname, *args, **kwargs):
        calls.append(fname)
        if len(calls) == failing:
            Path(fname).write_bytes(PNG_SIGNATURE + b"\0\0\0\rIHDR")  # a truncated PNG, then the error
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fname))
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full_on_the_dq_of_observation_1)
    failed = out / f"{stems(calibrated)[1]}_dq.png"
    with pytest.raises(OutputError, match=f"^{failed}: cannot write the quicklook image: .*No space left"):
        quicklook.quicklook(calibrated, out)
    assert len(calls) == failing
    assert snapshot(out) == before  # not one image replaced, no truncated one, no *.partial left
    monkeypatch.undo()
    assert quicklook.quicklook(calibrated, out).read_text().count("<section") == 3  # the re-run completes


def test_an_observation_without_any_finite_pixel_plots_without_warnings(calibrated, tmp_path):
    pytest.importorskip("matplotlib")

    def all_nan(f):
        for inst in ("AIRS-CH0", "FGS1"):
            f[f"{inst}/signal"][0] = np.nan

    source = edited_copy(calibrated, tmp_path, all_nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as pytest's own setting: "All-NaN slice", empty legends, ...
        index = quicklook.quicklook(source, tmp_path / "ql", obs=[0])
    pngs = sorted(index.parent.glob("*.png"))
    assert [p.name for p in pngs] == sorted(f"{stems(calibrated)[0]}_{what}.png" for what in quicklook.PLOTS)
    for p in pngs:
        assert png_size(p)[0] >= 300
    assert index.read_text().count("<section") == 1


def test_every_dq_bit_has_a_colour():
    from arielstream import dq as dqbits

    assert len(quicklook.DQ_COLOURS) >= len(dqbits.BITS) + 1


def test_quick_depths_recover_a_box_transit_with_errors_from_the_scatter():
    rng = np.random.default_rng(3)
    t, w = 60, 4
    depth = np.array([0.010, 0.012, 0.015, 0.011])
    inside_true = (np.arange(t) >= 20) & (np.arange(t) < 40)
    flux = 1.0 - inside_true[:, None] * depth[None, :] + rng.normal(0, 1e-4, (t, w))
    err = np.full((t, w), 1e-4)
    bins = quicklook.transit_bins(flux.mean(axis=1), err[:, 0] / 2)
    assert bins is not None
    inside, outside = bins
    assert np.array_equal(inside, inside_true) and np.array_equal(outside, ~inside_true)
    got, sigma, from_scatter = quicklook.quick_depths(flux, err, inside, outside)
    assert from_scatter
    assert np.all(np.abs(got - depth) < 5 * sigma) and np.all(sigma < 1e-4)
    flat = 1.0 + rng.normal(0, 1e-4, t)
    assert quicklook.transit_bins(flat, np.full(t, 1e-4)) is None  # no dip: no quick spectrum


def test_the_airs_axis_is_the_files_wavelength_in_um(calibrated):
    with h5py.File(calibrated, "r") as f:
        wl = quicklook.wavelength_um(f, "AIRS-CH0")
        assert wl is not None and np.array_equal(wl, f["AIRS-CH0/wavelength"][()])
        assert f["AIRS-CH0/wavelength"].attrs["units"] in ("um", b"um")
        assert quicklook.wavelength_um(f, "FGS1") is None
        counts = quicklook.dq_time_counts(f["AIRS-CH0/dq_time"], 0)
        assert counts.shape == (f["AIRS-CH0/time"].shape[0], 4) and counts.sum() > 0
    assert np.allclose(quicklook.edges(np.array([1.0, 2.0, 4.0])), [0.5, 1.5, 3.0, 5.0])


def test_a_spectrum_file_beside_the_source_is_drawn_instead_of_the_quick_estimate(calibrated, tmp_path):
    pytest.importorskip("matplotlib")
    from arielstream.products import spectrum

    source = tmp_path / "samples.h5"
    shutil.copy(calibrated, source)
    page = quicklook.quicklook(source, tmp_path / "quick", obs=[0]).read_text()
    assert "quick estimates from the light curves" in page and "Quick estimate, not a fit" in page
    submission = spectrum.default_submission(source)  # what `arielstream spectrum OUT.h5` writes by default
    rows = [spectrum.submission_header(), ["73079497", *["0.005"] * 283, *["0.0002"] * 283]]
    submission.write_text("\n".join(",".join(r) for r in rows) + "\n")
    page = quicklook.quicklook(source, tmp_path / "found", obs=[0]).read_text()
    assert f"Spectra from {submission}" in page and "Quick estimate, not a fit" not in page
    given = quicklook.SpectrumFile(submission)
    with h5py.File(source, "r") as f:
        from arielstream.products import lightcurves

        lc = lightcurves.observation_light_curves(f, 0)
    drawn = given.spectrum(lc)
    assert drawn is not None and not drawn.quick and drawn.wavelength.size == 283
    assert drawn.wavelength[0] == 0.7 and np.allclose(np.sort(drawn.wavelength[1:]), lc.wavelength)
    (tmp_path / "bad.csv").write_text("not,a,spectrum\n")
    with pytest.raises(InputError, match="cannot read the spectrum"):
        quicklook.quicklook(source, tmp_path / "bad", spectrum=tmp_path / "bad.csv")
    assert not (tmp_path / "bad").exists()


def test_cli_quicklook_draws_the_spectrum_file_it_is_given(calibrated, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from arielstream.cli.app import main
    from arielstream.products import spectrum

    elsewhere = tmp_path / "kept" / "my_submission.csv"  # not beside the source: only --spectrum finds it
    elsewhere.parent.mkdir()
    rows = [spectrum.submission_header(), ["73079497", *["0.005"] * 283, *["0.0002"] * 283]]
    elsewhere.write_text("\n".join(",".join(r) for r in rows) + "\n")
    assert main(["quicklook", str(calibrated), "--obs", "0", "-o", str(tmp_path / "ql"), "-q"]) == 0
    assert "Quick estimate, not a fit" in (tmp_path / "ql" / "index.html").read_text()
    argv = ["quicklook", str(calibrated), "--obs", "0", "-o", str(tmp_path / "given"), "--spectrum", str(elsewhere)]
    assert main(argv + ["-q"]) == 0
    page = (tmp_path / "given" / "index.html").read_text()
    assert f"Spectra from {elsewhere}" in page and "Quick estimate, not a fit" not in page
    capsys.readouterr()
    argv = ["quicklook", str(calibrated), "-o", str(tmp_path / "none"), "--spectrum", str(tmp_path / "no.csv")]
    assert main(argv) == 66  # an input that cannot be read
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no.csv" in err and "no such file" in err and "Traceback" not in err
    assert not (tmp_path / "none").exists()


def test_the_dq_map_shows_a_pixel_left_out_as_left_out():
    from arielstream import dq

    codes = list(dq.BITS.values())

    def shown(value: int) -> int:
        return codes[int(quicklook.dq_codes(np.array([value]))[0]) - 1]

    assert int(quicklook.dq_codes(np.array([0]))[0]) == 0
    assert shown(dq.HOT) == dq.HOT  # a usable hot pixel
    assert shown(dq.HOT | dq.HOT_UNUSABLE) == dq.HOT_UNUSABLE  # not drawn as a used one
    assert shown(dq.HOT | dq.SATURATED) == dq.HOT  # informational bits: the lowest
    assert shown(dq.DEAD | dq.HOT_UNUSABLE) == dq.DEAD  # do-not-use bits: the lowest


def test_a_submission_with_a_blank_line_is_drawn_and_a_short_row_is_refused(calibrated, tmp_path):
    pytest.importorskip("matplotlib")
    from arielstream.products import spectrum

    row = ["73079497", *["0.005"] * 283, *["0.0002"] * 283]
    good = tmp_path / "good.csv"
    good.write_text(",".join(spectrum.submission_header()) + "\n" + ",".join(row) + "\n\n")
    page = quicklook.quicklook(calibrated, tmp_path / "ql", obs=[0], spectrum=good).read_text()
    assert f"Spectra from {good}" in page
    short = tmp_path / "short.csv"
    short.write_text(",".join(spectrum.submission_header()) + "\n" + ",".join(row[:100]) + "\n")
    with pytest.raises(InputError, match=r"cannot read the spectrum: line 2 has 100 fields, the header 567"):
        quicklook.quicklook(calibrated, tmp_path / "short", obs=[0], spectrum=short)
    assert not (tmp_path / "short").exists()
