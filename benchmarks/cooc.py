"""A co-occurrence benchmark a CPU can learn (issue 13): real photo cut-outs pasted on real backgrounds, with
co-occurrence controlled per class pair.

    # a VOC-layout dataset every seco command reads as it is (train 2000, val 300 at 128 px by default)
    python benchmarks/cooc.py generate --source ../shared/data/coco-mini --out cooc/data --seed 0 \\
        --pairs dog:person --num-classes 6 --min-area 200

    # the digits tier: the bundled handwritten digits (about 180 per class) on coco-mini's photos
    python benchmarks/cooc.py generate --digits --source ../shared/data/coco-mini --out cooc/digits --seed 0 \
        --pairs three:eight --num-classes 5 --size 96

Sources must not show the same photos under two vocabularies: voc-mini's ``coco_*`` images are coco-mini's, with
VOC names (``diningtable`` for ``dining table``), so give one of them. On coco-mini (106 photos), with
``--min-area 200`` and 5 classes, the train/val instances per class are: dog 9/1, person 91/20, cup 14/2,
dining table 20/4, bowl 11/2 (16 s). That is too few distinct objects per class for a model to generalise from
(stage 1 on one H200, 6000 steps: tag F1 0.68 on train, 0.27 on val), hence ``--digits``: 1,797 real handwritten
digits (benchmarks/data/README.md), 135-154 train and 27-44 val instances per class for 5 classes (9 s), in random
colours (``--colours random``: the class is in the shape alone) or one hue per class, each pair's two classes
sharing one (``--colours class``: colour tells the classes apart, except A from B).
Stage 1 (``pretrain --data DIR --out weights.pt``) trains the ViT SeCo will use on multi-label classification and
saves a state dict for ``seco train --backbone-weights``; ``baselines --data DIR`` scores the tag-only masks a pseudo
label must beat. ``run --source DIR --out DIR --seed S`` does one seed end to end and resumes (result_<variant>.json:
the export's scores, the baselines and their ratio, the CAM ROC-AUC, the co-occurrence confusion and how often
rectification fired). ``ablate --source DIR --out DIR --seeds 0 1 2`` runs the five variants of
benchmarks/ablation.py per seed on one dataset and one stage 1 and writes ablation.md/.csv/.png.

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
``OUT/cls_labels_onehot.npy``, ``OUT/classes.txt`` and ``OUT/cooc.json`` (settings, instance counts, and the
measured co-occurrence of every pair per split).
"""

from __future__ import annotations

import argparse
import colorsys
import gzip
import io
import json
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from seco_labels.artifacts import save_mask_png
from seco_labels.data import build_reader
from seco_labels.io import atomic_path, atomic_write_bytes, atomic_write_text

#: longest side at which instances are found (their pixels are cut at full resolution)
_COMPONENT_SIDE = 160
#: the handwritten digits of ``--digits`` (benchmarks/data/README.md), and their class names in digit order
DIGITS = Path(__file__).resolve().with_name("data") / "digits.csv.gz"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_SIDE = 64  #: side to which the 8x8 digits are upsampled before their mask is thresholded


