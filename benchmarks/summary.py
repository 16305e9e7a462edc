"""BENCHMARKS.md's leading table, "Today's numbers", made from the marked sections the benchmarks write.

Each benchmark writes its section between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``
(:func:`benchmarks.bench._write_block`), then calls :func:`refresh`, which reads the headline
numbers back out of those sections and rewrites the block between :data:`BEGIN` and
:data:`END`. The summary is never typed by hand, so it cannot drift from the sections:
``tests/test_docs.py`` renders it from the file and compares. A section whose rows cannot be
found (a benchmark's wording changed) is an error naming the section and the row, not a
silently shorter table.

    python -m benchmarks.summary            # rewrite the summary of BENCHMARKS.md
    python -m benchmarks.summary --check    # exit 1 when it differs from what the sections give
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- summary:begin -->", "<!-- summary:end -->"
SCIENCE_SETS = ("quiet", "hot core", "hits+sky", "jitter")  # the sets of make bench-science, in its order


class SummaryError(ValueError):
    """A section or one of its rows is missing from BENCHMARKS.md."""


def section(text: str, name: str) -> str:
    """The text between ``<!-- name:begin -->`` and ``<!-- name:end -->``."""
    match = re.search(re.escape(f"<!-- {name}:begin -->") + "(.*?)" + re.escape(f"<!-- {name}:end -->"), text, re.S)
    if match is None:
        raise SummaryError(f"BENCHMARKS.md has no {name} section")
    return match.group(1)


def row(block: str, name: str, starts: str, second: str | None = None, after: str = "") -> list[str]:
    """The cells of the table row of ``block`` whose first cell starts with ``starts`` (markup kept).

    ``second``: and whose second cell is exactly that; ``after``: in the first table after that text.
    """
    tail = block.split(after, 1)[1] if after and after in block else block
    for line in tail.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and cells[0].startswith(starts) and (
                second is None or (len(cells) > 1 and cells[1] == second)):
            return cells
    what = f"{starts!r}" + (f" / {second!r}" if second else "")
    raise SummaryError(f"BENCHMARKS.md, {name} section: no row starting {what}")


def _plain(cell: str) -> str:
    return cell.replace("**", "").strip()


def _machine(block: str) -> str:
    first = block.strip().splitlines()[0]
    return first.removeprefix("Machine: ").split(". Kernels")[0].rstrip(".")


def render(text: str) -> str:
    """The summary table of BENCHMARKS.md's ``text``, from its bench, bench-append, bench-decode, science sections."""
    bench = section(text, "bench")
    ours = row(bench, "bench", "**arielstream**, default profile, one worker")
    floor = row(bench, "bench", "decode floor: pyarrow")
    numexpr = row(bench, "bench", "arielstream, default profile, numexpr engine")
    full = row(bench, "bench", "arielstream, full profile")
    notebook = row(bench, "bench", "notebook recipe, non-linearity off")
    jobs1, jobs2 = row(bench, "bench", "`--jobs 1`"), row(bench, "bench", "`--jobs 2`")
    append = section(text, "bench-append")
    appended = row(append, "bench-append", "append 1 to an output of")
    fresh = row(append, "bench-append", "calibrate 1 observation (fresh output)")
    lines = [
        f"One full-size observation (11,250 AIRS + 135,000 FGS1 frames), page cache warm; {_machine(bench)}.",
        "Made by `python -m benchmarks.summary` from the marked `make bench` / `make bench-science` sections",
        "below (each run of a benchmark rewrites it; tests/test_docs.py checks it matches them).",
        "",
        "| measurement | latest |",
        "|---|---|",
        f"| calibrate, default profile, one worker | {ours[1]} s per observation, {ours[2]} MB peak RSS "
        f"({_plain(ours[3]).replace('floor', 'the pyarrow decode floor')} of {floor[1]} s) |",
        f"| without numba (numexpr) / full profile | {numexpr[1]} s / {full[1]} s per observation |",
        f"| organisers' notebook recipe, non-linearity off | {notebook[1]} s, {notebook[2]} MB "
        f"({_plain(notebook[3])}) |",
    ]
    try:
        nl = row(bench, "bench", "notebook recipe, non-linearity on")
        lines.append(f"| organisers' notebook recipe, non-linearity on | {nl[1]} s, {nl[2]} MB ({_plain(nl[3])}) |")
    except SummaryError:  # the bench ran without --notebook-nl
        pass
    lines += [
        f"| throughput, `--jobs 1` / `--jobs 2` | {jobs1[3]} / {jobs2[3]} observations per minute |",
        f"| append 1 observation to a grown output | {appended[1]} s, {_plain(appended[4]).split(' ')[0]} × "
        f"calibrating it into a new file ({fresh[1]} s) |",
    ]
    decode = section(text, "bench-decode")
    formats = row(decode, "bench-decode", "s per observation")[1:]
    for decoder in ("pyarrow decoder", "page decoder (default)"):
        cells = row(decode, "bench-decode", f"**default profile**, {decoder}")[1:]
        lines.append(f"| calibrate, default profile, {decoder}, per Parquet layout ({' / '.join(formats)}): s per "
                     f"observation, × the best pyarrow decode, × the physical floor, peak RSS (`make bench`, decode) | "
                     f"{' / '.join(_plain(c) for c in cells)} |")
    science = section(text, "science")
    ratios = {name: row(science, "science", name, "default") for name in SCIENCE_SETS}
    spectra = "| set | prediction | score"  # the table of scores
    scores = {name: row(science, "science", name, "default", after=spectra) for name in SCIENCE_SETS}
    notebook_scores = {name: row(science, "science", name, "notebook", after=spectra) for name in SCIENCE_SETS}
    lines += [
        "| depth error / photon + read-noise limit, default profile, AIRS per wavelength (3 simulated planets "
        f"per set; 1.00 = at the limit): {' / '.join(SCIENCE_SETS)} | "
        f"{' / '.join(ratios[name][2] for name in SCIENCE_SETS)} (`make bench-science`) |",
        f"| spectrum score, default profile (notebook profile): {' / '.join(SCIENCE_SETS)} | "
        f"{' / '.join(f'{scores[n][2]} ({notebook_scores[n][2]})' for n in SCIENCE_SETS)} |",
    ]
    return "\n".join(lines)


def refreshed(text: str) -> str:
    """``text`` with its summary block rewritten (added after the title when it has none)."""
    block = f"{BEGIN}\n{render(text)}\n{END}"
    if BEGIN in text:
        return re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    title, _, rest = text.partition("\n")
    return f"{title}\n\n## Today's numbers\n\n{block}\n{rest}"


def refresh(path: Path = REPO / "BENCHMARKS.md") -> None:
    """Rewrite ``path``'s summary block from its sections."""
    path.write_text(refreshed(path.read_text()))


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or ``--check``) the summary of BENCHMARKS.md; 1 when it cannot be made or differs."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the summary differs from the sections")
    args = parser.parse_args(argv)
    path = REPO / "BENCHMARKS.md"
    try:
        text = path.read_text()
        new = refreshed(text)
    except (OSError, SummaryError) as exc:
        print(f"benchmarks.summary: {exc}", file=sys.stderr)
        return 1
    if args.check:
        if new != text:
            print(f"{path}: the summary differs from its sections (python -m benchmarks.summary)", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
