"""Copy the latest bench run's headline tables and one plot into README.md (between the
``<!-- bench:start -->`` / ``<!-- bench:end -->`` markers), so the README's figures are the bench's
output, never typed by hand.  ``python -m rewardrt.bench.readme [RESULTS_DIR]``"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
SECTIONS = ("## Ratios to the PyTorch reference", "## Fidelity against the reference")
FIGURE = Path("bench/figures/latency.png")


def _section(markdown: str, title: str) -> str:
    """The first table under ``title``."""
    body = markdown.split(title, 1)[1]
    body = body.split("\n## ", 1)[0]
    return "\n".join(line for line in body.splitlines() if line.startswith("|"))


PROFILE_SECTIONS = ("## Where the time goes (rewardrt INT8)", "## INT8 throughput against the machine's peak")


def _whole_section(markdown: str, title: str) -> str:
    """Everything under ``title`` (text and tables) up to the next section, or "" if it is absent."""
    if title not in markdown:
        return ""
    body = markdown.split(title, 1)[1].split("\n## ", 1)[0].strip()
    return f"{title.replace('## ', '### ', 1)}\n\n{body}\n"


def render(results_dir: Path) -> str:
    md = (results_dir / "results.md").read_text(encoding="utf-8")
    data = json.loads((results_dir / "results.json").read_text(encoding="utf-8"))
    run = re.search(r"^Run .*$", md, flags=re.M)
    conditions = data.get("conditions", data.get("system", {}))
    cpu = conditions.get("cpu", {}) if isinstance(conditions, dict) else {}
    machine = cpu.get("model", "?") if isinstance(cpu, dict) else str(cpu)
    lines = [START, "",
             f"Latest `make bench` ({run.group(0) if run else 'run time unknown'}), machine: {machine}, "
             "2 cores with AVX-512 VNNI, shared and noisy, so only ratios to the PyTorch reference "
             "from the same run are quoted. Full tables, conditions and plots: `bench-results/results.md`.", "",
             "Ratios to the PyTorch reference (speed: higher is better; memory and size: lower is better):", "",
             _section(md, SECTIONS[0]), "",
             "Fidelity against the reference (1750 dev pairs, clamped scores):", "",
             _section(md, SECTIONS[1]), "",
             *(text for title in PROFILE_SECTIONS if (text := _whole_section(md, title))),
             f"![batch-1 latency vs sequence length]({FIGURE.as_posix()})", "", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results_dir", nargs="?", default="bench-results")
    parser.add_argument("--readme", default="README.md")
    args = parser.parse_args(argv)
    results = Path(args.results_dir)
    if not (results / "results.md").is_file():
        print(f"error: results_dir {str(results)!r} has no results.md; run `make bench` first", file=sys.stderr)
        return 2
    readme = Path(args.readme)
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"error: {readme} lacks the {START} / {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(head + render(results) + tail, encoding="utf-8")
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(results / "latency.png", FIGURE)
    print(f"updated {readme} and {FIGURE} from {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
