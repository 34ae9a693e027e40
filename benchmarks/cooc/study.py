"""The mechanism study (docs/benchmarks.md, "Which of SeCo's parts act, and which help"): the published five variants
and ``no_contrast`` on two sets, the class-colour digits (look-alike co-occurrence: 3 and 8 share a hue) and the
same digits with a context class (``one`` on green backgrounds in train), over five seeds, as one resumable
command. Each set is :func:`~benchmarks.cooc.runs.ablate` in ``OUT/<set>/``; ``OUT/study.md`` puts each mechanism's
verdict on both sets side by side."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import multiprocessing
from pathlib import Path

from seco_labels.io import atomic_write_text

from .runs import ablate, ablation_rows
from .spec import RunSpec
from .tables import paired_differences, write_ablation

#: the study's variants: the published ablation's five, and SeCo without LIG and LIL (= baseline + PTC)
STUDY_VARIANTS = ("baseline", "no_contrast", "no_lig", "no_lil", "no_rectify", "full")
STUDY_SEEDS = (0, 1, 2, 3, 4)
#: the class-colour set's settings (docs/benchmarks.md "Class colours"); ``sources`` is filled in by :func:`study_sets`
COLOURS = RunSpec(sources=(Path("."),), pairs=(("three", "eight"),), size=96, digits=True, background_blur=2.0,
                  colours="class", backbone_kwargs={"patch_size": 8, "depth": 4, "embed_dim": 96, "num_heads": 3},
                  pretrain_steps=1500, iters=1000, threads=1)
#: the context class: a thin digit, so most of the pixels around it are its context
CONTEXT_CLASS = "one"


def study_sets(sources: tuple[Path, ...]) -> dict[str, RunSpec]:
    """The study's two sets by folder name: ``colours`` and ``context`` (the same with :data:`CONTEXT_CLASS`)."""
    colours = dataclasses.replace(COLOURS, sources=tuple(sources))
    return {"colours": colours, "context": dataclasses.replace(colours, context=CONTEXT_CLASS)}


def study(sets: dict[str, RunSpec], out: Path, *, seeds: list[int], variants: list[str], jobs: int = 2,
          run_missing: bool = True) -> str:
    """Each set's ablation (:func:`study_sets`; ``jobs`` sets at a time, each resumable, in ``OUT/<set>/``; with
    ``run_missing`` False none, only the tables of the runs finished so far), then ``OUT/study.md``: the verdicts
    side by side, then each set's tables. Returns the verdict table."""
    out = Path(out)
    if run_missing:
        # spawned, not forked: a fork of a process that ran torch may not run torch's threads
        with cf.ProcessPoolExecutor(max_workers=max(1, min(jobs, len(sets))),
                                    mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in [pool.submit(ablate, spec, out / name, seeds=seeds, variants=variants)
                           for name, spec in sets.items()]:
                future.result()
    rows = {name: ablation_rows(out / name, seeds, variants) for name in sets}
    tables = {name: write_ablation(r, variants, out / name) for name, r in rows.items() if r}
    verdicts = format_verdicts({name: paired_differences(r) for name, r in rows.items()})
    atomic_write_text(out / "study.md", "\n".join([verdicts, *(f"## {name}\n\n{t}" for name, t in tables.items())]))
    return verdicts


def format_verdicts(paired: dict[str, list[dict]]) -> str:
    """One row per contrast, one column per set: the pseudo-mask mIoU's paired difference (points of %, mean ± SE
    over seeds) and its verdict."""
    names = list(paired)
    contrasts = list(dict.fromkeys(p["contrast"] for ps in paired.values() for p in ps))
    lines = ["Pseudo-mask mIoU, paired by seed (points of %, mean ± SE; n seeds): verdict.", "",
             "| mechanism | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for contrast in contrasts:
        cells = []
        for name in names:
            hit = [p for p in paired[name] if p["contrast"] == contrast and p["metric"] == "mask_miou"]
            if not hit:
                cells.append("not run")
                continue
            se = f"{100 * hit[0]['se']:.2f}" if math.isfinite(hit[0]["se"]) else "n/a"
            cells.append(f"{100 * hit[0]['mean']:+.2f} ± {se} (n={hit[0]['seeds']}): {hit[0]['verdict']}")
        lines.append(f"| {contrast} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
