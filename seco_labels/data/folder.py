"""The ``folder`` layout: a folder of images and a tags file, the layout for users' own data (docs/data.md).

::

    DATA/
      images/**/<name>.<jpg|jpeg|png|webp|bmp>   nested folders allowed
      tags.csv  (header ``image,tags``; tags ``;``-separated)  or  tags.jsonl ({"image": ..., "tags": [...]})
      classes.txt        optional: the class order (one name per line), else the tags' names sorted
      masks/**/<name>.png   optional ground truth for evaluation, class indices (0 = background)
      splits/<name>.txt  optional split lists (image paths or ids); split ``all`` is every row of the tags file

An image's id is its path under ``images/`` without the extension, with ``/`` written ``__`` (ids name files in the
artifacts, so they hold no separator): ``images/cats/001.jpg`` is ``cats__001``. Tags name classes; they are
matched case-insensitively and spelled as in ``classes.txt``/``--classes``, else as first seen.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..io import atomic_write_text
from .classes import check_class_names, read_class_names
from .images import check_image_id
from .readers import SegmentationReader, register_reader

__all__ = ["FolderReader", "FOLDER_IMAGE_SUFFIXES", "folder_id", "write_folder_splits"]

log = logging.getLogger(__name__)

#: image files the layout reads (lower-case suffixes)
FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_TAG_FILES = ("tags.csv", "tags.jsonl")
_CLASSES_FILE = "classes.txt"
#: the split that is every row of the tags file
ALL_SPLIT = "all"


def folder_id(relative: str) -> str:
    """The id of an image at ``relative`` (a POSIX path under ``images/``): no extension, ``/`` as ``__``."""
    stem = relative.rsplit(".", 1)[0] if "." in relative.rsplit("/", 1)[-1] else relative
    return stem.replace("/", "__")


def _scan_images(images: Path) -> dict[str, str]:
    """``{id: relative path}`` of every image under ``images/``; two files of one id are refused."""
    found: dict[str, str] = {}
    for path in sorted(images.rglob("*")):
        if path.suffix.lower() not in FOLDER_IMAGE_SUFFIXES or not path.is_file():
            continue
        rel = path.relative_to(images).as_posix()
        image_id = folder_id(rel)
        if image_id in found:
            raise DataError(f"{images / found[image_id]} and {path} both have the id {image_id!r} (path without "
                            "extension, '/' as '__'); rename one of them")
        found[image_id] = rel
    return found


def _tag_rows(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, image, tag names)`` of each row of ``tags.csv`` or ``tags.jsonl``."""
    rows = []
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"tags file {path} could not be read ({e}); save it as UTF-8 text") from None
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image, tags = row["image"], row.get("tags") or []
            except (ValueError, KeyError, TypeError, AttributeError):
                raise DataError(f"{path} line {number} is not a JSON object with \"image\" and \"tags\" keys: "
                                f"{line[:80]!r}") from None
            if not isinstance(image, str) or not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise DataError(f"{path} line {number}: \"image\" must be a string and \"tags\" a list of class "
                                "names")
            rows.append((number, image, tags))
        return rows
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header[:2]] != ["image", "tags"]:
        raise DataError(f"{path} must start with the header line 'image,tags' (found {header!r}); each row is an "
                        "image path under images/ and its class names separated by ';'")
    for number, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) > 2:
            raise DataError(f"{path} line {number} has {len(row)} columns; quote the tags or separate them with ';' "
                            "(image,tag1;tag2)")
        tags = [t for t in (row[1] if len(row) > 1 else "").split(";")]
        rows.append((number, row[0], tags))
    return rows


def _class_order(rows: list[tuple[int, str, list[str]]], given: Sequence[str] | None,
                 given_where: str) -> tuple[list[str], dict[str, int]]:
    """The K class names (background first) and a case-insensitive name -> index map."""
    if given:
        names = list(given)
    else:
        first: dict[str, str] = {}
        for _, _, tags in rows:
            for t in tags:
                if t.strip() and t.strip().lower() != "background":  # refused with its line by _tag_vectors
                    first.setdefault(t.strip().lower(), t.strip())
        names = ["background"] + sorted(first.values(), key=str.lower)
        given_where = "the tags file"
    names = list(check_class_names(names, given_where))
    return names, {n.lower(): i for i, n in enumerate(names)}


