"""A recipe made of several training runs whose weights are averaged (a "model soup").

The soup recipe (JSON) names its runs, each a training recipe (``rewardrt.models.train``) with
optional field overrides, optionally started from an earlier run's checkpoint; and the weight of
each run in the average:

    {"runs": [{"name": "a", "recipe": "trials/a.json", "set": {"stop_after_steps": 750}},
              {"name": "b", "recipe": "trials/b.json"},
              {"name": "c", "recipe": "trials/c.json", "init_from_run": "b"},
              {"name": "d", "recipe": "trials/d.json", "init_from_average": {"a": 0.5, "c": 0.5}}],
     "average": {"a": 0.3, "c": 0.7}}

(``init_from_average``: start from the weight average of earlier runs, e.g. to continue a soup on
new data; ``"average": {"d": 1}`` then releases that continuation alone.)

``train_soup`` trains the runs into ``OUT/runs/NAME/`` (several at once when their ``threads`` fit
in the CPUs given; a run whose ``train_log.json`` already records the same recipe is reused, so an
interrupted build resumes), averages the selected checkpoints into ``OUT/checkpoint`` and logs the
average's dev metrics to ``OUT/train_log.json``. Each run is seeded and single-process, so its
weights do not depend on what runs beside it.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Run:
    name: str
    recipe: str                      # a training recipe, relative to the soup recipe's folder
    set: dict = field(default_factory=dict)   # overrides of that recipe's fields
    init_from_run: str | None = None  # start from this (earlier) run's selected checkpoint
    init_from_average: dict | None = None  # ... or from the weight average of earlier runs


@dataclass
class SoupRecipe:
    runs: list[Run]
    average: dict[str, float]         # run name -> weight (> 0); normalised to sum 1
    folder: Path

    @classmethod
    def load(cls, path: str | Path) -> "SoupRecipe":
        from rewardrt.models.train import Recipe

        path = Path(path)
        data = json.loads(path.read_text())
        unknown = set(data) - {"runs", "average"}
        if unknown:
            raise ValueError(f"soup recipe {path} has unknown keys {sorted(unknown)}")
        if not isinstance(data.get("runs"), list) or not data["runs"]:
            raise ValueError(f"soup recipe {path}: 'runs' must be a non-empty list")
        runs, seen = [], set()
        for i, entry in enumerate(data["runs"]):
            if not isinstance(entry, dict) or set(entry) - set(Run.__dataclass_fields__) or "name" not in entry \
                    or "recipe" not in entry:
                raise ValueError(f"soup recipe {path}: runs[{i}] must be an object with 'name' and 'recipe' "
                                 f"(and optionally 'set', 'init_from_run', 'init_from_average'), got {entry!r}")
            run = Run(**entry)
            if run.name in seen:
                raise ValueError(f"soup recipe {path}: run name {run.name!r} is used twice")
            if run.init_from_run is not None and run.init_from_run not in seen:
                raise ValueError(f"soup recipe {path}: run {run.name!r} starts from {run.init_from_run!r}, "
                                 "which must be an earlier run")
            if not (path.parent / run.recipe).is_file():
                raise ValueError(f"soup recipe {path}: run {run.name!r}: no recipe file {run.recipe!r}")
            if sum(x is not None for x in (run.set.get("init_from"), run.init_from_run, run.init_from_average)) > 1:
                raise ValueError(f"soup recipe {path}: run {run.name!r} sets more than one of init_from, "
                                 "init_from_run and init_from_average")
            if run.init_from_average is not None:
                _check_weights(path, f"run {run.name!r}: init_from_average", run.init_from_average, seen)
            Recipe.load(path.parent / run.recipe, run.set)  # unknown or invalid fields fail here
            seen.add(run.name)
            runs.append(run)
        average = data.get("average")
        _check_weights(path, "'average'", average, seen, "a run")
        return cls(runs, _normalized(average), path.parent)


def _check_weights(path: Path, what: str, weights: object, runs: set[str], kind: str = "an earlier run") -> None:
    """``weights`` maps names of ``runs`` to numbers > 0."""
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"soup recipe {path}: {what} must map run names to weights")
    for name, w in weights.items():
        if name not in runs:
            raise ValueError(f"soup recipe {path}: {what} names {name!r}, which is not {kind}")
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not w > 0:
            raise ValueError(f"soup recipe {path}: the weight of {name!r} must be a number > 0, got {w!r}")


def _normalized(weights: dict) -> dict[str, float]:
    total = float(sum(weights.values()))
    return {k: v / total for k, v in weights.items()}


def _starts(run: Run) -> list[str]:
    """The runs whose checkpoints ``run`` starts from."""
    if run.init_from_run is not None:
        return [run.init_from_run]
    return list(run.init_from_average or {})


def is_soup(path: str | Path) -> bool:
    data = json.loads(Path(path).read_text())
    return isinstance(data, dict) and "runs" in data


def average_checkpoints(members: dict[Path, float], precision: str = "float32"):
    """(encoder tensors, head) averaged with the given weights (summing to 1). A tensor every member
    has bit-identical (one no run trained) is kept as it is; the others are averaged in float32 and
    rounded to ``precision`` like a training run's released weights, so the delta stays lossless."""
    import torch
    from safetensors.torch import load_file

    if precision not in ("float32", "float16"):
        raise ValueError(f"precision must be 'float32' or 'float16', got {precision!r}")
    states = [(load_file(str(d / "model.safetensors")),
               torch.load(d / "head_weights.pt", map_location="cpu", weights_only=True), w)
              for d, w in members.items()]
    first = states[0][0]
    for (st, _, _), d in zip(states[1:], list(members)[1:]):
        if set(st) != set(first):
            raise ValueError(f"{d} does not hold the same tensors as {next(iter(members))}")

    def mix(tensors_weights):
        tensors = [t for t, _ in tensors_weights]
        if all(torch.equal(t, tensors[0]) for t in tensors[1:]):
            return tensors[0]
        out = sum(w * t.float() for t, w in tensors_weights)
        return out.to(torch.float16).float() if precision == "float16" else out

    encoder = {k: mix([(st[k], w) for st, _, w in states]).to(first[k].dtype) for k in first}
    head = {k: sum(w * h[k].float() for _, h, w in states) for k in states[0][1]}
    return encoder, head


