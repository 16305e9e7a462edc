"""Quicklook: real PNGs (decoded here), one set per observation, and an index that links every one."""

from __future__ import annotations

import argparse
import struct
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import arielstream
from arielstream import cli_products, quicklook
from arielstream.errors import ArielstreamError, InputError

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
    with pytest.raises(ArielstreamError, match=r"quicklook needs matplotlib: pip install 'arielstream\[plots\]'"):
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