@register_reader
class FolderReader(SegmentationReader):
    """Images under ``images/`` with a tags file (module docstring). Classes come from the dataset: ``class_names``
    when given, else ``classes.txt``, else the tags' names sorted; ``num_classes``, when given, must agree.

    Raises:
        ConfigError: ``num_classes`` disagrees with the dataset's classes; a bad ``classes.txt``.
        DataError: no images folder or tags file; a tags row that names a missing image, repeats an image, or an
            unknown class (when the classes are given); a split list naming an image without a row; an empty
            split. Each message names the file and line.
    """

    layout = "folder"
    classes_from_data = True

    def __init__(self, root: str | Path, split: str, *, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None, **kwargs) -> None:
        self.root = root = Path(root)  # set again by the base class; the tags are read before it runs
        if not (root / "images").is_dir():
            raise DataError(f"{root / 'images'} not found: the folder layout keeps its images in DATA/images/ "
                            "(nested folders allowed) next to DATA/tags.csv; check --data-root")
        self._images = _scan_images(root / "images")
        self._tag_file = next((root / n for n in _TAG_FILES if (root / n).is_file()), None)
        if self._tag_file is None:
            raise DataError(f"no tags file in {root}: write {root / 'tags.csv'} (header 'image,tags', then one row "
                            f"per image: path under images/, class names separated by ';') or {root / 'tags.jsonl'}")
        rows = _tag_rows(self._tag_file)
        where = "--classes"
        if not class_names and (root / _CLASSES_FILE).is_file():
            class_names, where = read_class_names(root / _CLASSES_FILE), str(root / _CLASSES_FILE)
        names, index = _class_order(rows, class_names, where)
        if num_classes is not None and int(num_classes) != len(names):
            raise ConfigError(f"data.num_classes={num_classes} but {root} has {len(names)} classes with background "
                              f"({', '.join(names[1:5])}{', ...' if len(names) > 5 else ''}); drop --num-classes: "
                              "the folder layout takes its classes from the data")
        self._rows = self._tag_vectors(rows, names, index, given=bool(class_names), where=where)
        super().__init__(root, split, class_names=names, **kwargs)

    @classmethod
    def marker(cls, root: Path) -> str | None:
        """``tags.csv`` or ``tags.jsonl`` when ``root`` holds one."""
        return next((n for n in _TAG_FILES if (Path(root) / n).is_file()), None)

    @classmethod
    def detect(cls, root: Path) -> str | None:
        """``images/ and tags.csv`` (or ``tags.jsonl``) when ``root`` holds both."""
        tags = cls.marker(root)
        return f"images/ and {tags}" if tags and (Path(root) / "images").is_dir() else None

    # -- the tags file ---------------------------------------------------------------------------------------
    def _lookup(self, entry: str) -> str | None:
        """The id of an image named as in a tags row or split list: a path under images/ (with or without its
        extension) or an id."""
        entry = entry.strip().replace("\\", "/").lstrip("/")
        if entry.startswith("images/") and folder_id(entry[7:]) in self._images:
            entry = entry[7:]
        for image_id in (folder_id(entry), entry.replace("/", "__")):
            if image_id in self._images:
                return image_id
        return None

    def _tag_vectors(self, rows, names: list[str], index: dict[str, int], *, given: bool,
                     where: str) -> dict[str, np.ndarray]:
        vectors: dict[str, np.ndarray] = {}
        first_line: dict[str, int] = {}
        untagged = 0
        for number, image, tags in rows:
            image_id = self._lookup(image)
            if image_id is None:
                raise DataError(f"{self._tag_file} line {number}: image {image!r} not found under "
                                f"{self.root_images}; remove the line or add the image")
            if image_id in first_line:
                raise DataError(f"{self._tag_file} lines {first_line[image_id]} and {number} both tag {image!r}; "
                                "merge them into one row")
            first_line[image_id] = number
            vec = np.zeros(len(names) - 1, dtype=np.float32)
            for tag in (t.strip() for t in tags):
                if not tag:
                    continue
                k = index.get(tag.lower())
                if k is None or k == 0:
                    what = "is background, which is never tagged" if k == 0 else f"is not in the classes of {where}"
                    hint = "remove the tag" if k == 0 else f"add it to {where} or fix the tag"
                    raise DataError(f"{self._tag_file} line {number}: class {tag!r} of {image!r} {what}; {hint}")
                vec[k - 1] = 1.0
            untagged += not vec.any()
            vectors[image_id] = vec
        if untagged:
            log.warning("%d image(s) of %s have no tags: they count as background only (no class present, no "
                        "CAM, all pixels background in their pseudo masks)", untagged, self._tag_file)
        return vectors

    @property
    def root_images(self) -> Path:
        return self.root / "images"

    # -- the reader's interface ---------------------------------------------------------------------------
    def _split_candidates(self) -> list[Path]:
        return [self.root / "splits" / f"{self.split}.txt"]

    def _find_split_file(self) -> Path:
        if self.split == ALL_SPLIT and not (self.root / "splits" / f"{ALL_SPLIT}.txt").is_file():
            return self._tag_file  # type: ignore[return-value]
        path = self._split_candidates()[0]
        if not path.is_file():
            listed = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
            raise DataError(f"split list {path} not found for split {self.split!r} (folder layout); splits there: "
                            f"{', '.join(listed) or 'none'}. Use --split {ALL_SPLIT} (every row of the tags file), "
                            f"write {path} (one image path per line), or let seco train draw train/val with "
                            "--val-fraction")
        return path

    def _read_split(self) -> list[str]:
        if self.split_file == self._tag_file:
            ids = list(self._rows)
        else:
            ids = []
            text = self.split_file.read_bytes().decode("utf-8-sig", errors="replace")
            for number, line in enumerate(text.splitlines(), start=1):
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                image_id = self._lookup(entry)
                if image_id is None:
                    raise DataError(f"split list {self.split_file} line {number}: image {entry!r} not found under "
                                    f"{self.root_images}; remove the line or add the image")
                ids.append(image_id)
        for image_id in ids:
            check_image_id(image_id, f"{self.split_file}: ", fix="or rename the file")
        if not ids:
            raise DataError(f"split {self.split!r} is empty ({self.split_file}); list one image per line")
        return ids

    def _load_tags(self, require_tags: bool = True) -> dict[str, np.ndarray]:
        missing = [i for i in self.ids if i not in self._rows]
        if missing and require_tags:
            raise DataError(f"{len(missing)} image(s) of split {self.split!r} have no row in {self._tag_file}: "
                            f"{', '.join(self._images[i] for i in missing[:5])}; add their tags (an empty tags cell "
                            "is allowed)")
        return {i: self._rows[i] for i in self.ids if i in self._rows}

    def image_path(self, image_id: str) -> Path:
        try:
            return self.root_images / self._images[image_id]
        except KeyError:
            raise DataError(f"image id {image_id!r} names no file under {self.root_images}") from None

    def mask_path(self, image_id: str) -> Path:
        rel = self._images.get(image_id, image_id.replace("__", "/"))
        return self.root / "masks" / (rel.rsplit(".", 1)[0] + ".png")

    def tags(self, image_id: str) -> np.ndarray:
        try:
            return self._tags[image_id]
        except KeyError:
            raise DataError(f"image {self._images.get(image_id, image_id)!r} of split {self.split!r} has no row in "
                            f"{self._tag_file}") from None