def _member_recipe(run: Run, out: Path) -> dict:
    overrides = dict(run.set)
    if run.init_from_run is not None:
        overrides["init_from"] = str((out / "runs" / run.init_from_run / "checkpoint").resolve())
    if run.init_from_average is not None:
        overrides["init_from"] = str((out / "runs" / run.name / "start").resolve())
    return overrides


def _write_start(run: Run, out: Path, precisions: dict[str, str]) -> None:
    """The weight average ``run`` starts from, in OUT/runs/NAME/start."""
    from rewardrt.models.base import base_model_dir, write_checkpoint

    weights = _normalized(run.init_from_average or {})
    members = {(out / "runs" / n / "checkpoint"): w for n, w in weights.items()}
    precision = "float16" if {precisions[n] for n in weights} == {"float16"} else "float32"
    encoder, head = average_checkpoints(members, precision)
    write_checkpoint(encoder, head, out / "runs" / run.name / "start", base_model_dir())


def _done(run_dir: Path, recipe) -> bool:
    """Whether ``run_dir`` holds a finished run of exactly this recipe (resume)."""
    try:
        logged = json.loads((run_dir / "train_log.json").read_text())
    except (OSError, ValueError):
        return False
    return logged.get("recipe") == json.loads(json.dumps(asdict(recipe))) and (run_dir / "checkpoint" / "model.safetensors").is_file()


def _train_member(recipe_path: str, run_dir: str, overrides: dict, name: str, data: str | None) -> dict:
    """One run, in its own process (spawned: torch's thread pools do not survive a fork)."""
    from rewardrt.models.train import train

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    handlers = [logging.StreamHandler(), logging.FileHandler(Path(run_dir) / "train.log", mode="w")]
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{name}] %(message)s", handlers=handlers,
                        force=True)
    return train(recipe_path, run_dir, overrides, data)


