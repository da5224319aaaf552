"""Copy the latest bench run's tables into the docs, between the ``<!-- bench:start -->`` /
``<!-- bench:end -->`` marker lines (each on a line of its own), so every figure there is the
bench's output, never typed by hand:

- ``bench/README.md``: the headline tables (ratios to the PyTorch reference, fidelity, where the
  time goes, INT8 throughput against the machine's peak) and the latency plot, copied next to it;
- ``README.md``: the one results table of the front page (the ratios).

Each block starts with the run's own record of when, at which commit, on which model and machine.

    python -m rewardrt.bench.readme [RESULTS_DIR] [--readme README.md] [--bench-readme bench/README.md]

Run it from the repository root after ``make bench`` (RESULTS_DIR defaults to bench-results)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
RATIOS = "## Ratios to the PyTorch reference"
FIDELITY = "## Fidelity against the reference"
PROFILE_SECTIONS = ("## Where the time goes (rewardrt INT8)", "## INT8 throughput against the machine's peak")
FIGURE = Path("figures/latency.png")  # relative to bench/README.md


def _section(markdown: str, title: str) -> str:
    """The first table under ``title``."""
    body = markdown.split(title, 1)[1]
    body = body.split("\n## ", 1)[0]
    return "\n".join(line for line in body.splitlines() if line.startswith("|"))


def _whole_section(markdown: str, title: str) -> str:
    """Everything under ``title`` (text and tables) up to the next section, or "" if it is absent."""
    if title not in markdown:
        return ""
    body = markdown.split(title, 1)[1].split("\n## ", 1)[0].strip()
    return f"{title.replace('## ', '### ', 1)}\n\n{body}\n"


def provenance(results: dict) -> str:
    """One sentence from the run's own record: when, how long, which commit, model and machine."""
    conditions = results.get("conditions", {})
    git = conditions.get("git", {})
    cpu = conditions.get("cpu", {})
    mode = f" ({results['mode']})" if results.get("mode") else ""
    parts = [f"Latest `rewardrt bench` run{mode}: {results.get('started', 'time unknown')}"]
    if results.get("duration_s") is not None:
        parts[0] += f" ({results['duration_s']:.0f} s)"
    if git.get("commit"):
        parts.append(f"commit {git['commit'][:12]}" + (" with local changes" if git.get("dirty") else ""))
    note = results.get("checkpoint", {}).get("note")
    if note:
        parts.append(f"model: {note}")
    if isinstance(cpu, dict) and cpu.get("model"):
        machine = f"machine: {cpu['model']}"
        if cpu.get("cores_available"):
            machine += f", {cpu['cores_available']} cores available"
        if cpu.get("int8_dot_product"):
            machine += f", int8 dot product {cpu['int8_dot_product']}"
        parts.append(machine)
    return "; ".join(parts) + ". Only ratios to the PyTorch reference from the same run are quoted."


def _load(results_dir: Path) -> tuple[str, dict]:
    md = (results_dir / "results.md").read_text(encoding="utf-8")
    data = json.loads((results_dir / "results.json").read_text(encoding="utf-8"))
    return md, data


def headline(results_dir: Path) -> str:
    """The block of README.md: the ratios table."""
    md, data = _load(results_dir)
    return "\n".join([START, "", provenance(data), "",
                      "Ratios to the PyTorch reference (speed: higher is better; memory and size: lower is better):",
                      "", _section(md, RATIOS), "", END])


def tables(results_dir: Path) -> str:
    """The block of bench/README.md: ratios, fidelity, profile, INT8 peak and the latency plot."""
    md, data = _load(results_dir)
    sizes = sorted({row["n"] for row in data.get("fidelity", []) if "n" in row})
    pairs = f"{sizes[0]} pairs" if len(sizes) == 1 else "pairs per engine in the table"
    return "\n".join([START, "", provenance(data) + " Full tables, conditions and plots: `results.md` in "
                      "the run's folder (`bench-results/` for `make bench`).", "",
                      "Ratios to the PyTorch reference (speed: higher is better; memory and size: lower is better):",
                      "", _section(md, RATIOS), "",
                      f"Fidelity against the reference ({pairs}, clamped scores):", "",
                      _section(md, FIDELITY), "",
                      *(text for title in PROFILE_SECTIONS if (text := _whole_section(md, title))),
                      f"![batch-1 latency vs sequence length]({FIGURE.as_posix()})", "", END])


def _marker_lines(text: str) -> tuple[int, int] | None:
    """Offsets of the START line's first character and of the END line's last one: markers count
    only on lines of their own, so prose that names them is left alone."""
    start = re.search(rf"^{re.escape(START)}[ \t]*$", text, flags=re.M)
    end = re.search(rf"^{re.escape(END)}[ \t]*$", text[start.end():], flags=re.M) if start else None
    if start is None or end is None:
        return None
    return start.start(), start.end() + end.end()


def replace_block(text: str, block: str) -> str:
    """``text`` with its marker lines and what lies between them replaced by ``block``."""
    span = _marker_lines(text)
    if span is None:
        raise ValueError(f"no {START} / {END} marker lines")
    return text[:span[0]] + block + text[span[1]:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", nargs="?", default="bench-results")
    parser.add_argument("--readme", default="README.md", help="the front page: gets the ratios table")
    parser.add_argument("--bench-readme", default="bench/README.md",
                        help="the bench room's README: gets every headline table and the latency plot")
    args = parser.parse_args(argv)
    results = Path(args.results_dir)
    for name in ("results.md", "results.json"):
        if not (results / name).is_file():
            print(f"error: results_dir {str(results)!r} has no {name}; run `make bench` first", file=sys.stderr)
            return 2
    targets = {Path(args.readme): headline(results), Path(args.bench_readme): tables(results)}
    texts = {}
    for path in targets:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        if _marker_lines(text) is None:
            print(f"error: {str(path)!r} lacks the {START} / {END} marker lines", file=sys.stderr)
            return 2
        texts[path] = text
    for path, block in targets.items():
        path.write_text(replace_block(texts[path], block), encoding="utf-8")
    updated = [str(p) for p in targets]
    figure = Path(args.bench_readme).parent / FIGURE
    if (results / "latency.png").is_file():
        figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(results / "latency.png", figure)
        updated.append(str(figure))
    print(f"updated {', '.join(updated)} from {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