def write_folder_splits(root: str | Path, val_fraction: float, seed: int, *, train: str = "train",
                        val: str = "val", require_masks: bool = False) -> tuple[Path, Path]:
    """Draw ``train``/``val`` split lists from the tagged images of a folder dataset: ``val_fraction`` of them, at
    random with ``seed``, into ``DATA/splits/<val>.txt`` and the rest into ``<train>.txt``. The first line records
    the draw. Lists already there are kept when they are this draw, and refused otherwise.

    Validation scores CAMs against GT masks, so the validation images are drawn among the images that have a mask
    in ``DATA/masks/`` (all of them when every image has one: the draw is the same as before masks were checked);
    the images without a mask all go to ``train``. When fewer images have a mask than the fraction asks for,
    ``val`` is every image with a mask. When no image has one, the draw is among all images (a held-out split to
    export), or with ``require_masks`` (``seco train --val-fraction``: a validation split) an error.

    Raises:
        ConfigError: ``val_fraction`` outside (0, 1), or lists of another draw exist (names them).
        DataError: ``require_masks`` and no image has a mask (names the masks folder).
    """
    if not 0 < val_fraction < 1:
        raise ConfigError(f"--val-fraction {val_fraction}: give a fraction between 0 and 1, e.g. 0.1")
    everything = FolderReader(root, ALL_SPLIT, require_tags=True)
    ids = sorted(everything.ids)
    masked = [i for i in ids if everything.mask_path(i).is_file()] or ([] if require_masks else ids)
    if not masked:
        raise DataError(f"--val-fraction draws the validation images among those with a ground-truth mask, and no "
                        f"image under {everything.root_images} has a mask in {Path(root) / 'masks'} (same path, "
                        ".png); add masks there, or train without validation (--val-split '', no --val-fraction)")
    n_val = max(1, int(round(val_fraction * len(ids))))
    if n_val >= len(ids):
        raise ConfigError(f"--val-fraction {val_fraction} of {len(ids)} images leaves none to train on")
    if n_val > len(masked):
        log.warning("--val-fraction %s asks for %d validation images but only %d have a mask in %s: all of them go "
                    "to %s", val_fraction, n_val, len(masked), Path(root) / "masks", val)
        n_val = len(masked)
    order = np.random.default_rng(seed).permutation(len(masked))
    picked = {masked[i] for i in order[:n_val]}
    header = f"# drawn by seco_labels: --val-fraction {val_fraction} --split-seed {seed}\n"
    folder = Path(root) / "splits"
    lists = {val: [i for i in ids if i in picked], train: [i for i in ids if i not in picked]}
    paths = {}
    for name, members in lists.items():
        path = paths[name] = folder / f"{name}.txt"
        text = header + "".join(f"{everything._images[i]}\n" for i in members)
        if path.is_file():
            if path.read_text() != text:
                raise ConfigError(f"{path} exists and is not the draw of --val-fraction {val_fraction} --split-seed "
                                  f"{seed}; drop --val-fraction to use the lists there, or delete {folder}")
            continue
        folder.mkdir(exist_ok=True)
        atomic_write_text(path, text)
    return paths[train], paths[val]