@dataclass
class Instance:
    """A cut-out: (h, w, 3) uint8 pixels and its (h, w) bool mask, of class ``name``, from source image ``origin``."""

    name: str
    pixels: np.ndarray
    mask: np.ndarray
    origin: str


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected regions of a (H, W) bool mask: (labels (H, W) int64, 0 outside, 1..n inside; n).

    Label propagation by max-pooling until nothing changes (plain torch: the package has no scipy)."""
    m = torch.from_numpy(mask)
    labels = torch.where(m, torch.arange(1, m.numel() + 1).reshape(m.shape), torch.zeros((), dtype=torch.long))
    cross = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    while True:
        padded = F.pad(labels[None, None].float(), (1, 1, 1, 1))
        windows = F.unfold(padded, 3)[0].reshape(9, *labels.shape)  # (9, H, W) neighbourhoods
        grown = torch.where(m, windows[cross.flatten()].amax(0).long(), labels)
        if torch.equal(grown, labels):
            break
        labels = grown
    uniq, inverse = torch.unique(labels, return_inverse=True)
    dense = inverse.reshape(labels.shape) - (1 if uniq[0] == 0 else 0)
    dense = torch.where(m, dense + 1, torch.zeros((), dtype=torch.long))
    return dense.numpy(), int(len(uniq) - (1 if uniq[0] == 0 else 0))


def _photo(image_id: str) -> str:
    """The photo an id shows: voc-mini's ``coco_<n>`` images are coco-mini's ``<n>``, and must not be split apart."""
    return image_id.removeprefix("coco_")


def find_instances(readers: list, min_area: int) -> dict[str, list[Instance]]:
    """Every connected region of every foreground class with at least ``min_area`` pixels, by class name."""
    found: dict[str, list[Instance]] = {}
    for reader in readers:
        for image_id in reader.ids:
            image, gt = reader.load_image(image_id), reader.load_mask(image_id)
            h, w = gt.shape
            step = max(1, int(np.ceil(max(h, w) / _COMPONENT_SIDE)))
            small = gt[::step, ::step]
            for c in np.unique(small):
                if c == 0 or c == reader.ignore_index:
                    continue
                labels, n = components(small == c)
                for k in range(1, n + 1):
                    ys, xs = np.nonzero(labels == k)
                    y0, y1, x0, x1 = ys.min() * step, (ys.max() + 1) * step, xs.min() * step, (xs.max() + 1) * step
                    region = (gt[y0:y1, x0:x1] == c)
                    # the component's own pixels: the full-resolution class mask inside its upsampled footprint
                    footprint = np.kron(labels[ys.min():ys.max() + 1, xs.min():xs.max() + 1] == k,
                                        np.ones((step, step), bool))[: y1 - y0, : x1 - x0]
                    region &= footprint[: region.shape[0], : region.shape[1]]
                    if region.sum() < min_area:
                        continue
                    name = reader.class_names[int(c)]
                    found.setdefault(name, []).append(
                        Instance(name, image[y0:y1, x0:x1].copy(), region, _photo(image_id)))
    return found


def digit_instances(rng: np.random.Generator, threshold: float = 0.45) -> dict[str, list[Instance]]:
    """The 1,797 handwritten digits as cut-outs, by class name (``DIGIT_NAMES``): each 8x8 bitmap (0..16) upsampled
    bilinearly to 64x64, its mask the pixels above ``threshold`` of full ink, cropped to the mask's box, and filled
    with one colour drawn per digit, each channel dark or bright (the class is in the stroke's shape, not its
    colour; :func:`colour_by_class` changes that). Each digit is its own origin, so train and val never share
    one."""
    with gzip.open(DIGITS, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float32)  # (1797, 65): 64 pixels, then the digit
    ink = torch.from_numpy(rows[:, :64].reshape(-1, 1, 8, 8) / 16)
    ink = F.interpolate(ink, size=(_DIGIT_SIDE, _DIGIT_SIDE), mode="bilinear", align_corners=False)[:, 0].numpy()
    found: dict[str, list[Instance]] = {}
    for n, (alpha, digit) in enumerate(zip(ink, rows[:, 64].astype(int))):
        mask = alpha > threshold
        ys, xs = np.nonzero(mask)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        # each channel dark or bright: a mid-grey stroke would vanish on most photos
        colour = np.where(rng.random(3) < 0.5, rng.integers(0, 50, 3), rng.integers(206, 256, 3)).astype(np.uint8)
        pixels = np.broadcast_to(colour, (*mask[box].shape, 3)).copy()
        found.setdefault(DIGIT_NAMES[digit], []).append(Instance(DIGIT_NAMES[digit], pixels, mask[box], f"digit{n}"))
    return found


def colour_by_class(instances: dict[str, list[Instance]], classes: list[str], pairs: list[tuple[str, str]],
                    rng: np.random.Generator) -> dict[str, float]:
    """Refill every digit of ``classes`` with a saturated colour of its class's hue, in place, and return the hues
    (fractions of the colour circle). The hues are evenly spaced over the classes, each pair's B taking A's: a
    patch tells every class from the others by colour, as texture tells classes apart in photos, except A from B,
    which only their shapes tell: the separation under test (docs/benchmarks.md, "class colours")."""
    own = [c for c in classes if c not in {b for _, b in pairs}]
    hues = {c: k / len(own) for k, c in enumerate(own)}
    for a, b in pairs:
        hues[b] = hues[a]
    for c in classes:
        for inst in instances[c]:
            hue = (hues[c] + rng.uniform(-0.02, 0.02)) % 1  # +-7 degrees: one hue, not one RGB value
            rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0))
            inst.pixels[:] = np.round(255 * np.array(rgb)).astype(np.uint8)
    return hues


def find_backgrounds(readers: list, classes: set[str], size: int, per_image: int, rng: np.random.Generator,
                     blur: float = 0.0) -> list[tuple[np.ndarray, str]]:
    """Up to ``per_image`` square windows per source image holding no pixel of ``classes``, resized to ``size``
    and, with ``blur`` > 0, Gaussian-blurred with that radius in pixels (a shallow depth of field: less texture for
    the objects to hide in), each with its type (``green`` or ``other``)."""
    out = []
    for reader in readers:
        banned = [k for k, n in enumerate(reader.class_names) if n in classes]
        for image_id in reader.ids:
            image, gt = reader.load_image(image_id), reader.load_mask(image_id)
            bad = np.isin(gt, banned)
            h, w = gt.shape
            side = min(h, w) // 2
            got = 0
            for _ in range(12):
                if got == per_image or side < 32:
                    break
                y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                if bad[y:y + side, x:x + side].any():
                    continue
                window = Image.fromarray(image[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
                window = np.asarray(window.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else window)
                r, g, b = window.reshape(-1, 3).mean(0)
                out.append((window, "green" if g > r and g > b else "other"))
                got += 1
    return out


def paste(canvas: np.ndarray, mask: np.ndarray, inst: Instance, index: int, rng: np.random.Generator,
          flip: bool = True, scale: tuple[float, float] = (0.35, 0.75)) -> None:
    """Paste ``inst`` into ``canvas`` (S, S, 3) and its class ``index`` into ``mask`` (S, S), in place, its longest
    side drawn uniformly in ``scale`` (shares of S), mirrored half of the time when ``flip``."""
    s = canvas.shape[0]
    longest = rng.uniform(*scale) * s
    h, w = inst.mask.shape
    factor = longest / max(h, w)
    size = (max(2, round(w * factor)), max(2, round(h * factor)))
    pixels = np.asarray(Image.fromarray(inst.pixels).resize(size, Image.BILINEAR))
    alpha = np.asarray(Image.fromarray(inst.mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
    if rng.random() < 0.5 and flip:
        pixels, alpha = pixels[:, ::-1], alpha[:, ::-1]
    y, x = int(rng.integers(0, s - size[1] + 1)), int(rng.integers(0, s - size[0] + 1))
    region = (slice(y, y + size[1]), slice(x, x + size[0]))
    canvas[region][alpha] = pixels[alpha]
    mask[region][alpha] = index


def _val_photos(instances: dict[str, list[Instance]], classes: list[str], rng: np.random.Generator,
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
    digit's own, :func:`digit_instances`) or ``class`` (:func:`colour_by_class`)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    readers = [build_reader(_layout(src), src, split, require_masks=True, require_tags=False)
               for src in sources for split in _splits(src)]
    instances = digit_instances(rng) if digits else find_instances(readers, min_area)
    wanted = list(dict.fromkeys([c for p in pairs for c in p] + list(classes or [])))
    missing = [c for c in wanted if c not in instances]
    if missing:
        raise SystemExit(f"no instance of {missing} in {', '.join(map(str, sources))} (at --min-area {min_area}); "
                         f"classes there: {', '.join(sorted(instances))}")
    if not classes:
        ranked = sorted(instances, key=lambda c: (-len({i.origin for i in instances[c]}), c))
        classes = (wanted + [c for c in ranked if c not in wanted])[:max(num_classes, len(wanted))]
    classes = list(classes)
    if colours == "class":
        if not digits:
            raise SystemExit("--colours class recolours the digits; photo cut-outs keep their own pixels")
        hues = colour_by_class(instances, classes, pairs, rng)
    elif colours != "random":
        raise SystemExit(f"--colours is random or class, got {colours!r}")
    # instances split by source image: no object in both splits
    val_origins = _val_photos(instances, classes, rng)
    pools = {split: {c: [i for i in instances[c] if (i.origin in val_origins) == (split == "val")] for c in classes}
             for split in ("train", "val")}
    for split, pool in pools.items():
        empty = [c for c, items in pool.items() if not items]
        if empty:
            raise SystemExit(f"class(es) {empty} have no {split} instance; lower --min-area or add a --source")
    # digits are in no photo: every window is a background then
    backgrounds = find_backgrounds(readers, set() if digits else set(classes), size, per_image=3, rng=rng,
                                   blur=background_blur)
    if not backgrounds:
        raise SystemExit("no background window without the benchmark's classes was found; add a --source")
    green = [b for b in backgrounds if b[1] == "green"]
    if context and not green:
        raise SystemExit("--context needs green backgrounds and the sources have none")

    out.mkdir(parents=True, exist_ok=True)
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    labels: dict[str, np.ndarray] = {}
    tags: dict[str, dict[str, set[str]]] = {"train": {}, "val": {}}
    on = {split: {"green": 0, "other": 0} for split in ("train", "val")}  # backgrounds of the context class
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
            labels[image_id], tags[split][image_id] = vec, present
            if context is not None and context in present:
                on[split][kind] += 1
            ids.append(image_id)
        atomic_write_text(out / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
    with atomic_path(out / "cls_labels_onehot.npy") as tmp, open(tmp, "wb") as f:
        pickle.dump(labels, f, protocol=4)  # what np.load(allow_pickle=True) reads, as the published code's file
    atomic_write_text(out / "classes.txt", "\n".join(["background", *classes]) + "\n")
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


# -- stage 1: classification pretraining ---------------------------------------------------------------------
def mirrors(data: Path) -> bool:
    """Whether a generated set may be trained on mirror images: not the digits, where a mirrored 3 is another shape."""
    return json.loads((data / "cooc.json").read_text()).get("objects") != "digits"


def load_split(data: Path, split: str) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """A generated split in memory: (ids, images (N, 3, S, S) uint8, tags (N, K-1) float32, masks (N, S, S) uint8)."""
    from seco_labels.data import read_class_names

    reader = build_reader("voc", data, split, class_names=read_class_names(data / "classes.txt"), require_masks=True)
    images = torch.stack([torch.from_numpy(reader.load_image(i)).permute(2, 0, 1) for i in reader.ids])
    tags = torch.stack([torch.from_numpy(reader.tags(i)) for i in reader.ids])
    masks = torch.stack([torch.from_numpy(reader.load_mask(i)) for i in reader.ids])
    return list(reader.ids), images, tags, masks


def tile(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B * k * k, C, H, W) -> (B, C, k * H, k * W): each k * k consecutive images as one mosaic, row by row."""
    n, c, h, w = x.shape
    return x.view(n // (k * k), k, k, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n // (k * k), c, k * h, k * w)


def untile(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`tile`: (B, C, k * h, k * w) -> (B * k * k, C, h, w)."""
    b, c, h, w = x.shape
    x = x.view(b, c, k, h // k, k, w // k).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * k * k, c, h // k, w // k)


def pretrain(data: Path, out: Path, *, backbone: str, backbone_kwargs: dict, steps: int, batch_size: int, lr: float,
             seed: int, device: str = "cpu", pool: str = "max", mosaic: int = 1, position: str = "sincos",
             log_every: int = 50) -> dict:
    """Stage 1: multi-label classification of the train split by the ViT SeCo will use (``backbone``,
    ``backbone_kwargs``), with a CAM-style head (a 1x1 projection of every patch token, max-pooled), so the
    features learn where the classes are. Saves the ViT's state dict to ``out`` (``seco train --backbone-weights``)
    and returns the losses, the tag F1 on (up to 500 images of) train and on val, the ROC-AUC of the head's CAMs
    against their classes' pixels on (up to 300) train images, and the seconds per step.

    ``mosaic=k`` trains on k x k mosaics of train images, each tile classified by the max of the head's logits
    over its own tokens (docs/benchmarks.md, "Stage 1"). Image tags only, as before, but a token that carries
    the whole mosaic's classes is wrong on the other tiles, so the tokens stay local; a plain classifier learns
    tokens that all hold the image's tags, and its CAMs do not localise."""
    from seco_labels.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from seco_labels.models.backbone import ViTEncoder

    dev = torch.device(device)
    mean, std = (torch.tensor(v, device=dev).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    mirror = mirrors(data)
    _, images, tags, masks = load_split(data, "train")
    _, val_images, val_tags, _ = load_split(data, "val")
    images, tags, val_images, val_tags = (t.to(dev) for t in (images, tags, val_images, val_tags))
    if mosaic > 1 and pool == "cls":
        raise ValueError("mosaic > 1 classifies each tile by its own patch tokens; use pool='max' or 'mean'")
    encoder = ViTEncoder(backbone, aux_layer=-1, **backbone_kwargs).to(dev)  # the aux tokens are not used here
    if position == "sincos":
        # SeCo freezes the position embedding it is given (docs/design.md §2): ImageNet weights bring a learnt one,
        # but a random one is ~0.02 against patch embeddings of ~0.6, so without this the ViT sees a bag of
        # patches and cannot attend locally. Stage 1 learns it from 2D sin-cos, as pretraining would.
        from timm.layers import build_sincos2d_pos_embed

        pos = encoder.vit.pos_embed
        with torch.no_grad():
            pos[0, 1:] = build_sincos2d_pos_embed(list(encoder.grid_size), pos.shape[-1]).to(pos)
            pos[0, :1] = 0
        pos.requires_grad_(True)
    elif position != "frozen":
        raise ValueError(f"position is 'sincos' or 'frozen', got {position!r}")
    head = torch.nn.Conv2d(encoder.embed_dim, tags.shape[1], 1).to(dev)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)

    def logits(x: torch.Tensor, tiles: int = 1) -> torch.Tensor:  # (B, K-1), or (B * tiles**2, K-1) per tile
        features = encoder(x)
        if pool == "cls":  # the class token, as ImageNet ViTs are trained; the patch tokens are not supervised
            return head(features.cls_token[:, :, None, None]).flatten(1)
        cam = untile(head(features.tokens), tiles)  # (B * tiles**2, K-1, h / tiles, w / tiles)
        return cam.amax(dim=(2, 3)) if pool == "max" else cam.mean(dim=(2, 3))  # strongest patch, or all patches

    def prepare(batch: torch.Tensor, train: bool) -> torch.Tensor:
        x = batch.float() / 255
        if train:  # flips and a random shift: cheap, and the pasted objects move anyway
            flip = (torch.rand(x.shape[0], generator=gen) < (0.5 if mirror else 0.0)).to(dev)
            x[flip] = x[flip].flip(-1)
            dy, dx = (int(v) for v in torch.randint(-8, 9, (2,), generator=gen))
            x = torch.roll(x, (dy, dx), dims=(2, 3))
        return (x - mean) / std

    losses, t0 = [], time.perf_counter()
    encoder.train()
    for step in range(steps):
        idx = torch.randint(len(images), (batch_size * mosaic * mosaic,), generator=gen).to(dev)
        x = prepare(images[idx], True)
        loss = F.binary_cross_entropy_with_logits(logits(tile(x, mosaic), mosaic), tags[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"pretrain step {step}/{steps}: loss {np.mean(losses[-log_every:]):.4f}", file=sys.stderr)
    seconds = (time.perf_counter() - t0) / max(1, steps)
    encoder.eval()

    def tag_f1(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            predicted = torch.cat([torch.sigmoid(logits(prepare(x[i:i + 64], False))) > 0.5
                                   for i in range(0, len(x), 64)]).float()
        return round(2 * float((predicted * y).sum()) / max(1.0, float(predicted.sum() + y.sum())), 4)

    def cam_auc(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> float:
        aucs = []
        with torch.no_grad():
            cams = torch.cat([head(encoder(prepare(x[i:i + 64], False)).tokens) for i in range(0, len(x), 64)])
            cams = F.interpolate(cams, size=m.shape[-2:], mode="bilinear", align_corners=False).cpu().numpy()
        for cam, t, gt in zip(cams, y.cpu().numpy(), m.numpy()):
            labelled = gt != 255
            for k in np.nonzero(t)[0]:
                own = gt == k + 1
                if own.any() and (labelled & ~own).any():
                    aucs.append(_auc(cam[k][own], cam[k][labelled & ~own]))
        return round(float(np.mean(aucs)), 4) if aucs else float("nan")

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save({k: v.cpu() for k, v in encoder.vit.state_dict().items()}, tmp)
    return {"steps": steps, "first_loss": round(float(np.mean(losses[:10])), 4),
            "last_loss": round(float(np.mean(losses[-10:])), 4), "train_tag_f1": tag_f1(images[:500], tags[:500]),
            "val_tag_f1": tag_f1(val_images, val_tags),
            "head_cam_roc_auc": cam_auc(images[:300], tags[:300], masks[:300]),
            "mosaic": mosaic, "pool": pool, "position": position, "seconds_per_step": round(seconds, 4),
            "weights": str(out)}


# -- trivial baselines --------------------------------------------------------------------------------------
def baselines(data: Path, split: str, sizes: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> dict:
    """mIoU of tag-only masks on a split (what pseudo labels must beat): all background; the whole image as the
    image's first tag; a centred square of each side fraction in ``sizes`` as the first tag (the best one reported
    too). The mIoU is seco evaluate's (classes in the GT or the prediction)."""
    from seco_labels.evaluation.metrics import ConfusionMatrix

    _, _, tags, masks = load_split(data, split)
    k = tags.shape[1] + 1
    first = torch.where(tags.any(1), tags.argmax(1) + 1, torch.zeros((), dtype=torch.long))  # (N,) class index
    s = masks.shape[-1]

    def score(pred: torch.Tensor) -> float:
        cm = ConfusionMatrix(k)
        cm.update(masks.long(), pred.long())
        return round(float(cm.miou()), 4)

    out = {"all_background": score(torch.zeros_like(masks)),
           "whole_image": score(first[:, None, None].expand_as(masks))}
    boxes = {}
    for frac in sizes:
        side = max(1, round(frac * s))
        lo = (s - side) // 2
        pred = torch.zeros_like(masks)
        pred[:, lo:lo + side, lo:lo + side] = first[:, None, None].to(pred.dtype)
        boxes[frac] = score(pred)
    best = max(boxes, key=boxes.get)
    out.update({f"centre_box_{frac}": v for frac, v in boxes.items()})
    out.update({"best_centre_box": boxes[best], "best_centre_box_side": best,
                "best_trivial": max(out["all_background"], out["whole_image"], boxes[best])})
    return out


# -- scores of an export ---------------------------------------------------------------------------------------
def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann-Whitney form of the ROC-AUC)."""
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left")
    equal = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * equal).sum() / (len(pos) * len(neg)))


def localisation(data: Path, art: Path, split: str, pairs: list[tuple[str, str]]) -> dict:
    """Threshold-free and co-occurrence scores of an export of a generated split:

    - ``cam_roc_auc``: mean over (image, tagged class) of the ROC-AUC of the class's CAM against its own GT pixels
      (0.5: no localisation);
    - ``cooc_confusion`` and ``cooc_confusion_mean``: :func:`pair_confusion` of the pseudo masks.
    """
    from seco_labels.artifacts import open_split

    exported = open_split(art, split)
    cams = exported.require_cams()
    ids, _, _, masks = load_split(data, split)
    names = exported.dataset.class_names or ()
    aucs = []
    for image_id, gt in zip(ids, masks.numpy()):
        cam, keys = cams.load_cam(image_id)
        labelled = gt != 255
        for channel, k in zip(cam, keys):
            own = gt == k
            if own.any() and (labelled & ~own).any():
                aucs.append(_auc(channel[own], channel[labelled & ~own]))
    preds = (exported.masks.load_mask(i) for i in ids)
    return {"cam_roc_auc": round(float(np.mean(aucs)), 4) if aucs else None, "cam_roc_auc_n": len(aucs),
            **pair_confusion(masks.numpy(), preds, list(names), pairs)}


def pair_confusion(gts, preds, names: list[str], pairs: list[tuple[str, str]]) -> dict:
    """Co-occurrence confusion of predicted masks ``preds`` against ``gts`` (two iterables of (H, W) class maps;
    ``names[k]`` is class k): ``cooc_confusion`` per pair A:B, on the images whose GT holds both, the share of B's
    pixels labelled A (``b_as_a``) and of A's labelled B; ``cooc_confusion_mean`` averages both over the pairs."""
    index = {n: k for k, n in enumerate(names)}
    counts = {f"{a}:{b}": np.zeros(4) for a, b in pairs}  # B as A, B pixels, A as B, A pixels
    for gt, pred in zip(gts, preds):
        for a, b in pairs:
            ka, kb = index[a], index[b]
            if (gt == ka).any() and (gt == kb).any():
                counts[f"{a}:{b}"] += [((gt == kb) & (pred == ka)).sum(), (gt == kb).sum(),
                                       ((gt == ka) & (pred == kb)).sum(), (gt == ka).sum()]
    confusion = {pair: {"b_as_a": round(c[0] / c[1], 4) if c[1] else None,
                        "a_as_b": round(c[2] / c[3], 4) if c[3] else None} for pair, c in counts.items()}
    shares = [v for c in confusion.values() for v in c.values() if v is not None]
    return {"cooc_confusion": confusion, "cooc_confusion_mean": round(float(np.mean(shares)), 4) if shares else None}


def fit_segmenter(data: Path, labels: str, out: Path, *, pairs: list[tuple[str, str]], iters: int, crop: int,
                  threads: int, device: str) -> dict:
    """The segmenter step: ``seco fit-segmenter`` (DeepLabV3+/ResNet-18, random init) on ``labels`` (an export
    folder, or ``gt``) of the train split, scored on val's GT, then ``seco predict`` of val for the co-occurrence
    confusion there. Resumable (each command continues its folder). Returns val mIoU and confusion."""
    ablation = _load_ablation()
    log = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not (out / "metrics.json").is_file():
        ablation._run(ablation._seco(
            "fit-segmenter", "--arch", "deeplabv3plus", "--encoder", "resnet18", "--encoder-weights", "random",
            "--labels", labels,
            "--data-root", str(data), "--classes", str(data / "classes.txt"), "--split", "train", "--val-split", "val",
            "--out", str(out), "--iters", str(iters), "--batch-size", "8", "--crop-size", str(crop),
            "--num-workers", "0", "--device", device, "--resume", "auto", "--quiet"), threads, log)
    pred = out / "pred_val"
    ablation._run(ablation._seco("predict", "--model", str(out), "--split", "val", "--out", str(pred),
                                 "--device", device, "--quiet"), threads, log)
    ids, _, _, masks = load_split(data, "val")
    names = ["background", *json.loads((data / "cooc.json").read_text())["classes"]]
    preds = (np.asarray(Image.open(pred / f"{i}.png")) for i in ids)
    return {"val_miou": json.loads((out / "metrics.json").read_text())["miou"],
            **pair_confusion(masks.numpy(), preds, names, pairs)}


def run(source: list[Path], out: Path, *, seed: int, pairs: list[tuple[str, str]], num_classes: int, n_train: int,
        n_val: int, size: int, backbone_kwargs: dict, pretrain_steps: int, iters: int, variant: str = "full",
        threads: int = 2, extra_sets: tuple[str, ...] = (), device: str = "cpu", data: Path | None = None,
        digits: bool = False, pretrain_lr: float = 1e-3, background_blur: float = 0.0, mosaic: int = 1,
        seg_iters: int = 0, scale: tuple[float, float] = (0.35, 0.75), colours: str = "random") -> dict:
    """One seed end to end, resumable (each stage is skipped when its output exists): generate ``OUT/data``,
    stage 1 ``OUT/weights.pt``, SeCo ``variant`` from those weights and its export of the train split
    (benchmarks/ablation.py's ``run_one``, in ``OUT/<variant>/seed<S>``), then ``OUT/result.json``: the export's
    CAM/pseudo-mask mIoU and FP/TP, the trivial baselines, the ratio to the best of them, the CAM ROC-AUC and the
    co-occurrence confusion. ``data``: a dataset already generated, used instead of ``OUT/data``. ``mosaic``: stage
    1's (:func:`pretrain`). ``seg_iters`` > 0 adds the segmenter step (:func:`fit_segmenter`), on the pseudo masks
    (``OUT/<variant>/seed<S>/seg-pseudo``) and on the GT (``OUT/seg-gt``, shared by the variants): val mIoU of
    both, the gap, and the co-occurrence confusion on val."""
    result_file = out / f"result_{variant}.json"
    if result_file.is_file():
        done = json.loads(result_file.read_text())
        if not seg_iters or "seg_val_miou" in done:
            return done
    data, weights = data or out / "data", out / "weights.pt"
    if not (data / "cooc.json").is_file():
        generate(source, data, seed=seed, pairs=pairs, classes=None, num_classes=num_classes, n_train=n_train,
                 n_val=n_val, size=size, cooc=0.85, context=None, min_area=200, min_visible=40, digits=digits,
                 background_blur=background_blur, scale=scale, colours=colours)
    if not weights.is_file():
        stage1 = pretrain(data, weights, backbone="vit_tiny_patch16_224", backbone_kwargs=backbone_kwargs,
                          steps=pretrain_steps, batch_size=32 // (mosaic * mosaic), lr=pretrain_lr, seed=seed,
                          device=device, mosaic=mosaic)
        atomic_write_text(out / "pretrain.json", json.dumps(stage1, indent=2))
    ablation = _load_ablation()
    names = ["background", *json.loads((data / "cooc.json").read_text())["classes"]]
    mirror = mirrors(data)  # else SeCo neither trains on nor exports flipped views
    unmirrored = [] if mirror else ["data.flip_p=0", "data.strong_flip_p=0", "cam.flip=false"]
    sets = [f"model.backbone_kwargs={json.dumps(backbone_kwargs)}", f"data.class_names={json.dumps(names)}",
            f"data.num_classes={len(names)}", *unmirrored, *extra_sets]
    ns = argparse.Namespace(out=str(out), preset="demo", data_root=str(data), split="train", config=None, iters=iters,
                            backbone_weights=str(weights), set=sets, crop=size, eval_split="train", val_split="",
                            seg_crf=False, device=device, export_flip=mirror)
    scores = ablation.run_one(ns, variant, seed, threads)
    art = out / variant / f"seed{seed}" / "art"
    log = out / variant / f"seed{seed}" / "run" / "metrics.jsonl"  # one record per logged step
    steps = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    fired = [r["crops_rectified"] for r in steps if r.get("crops_rectified") is not None]
    rectification = {"steps_logged": len(steps), "steps_with_rectification": sum(1 for v in fired if v > 0),
                     "crops_rectified": int(sum(fired)),
                     "crops_tagged": int(sum(r.get("crops_tagged") or 0 for r in steps))}
    trivial = baselines(data, "train")
    stage1 = out / "pretrain.json"
    result = {**scores, "baselines": trivial, **localisation(data, art, "train", pairs),
              "rectification": rectification,
              "mask_miou_over_best_trivial": round(scores["mask_miou"] / trivial["best_trivial"], 3)
              if trivial["best_trivial"] else None,
              "pretrain": json.loads(stage1.read_text()) if stage1.is_file() else None}
    if seg_iters:
        kw = dict(pairs=pairs, iters=seg_iters, crop=size, threads=threads, device=device)
        gt = fit_segmenter(data, "gt", out / "seg-gt", **kw)
        pseudo = fit_segmenter(data, str(art), out / variant / f"seed{seed}" / "seg-pseudo", **kw)
        result.update(seg_val_miou=pseudo["val_miou"], seg_gt_val_miou=gt["val_miou"],
                      seg_gap=round(gt["val_miou"] - pseudo["val_miou"], 4),
                      seg_cooc_confusion=pseudo["cooc_confusion"],
                      seg_cooc_confusion_mean=pseudo["cooc_confusion_mean"],
                      seg_gt_cooc_confusion_mean=gt["cooc_confusion_mean"])
    atomic_write_text(result_file, json.dumps(result, indent=2))
    return result


#: (result key, column, shown in %) of the ablation table, each as mean ± std over seeds
ABLATION_COLUMNS = (("cam_miou", "CAM mIoU", True), ("mask_miou", "pseudo-mask mIoU", True),
                    ("mask_miou_over_best_trivial", "mask / best trivial", False), ("fp_tp", "FP/TP", False),
                    ("cam_roc_auc", "CAM ROC-AUC", False), ("cooc_confusion_mean", "co-occurrence confusion", True),
                    ("crops_rectified", "crops rectified", False),
                    ("seg_val_miou", "segmenter val mIoU", True), ("seg_gap", "gap to GT-trained", True),
                    ("seg_cooc_confusion_mean", "segmenter val confusion", True))


def _load_ablation():
    import importlib.util

    spec = importlib.util.spec_from_file_location("seco_ablation", Path(__file__).with_name("ablation.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def ablate(source: list[Path], out: Path, *, seeds: list[int], variants: list[str], **run_kwargs) -> str:
    """SeCo's ablation on the generated data: for each seed, one dataset and one stage 1 shared by every variant
    (``OUT/seed<S>/``, through :func:`run`, resumable), then ``OUT/ablation.md`` (mean ± std over seeds of
    :data:`ABLATION_COLUMNS`), ``OUT/ablation.csv`` (one row per run) and ``OUT/ablation.png``. Returns the table."""
    ablation = _load_ablation()
    rows = []
    for seed in seeds:
        for variant in variants:
            r = run(source, out / f"seed{seed}", seed=seed, variant=variant, **run_kwargs)
            rows.append({"variant": variant, "seed": seed, **{k: r.get(k) for k, _, _ in ABLATION_COLUMNS},
                         "crops_rectified": r["rectification"]["crops_rectified"],
                         "best_trivial": r["baselines"]["best_trivial"]})
            print(f"{variant} seed {seed}: mask {100 * r['mask_miou']:.2f}, ratio {r['mask_miou_over_best_trivial']}, "
                  f"confusion {r['cooc_confusion_mean']}", file=sys.stderr, flush=True)
    summary = ablation.summarize(rows, variants, ABLATION_COLUMNS)
    table = ablation.format_markdown(summary, rows, "The pseudo masks of the train split.", ABLATION_COLUMNS)
    atomic_write_text(out / "ablation.md", table)
    atomic_write_text(out / "ablation.csv", ablation.format_csv(rows))
    confusion = ((("cooc_confusion_mean", "pseudo masks, train"), ("seg_cooc_confusion_mean", "segmenter, val")),
                 "co-occurrence confusion of the pairs (%, lower is better), mean ± std", 100.0, 1)
    ablation.draw(summary, out / "ablation.png", title="co-occurrence benchmark", extra=(confusion,))
    return table


def _layout(src: Path) -> str:
    return "voc" if (src / "JPEGImages").is_dir() else "coco"


def _splits(src: Path) -> list[str]:
    lists = src / "ImageSets" / "Segmentation" if _layout(src) == "voc" else src
    return [s for s in ("train", "val") if (lists / f"{s}.txt").is_file()]


def _pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        a, sep, b = item.partition(":")
        if not sep or not a or not b or a == b:
            raise argparse.ArgumentTypeError(f"{item!r}: give pairs as A:B with two class names, e.g. dog:person")
        pairs.append((a.strip(), b.strip()))
    return pairs


_SCALE_HELP = "MIN,MAX: an object's longest side, as shares of the image side"
_COLOURS_HELP = ("the digits' colours: random (the class is in the shape alone) or class (a hue per class, shared "
                 "by each pair: only shape tells A from B)")


def _scale(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give the scale as MIN,MAX, e.g. 0.35,0.75") from None
    if not 0 < low <= high <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 < MIN <= MAX <= 1 (shares of the image side)")
    return low, high


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    gen = verbs.add_parser("generate", help="write the dataset")
    gen.add_argument("--source", type=Path, action="append", required=True,
                     help="a VOC- or COCO-layout dataset with GT masks (repeatable)")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--pairs", type=_pairs, default=[], help="co-occurring pairs A:B, comma-separated")
    gen.add_argument("--classes", default=None, help="comma-separated class names (default: the most instanced)")
    gen.add_argument("--num-classes", type=int, default=5, help="foreground classes when --classes is not given")
    gen.add_argument("--train", type=int, default=2000, help="train images")
    gen.add_argument("--val", type=int, default=300, help="val images")
    gen.add_argument("--size", type=int, default=128, help="image side, pixels")
    gen.add_argument("--cooc", type=float, default=0.85, help="share of A's train images that hold B")
    gen.add_argument("--context", default=None, help="class kept on green backgrounds in train (context variant)")
    gen.add_argument("--min-area", type=int, default=400, help="smallest instance, source pixels")
    gen.add_argument("--min-visible", type=int, default=40, help="visible pixels for a pasted class to be tagged")
    gen.add_argument("--digits", action="store_true",
                     help="objects: the bundled handwritten digits (classes zero..nine); --source gives backgrounds")
    gen.add_argument("--background-blur", type=float, default=0.0, help="Gaussian blur of the backgrounds, pixels")
    gen.add_argument("--scale", type=_scale, default=(0.35, 0.75), help=_SCALE_HELP)
    gen.add_argument("--colours", choices=("random", "class"), default="random", help=_COLOURS_HELP)
    pre = verbs.add_parser("pretrain", help="stage 1: classification pretraining of the ViT on a generated set")
    pre.add_argument("--data", type=Path, required=True, help="a dataset written by generate")
    pre.add_argument("--out", type=Path, required=True, help="the weights file to write")
    pre.add_argument("--backbone", default="vit_tiny_patch16_224")
    pre.add_argument("--backbone-kwargs", type=json.loads, default={"patch_size": 8, "depth": 6},
                     help='JSON timm arguments, e.g. \'{"patch_size": 8, "depth": 6}\'')
    pre.add_argument("--steps", type=int, default=2000)
    pre.add_argument("--batch-size", type=int, default=32)
    pre.add_argument("--lr", type=float, default=1e-3)
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--device", default="cpu")
    pre.add_argument("--pool", choices=("max", "mean", "cls"), default="max",
                     help="how the head pools its patch logits, or cls: it reads the class token")
    pre.add_argument("--mosaic", type=int, default=1, help="train on k x k mosaics, each tile classified alone")
    pre.add_argument("--position", choices=("sincos", "frozen"), default="sincos",
                     help="position embedding: learnt from 2D sin-cos, or SeCo's frozen random one")
    base = verbs.add_parser("baselines", help="tag-only masks' mIoU on a generated split")
    base.add_argument("--data", type=Path, required=True)
    base.add_argument("--split", default="train")
    one = verbs.add_parser("run", help="one seed end to end: generate, stage 1, SeCo, export, scores (resumable)")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--variant", default="full", help="an ablation variant (benchmarks/ablation.py)")
    one.add_argument("--data", type=Path, default=None, help="a dataset already generated (default: OUT/data)")
    many = verbs.add_parser("ablate", help="the ablation variants over seeds (one dataset and stage 1 per seed), "
                            "tabulated (resumable)")
    many.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    many.add_argument("--variants", default=",".join(_load_ablation().DEFAULT_VARIANTS))
    for verb in (one, many):
        verb.add_argument("--source", type=Path, action="append", required=True)
        verb.add_argument("--out", type=Path, required=True)
        verb.add_argument("--pairs", type=_pairs, default=[("dog", "person")])
        verb.add_argument("--num-classes", type=int, default=5)
        verb.add_argument("--train", type=int, default=2000)
        verb.add_argument("--val", type=int, default=300)
        verb.add_argument("--size", type=int, default=128)
        verb.add_argument("--digits", action="store_true", help="objects: the bundled handwritten digits")
        verb.add_argument("--background-blur", type=float, default=0.0, help="Gaussian blur of the backgrounds, px")
        verb.add_argument("--scale", type=_scale, default=(0.35, 0.75), help=_SCALE_HELP)
        verb.add_argument("--colours", choices=("random", "class"), default="random", help=_COLOURS_HELP)
        verb.add_argument("--backbone-kwargs", type=json.loads, default={"patch_size": 8, "depth": 6})
        verb.add_argument("--pretrain-steps", type=int, default=2000)
        verb.add_argument("--pretrain-lr", type=float, default=1e-3)
        verb.add_argument("--mosaic", type=int, default=1, help="stage 1 on k x k mosaics (1: whole images)")
        verb.add_argument("--seg-iters", type=int, default=0, help="segmenter steps (0: no segmenter step)")
        verb.add_argument("--iters", type=int, default=300, help="SeCo steps")
        verb.add_argument("--device", default="cpu")
        verb.add_argument("--threads", type=int, default=2, help="torch threads of each seco command")
    args = parser.parse_args(argv)
    if args.verb in ("run", "ablate"):
        kwargs = dict(pairs=args.pairs, num_classes=args.num_classes, n_train=args.train, n_val=args.val,
                      size=args.size, backbone_kwargs=args.backbone_kwargs, pretrain_steps=args.pretrain_steps,
                      iters=args.iters, threads=args.threads, device=args.device, digits=args.digits,
                      pretrain_lr=args.pretrain_lr, background_blur=args.background_blur, mosaic=args.mosaic,
                      seg_iters=args.seg_iters, scale=args.scale, colours=args.colours)
        if args.verb == "run":
            print(json.dumps(run(args.source, args.out, seed=args.seed, variant=args.variant, data=args.data,
                                 **kwargs), indent=1))
        else:
            print(ablate(args.source, args.out, seeds=args.seeds,
                         variants=[v.strip() for v in args.variants.split(",") if v.strip()], **kwargs))
        return 0
    if args.verb == "pretrain":
        print(json.dumps(pretrain(args.data, args.out, backbone=args.backbone, backbone_kwargs=args.backbone_kwargs,
                                  steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                  device=args.device, pool=args.pool, mosaic=args.mosaic,
                                  position=args.position), indent=1))
        return 0
    if args.verb == "baselines":
        print(json.dumps(baselines(args.data, args.split), indent=1))
        return 0
    info = generate(args.source, args.out, seed=args.seed, pairs=args.pairs,
                    classes=args.classes.split(",") if args.classes else None, num_classes=args.num_classes,
                    n_train=args.train, n_val=args.val, size=args.size, cooc=args.cooc, context=args.context,
                    min_area=args.min_area, min_visible=args.min_visible, digits=args.digits,
                    background_blur=args.background_blur, scale=args.scale, colours=args.colours)
    print(json.dumps({k: info[k] for k in ("classes", "images", "instances", "cooccurrence", "seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
