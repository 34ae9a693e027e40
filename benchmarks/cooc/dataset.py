"""The ``generate`` stage: a VOC-layout dataset with co-occurrence controlled per class pair.

How a dataset is made (all of it drawn from ``--seed``, so the same arguments give the same bytes):

- **Instances.** Every connected region of a class in the sources' GT masks, at least ``--min-area`` pixels, is a
  cut-out: its pixels, its mask, its class (with ``--digits``: each handwritten digit, see ``digit_instances``).
  The classes are the ``--classes`` given, else the ``--num-classes`` classes with the most distinct instances
  (each pair's classes included). Instances are split between train and val by their source image, so no object
  is seen in both. Each class gets one val photo (the one with its fewest instances), and the further val photos
  never take a class past a quarter of its instances.
- **Backgrounds.** Windows of the source images that hold no pixel of the benchmark's classes (other classes are
  allowed, they are background here); each window gets a type by its colour (``green`` when green dominates, else
  ``other``) for the context variant.
- **Images.** ``--size`` squares: a background window, then 1-3 cut-outs at random scale (their longer side 35-75%
  of the image by default, ``--scale``), flip (not for digits) and position; a later object covers an earlier
  one, in the mask too. The GT mask holds the class indices 1..K, 0 elsewhere; the tags are the classes with at
  least ``--min-visible`` visible pixels.
- **Co-occurrence** (``--pairs A:B``): in train, B is pasted into at least ``--cooc`` (80%) of the images that hold
  A; in val, A alone, B alone and A with B come equally often. ``--context A`` (the context variant) puts A only on
  ``green`` backgrounds in train and on either in val.

Writes ``OUT/JPEGImages``, ``OUT/SegmentationClassAug`` (palette PNGs), ``OUT/ImageSets/Segmentation/{train,val}.txt``,
``OUT/cls_labels_onehot.npy``, ``OUT/classes.txt``, ``OUT/cooc.json`` (settings, instance counts, and the
measured co-occurrence of every pair per split) and ``OUT/backgrounds.json`` (each image's background type, by
split and id: where the context variant's context is).
"""

from __future__ import annotations

import io
import json
import pickle
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seco_labels.artifacts import save_mask_png
from seco_labels.data import build_reader, read_class_names
from seco_labels.io import atomic_path, atomic_write_bytes, atomic_write_text

from .instances import Instance, colour_by_class, digit_instances, find_backgrounds, find_instances, paste


class DatasetError(ValueError):
    """The sources and settings cannot make the dataset asked for; the message names the option to change."""


def source_layout(src: Path) -> str:
    """``voc`` for a folder with ``JPEGImages/``, else ``coco``."""
    return "voc" if (src / "JPEGImages").is_dir() else "coco"


def source_splits(src: Path) -> list[str]:
    """The splits of ``train``/``val`` a source has a list of."""
    lists = src / "ImageSets" / "Segmentation" if source_layout(src) == "voc" else src
    return [s for s in ("train", "val") if (lists / f"{s}.txt").is_file()]


def val_photos(instances: dict[str, list[Instance]], classes: list[str], rng: np.random.Generator,
                share: float = 0.25) -> set[str]:
    """The source photos whose instances go to val (the rest to train): at least one photo of every class that has
    two or more (rarest class first, the photo with the fewest of its instances), then random photos up to a fifth
    of them, as long as no class gets more than ``share`` of its instances (or its one val photo) in val."""
    count = {c: {} for c in classes}  # class -> photo -> instances of the class in that photo
    for c in classes:
        for i in instances[c]:
            count[c][i.origin] = count[c].get(i.origin, 0) + 1
    val: set[str] = set()

    def val_count(c: str, extra: str | None = None) -> int:
        return sum(n for p, n in count[c].items() if p in val or p == extra)

    def keeps_train(photo: str) -> bool:
        return all(set(count[c]) - val - {photo} for c in classes if photo in count[c])

    for c in sorted(classes, key=lambda c: len(count[c])):
        if not val & set(count[c]):
            choices = sorted((n, p) for p, n in count[c].items() if keeps_train(p))
            if choices:
                fewest = [p for n, p in choices if n == choices[0][0]]
                val.add(fewest[int(rng.integers(len(fewest)))])
    every = sorted(set().union(*(set(count[c]) for c in classes)))
    for k in rng.permutation(len(every)):
        if len(val) >= len(every) // 5:
            break
        photo = every[k]
        within = all(val_count(c, photo) <= max(share * sum(count[c].values()), 1)
                     for c in classes if photo in count[c])
        if photo not in val and keeps_train(photo) and within:
            val.add(photo)
    return val