def train_soup(recipe_path: str | Path, out_dir: str | Path, cpus: int | None = None,
               data: str | Path | None = None) -> dict:
    from transformers import AutoTokenizer

    from rewardrt.models.base import base_model_dir, write_checkpoint
    from rewardrt.models.train import (
        Recipe, _start_from, data_dir, dev_metrics, read_pairs, resolve_data, short_dev_groups,
    )

    soup = SoupRecipe.load(recipe_path)
    out = Path(out_dir)
    if cpus is None:
        cpus = os.cpu_count() or 1
    if cpus < 1:
        raise ValueError(f"cpus must be >= 1, got {cpus}")
    t0 = time.time()
    plans = {}
    for run in soup.runs:
        path = soup.folder / run.recipe
        overrides = _member_recipe(run, out)
        plans[run.name] = (run, path, overrides, Recipe.load(path, overrides))
    folder = data_dir(data)
    _, _, _, first = plans[next(iter(soup.average))]
    dev = read_pairs(resolve_data(first.dev_data, folder, "dev_data"))  # fails before any training
    for train_file in sorted({resolve_data(p[3].train_data, folder, "train_data") for p in plans.values()}):
        read_pairs(train_file)  # a malformed row fails here, naming file and line, before any run starts
    out.mkdir(parents=True, exist_ok=True)
    finished: dict[str, dict] = {}
    for name, (run, _, _, recipe) in plans.items():
        run_dir = out / "runs" / name
        if any(n not in finished for n in _starts(run)):
            continue  # its start is retrained, so it is too (its own recipe names only the path)
        if _done(run_dir, recipe):
            log.info("run %s: reusing the finished run in %s", name, run_dir)
            finished[name] = json.loads((run_dir / "train_log.json").read_text())
    pending = [n for n in plans if n not in finished]
    running: dict[cf.Future, str] = {}
    with cf.ProcessPoolExecutor(max_workers=min(cpus, max(1, len(pending))),
                                mp_context=multiprocessing.get_context("spawn")) as pool:
        while pending or running:
            busy = sum(plans[n][3].threads for n in running.values())
            for name in list(pending):
                run, path, overrides, recipe = plans[name]
                threads = recipe.threads
                if any(n not in finished for n in _starts(run)):
                    continue
                if running and busy + threads > cpus:
                    continue
                if run.init_from_average is not None:
                    _write_start(run, out, {n: p[3].release_precision for n, p in plans.items()})
                log.info("run %s: training (%d thread%s) into %s", name, threads, "s" * (threads > 1),
                         out / "runs" / name)
                fut = pool.submit(_train_member, str(path), str(out / "runs" / name), overrides, name,
                                  None if folder is None else str(folder))
                running[fut] = name
                busy += threads
                pending.remove(name)
            if not running:
                raise RuntimeError(f"soup runs {pending} cannot start")  # unreachable: load() orders them
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                name = running.pop(fut)
                # a failed run raises here, once the runs beside it have finished (their logs make
                # them reusable by the next attempt); runs not yet started are not started
                finished[name] = fut.result()
                log.info("run %s: done, selected step %s, %.0f s", name, finished[name]["selected_step"],
                         finished[name]["wall_time_s"])
    members = {(out / "runs" / n / "checkpoint"): w for n, w in soup.average.items()}
    precisions = {plans[n][3].release_precision for n in soup.average}
    precision = "float16" if precisions == {"float16"} else "float32"
    encoder, head = average_checkpoints(members, precision)
    write_checkpoint(encoder, head, out / "checkpoint", base_model_dir())
    net = _start_from(out / "checkpoint").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir()), local_files_only=True)
    metrics = dev_metrics(net, tokenizer, dev, synonym_control=True, short=short_dev_groups(first))
    log.info("dev of the average: %s", json.dumps(metrics))
    summary = {"soup": {"runs": [asdict(r) for r in soup.runs], "average": soup.average},
               "runs": {n: {"selected_step": s["selected_step"], "wall_time_s": s["wall_time_s"],
                            "threads": s["threads"]} for n, s in finished.items()},
               "dev": metrics, "wall_time_s": round(time.time() - t0, 1)}
    (out / "train_log.json").write_text(json.dumps(summary, indent=2))
    return summary