def _plan_train(classes: list[str], pairs: list[tuple[str, str]], n: int, cooc: float,
                rng: np.random.Generator) -> list[list[str]]:
    """The classes of each train image: a primary class drawn uniformly, then each pair's partner with probability
    ``cooc`` (so B is in at least that share of A's images), then maybe one more class."""
    partners = {a: b for a, b in pairs}
    plans = []
    for _ in range(n):
        first = classes[int(rng.integers(len(classes)))]
        plan = [first]
        if first in partners and rng.random() < cooc:
            plan.append(partners[first])
        if len(plan) < 3 and rng.random() < 0.3:
            other = classes[int(rng.integers(len(classes)))]
            if other not in plan and other not in partners:  # a pair's A appears only through its own plans
                plan.append(other)
        plans.append(plan)
    return plans


def _plan_val(classes: list[str], pairs: list[tuple[str, str]], n: int, rng: np.random.Generator) -> list[list[str]]:
    """The classes of each val image: for every pair, A alone, B alone and A with B equally often (half the images);
    the rest one or two classes at random among those in no pair."""
    plans: list[list[str]] = []
    per_case = n // (3 * max(1, len(pairs))) // 2 if pairs else 0
    for a, b in pairs:
        plans += [[a]] * per_case + [[b]] * per_case + [[a, b]] * per_case
    rest = [c for c in classes if not any(c in p for p in pairs)] or classes  # the pairs' counts stay balanced
    while len(plans) < n:
        plan = [rest[int(rng.integers(len(rest)))]]
        if rng.random() < 0.3:
            other = rest[int(rng.integers(len(rest)))]
            if other != plan[0]:
                plan.append(other)
        plans.append(plan)
    order = rng.permutation(len(plans))
    return [plans[i] for i in order]


def cooccurrence(tags: dict[str, set[str]], pairs: list[tuple[str, str]]) -> dict[str, dict[str, float | int]]:
    """Per pair A:B: images with A, with B, with both, and the share of A's images that hold B."""
    out = {}
    for a, b in pairs:
        with_a = [t for t in tags.values() if a in t]
        with_b = [t for t in tags.values() if b in t]
        both = [t for t in with_a if b in t]
        out[f"{a}:{b}"] = {"a": len(with_a), "b": len(with_b), "both": len(both), "a_alone": len(with_a) - len(both),
                           "b_alone": len(with_b) - len(both),
                           "share_of_a_with_b": round(len(both) / len(with_a), 4) if with_a else None}
    return out


def generate(sources: list[Path], out: Path, *, seed: int, pairs: list[tuple[str, str]], classes: list[str] | None,
             num_classes: int, n_train: int, n_val: int, size: int, cooc: float, context: str | None,
             min_area: int, min_visible: int, digits: bool = False, background_blur: float = 0.0,
             scale: tuple[float, float] = (0.35, 0.75), colours: str = "random") -> dict:
    """Write the dataset (module docstring) and return its settings and statistics (also ``OUT/cooc.json``).
    ``digits``: the objects are the bundled handwritten digits, and the sources give only the backgrounds.
    ``scale``: the range of an object's longest side, as shares of the image side. ``colours``: ``random`` (each
    digit's own, :func:`digit_instances`) or ``class`` (:func:`colour_by_class`).

    Raises:
        DatasetError: a class has no instance (in a split), no background window is free of the classes, or a
            setting does not apply (``colours="class"`` without ``digits``, ``context`` without green backgrounds).
    """
    if colours not in ("random", "class"):
        raise DatasetError(f"--colours is random or class, got {colours!r}")
    if colours == "class" and not digits:  # checked first: finding photo instances takes a while
        raise DatasetError("--colours class recolours the digits; photo cut-outs keep their own pixels")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    readers = [build_reader(source_layout(src), src, split, require_masks=True, require_tags=False)
               for src in sources for split in source_splits(src)]
    instances = digit_instances(rng) if digits else find_instances(readers, min_area)
    wanted = list(dict.fromkeys([c for p in pairs for c in p] + ([context] if context else []) + list(classes or [])))
    missing = [c for c in wanted if c not in instances]
    if missing:
        raise DatasetError(f"no instance of {missing} in {', '.join(map(str, sources))} (at --min-area {min_area}); "
                           f"classes there: {', '.join(sorted(instances))}")
    if not classes:
        ranked = sorted(instances, key=lambda c: (-len({i.origin for i in instances[c]}), c))
        classes = (wanted + [c for c in ranked if c not in wanted])[:max(num_classes, len(wanted))]
    classes = list(classes)
    if colours == "class":
        hues = colour_by_class(instances, classes, pairs, rng)
    # instances split by source image: no object in both splits
    val_origins = val_photos(instances, classes, rng)
    pools = {split: {c: [i for i in instances[c] if (i.origin in val_origins) == (split == "val")] for c in classes}
             for split in ("train", "val")}
    for split, pool in pools.items():
        empty = [c for c, items in pool.items() if not items]
        if empty:
            raise DatasetError(f"class(es) {empty} have no {split} instance; lower --min-area or add a --source")
    # digits are in no photo: every window is a background then
    backgrounds = find_backgrounds(readers, set() if digits else set(classes), size, per_image=3, rng=rng,
                                   blur=background_blur)
    if not backgrounds:
        raise DatasetError("no background window without the benchmark's classes was found; add a --source")
    green = [b for b in backgrounds if b[1] == "green"]
    if context and not green:
        raise DatasetError("--context needs green backgrounds and the sources have none")

    out.mkdir(parents=True, exist_ok=True)
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    labels: dict[str, np.ndarray] = {}
    tags: dict[str, dict[str, set[str]]] = {"train": {}, "val": {}}
    on = {split: {"green": 0, "other": 0} for split in ("train", "val")}  # backgrounds of the context class
    kinds: dict[str, dict[str, str]] = {"train": {}, "val": {}}  # every image's background type
    plans = {"train": _plan_train(classes, pairs, n_train, cooc, rng), "val": _plan_val(classes, pairs, n_val, rng)}
    for split, split_plans in plans.items():
        ids = []
        for n, plan in enumerate(split_plans):
            image_id = f"{split}_{n:05d}"
            use_green = context is not None and split == "train" and context in plan
            pool = green if use_green else backgrounds
            canvas, kind = pool[int(rng.integers(len(pool)))]
            canvas = canvas.copy()
            mask = np.zeros((size, size), np.uint8)
            for name in plan:
                items = pools[split][name]
                # a mirrored 3 is no 3: digits keep their side
                paste(canvas, mask, items[int(rng.integers(len(items)))], classes.index(name) + 1, rng,
                      flip=not digits, scale=scale)
            present = {classes[k - 1] for k in np.unique(mask) if k > 0 and (mask == k).sum() >= min_visible}
            vec = np.zeros(len(classes), np.float32)
            for name in present:
                vec[classes.index(name)] = 1
            if not vec.any():  # every object covered or too small: draw the image again under another id next
                continue
            buf = io.BytesIO()
            Image.fromarray(canvas).save(buf, format="JPEG", quality=92)
            atomic_write_bytes(out / "JPEGImages" / f"{image_id}.jpg", buf.getvalue())
            save_mask_png(out / "SegmentationClassAug" / f"{image_id}.png", mask)
            labels[image_id], tags[split][image_id], kinds[split][image_id] = vec, present, kind
            if context is not None and context in present:
                on[split][kind] += 1
            ids.append(image_id)
        atomic_write_text(out / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
    with atomic_path(out / "cls_labels_onehot.npy") as tmp, open(tmp, "wb") as f:
        pickle.dump(labels, f, protocol=4)  # what np.load(allow_pickle=True) reads, as the published code's file
    atomic_write_text(out / "classes.txt", "\n".join(["background", *classes]) + "\n")
    atomic_write_text(out / "backgrounds.json", json.dumps(kinds, indent=0) + "\n")
    info = {
        "seed": seed, "sources": [str(s) for s in sources], "objects": "digits" if digits else "photo cut-outs",
        "classes": classes,
        "pairs": [f"{a}:{b}" for a, b in pairs], "context": context, "size": size, "cooc": cooc,
        "min_area": min_area, "min_visible": min_visible, "background_blur": background_blur, "scale": list(scale),
        "colours": colours if digits else None, "hues": hues if colours == "class" else None,
        "images": {split: len(t) for split, t in tags.items()},
        "instances": {split: {c: len(pool[c]) for c in classes} for split, pool in pools.items()},
        "backgrounds": {"green": len(green), "other": len(backgrounds) - len(green)},
        "cooccurrence": {split: cooccurrence(t, pairs) for split, t in tags.items()},
        "context_backgrounds": on if context is not None else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / "cooc.json", json.dumps(info, indent=2) + "\n")
    return info


def mirrors(data: Path) -> bool:
    """Whether a generated set may be trained on mirror images: not the digits, where a mirrored 3 is another shape."""
    return json.loads((data / "cooc.json").read_text()).get("objects") != "digits"


def load_split(data: Path, split: str) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """A generated split in memory: (ids, images (N, 3, S, S) uint8, tags (N, K-1) float32, masks (N, S, S) uint8)."""
    reader = build_reader("voc", data, split, class_names=read_class_names(data / "classes.txt"), require_masks=True)
    images = torch.stack([torch.from_numpy(reader.load_image(i)).permute(2, 0, 1) for i in reader.ids])
    tags = torch.stack([torch.from_numpy(reader.tags(i)) for i in reader.ids])
    masks = torch.stack([torch.from_numpy(reader.load_mask(i)) for i in reader.ids])
    return list(reader.ids), images, tags, masks
