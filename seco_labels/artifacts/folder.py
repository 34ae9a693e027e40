"""An exported split as one object: where its masks and CAMs are, which dataset it came from, and its one
provenance record (docs/artifact-format.md). ``seco evaluate``, ``show``, ``fit-segmenter``, the demo and
:func:`open_pseudo_labels` all find a split through :func:`open_split`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from ..config_io import load_config_file
from ..data.readers import SegmentationReader, build_reader
from ..errors import ConfigError, DataError
from .confidence import MaskConfidence, read_confidence
from .layout import exported_splits, h5_path, manifest_path, masks_dir, read_manifest
from .reader import ArtifactFile, PngMaskFolder, PseudoLabels, check_attrs

__all__ = ["ExportedDataset", "ArtifactSplit", "open_split", "open_pseudo_labels"]

#: the run configuration ``seco predict``, ``segment`` and ``export-masks`` write next to their outputs
_RUN_CONFIG = "config.yaml"


@dataclass(frozen=True)
class ExportedDataset:
    """The dataset a split was exported from, as recorded: images root, layout, K and the K class names
    (background first), and ``max_side``: the long side the images were bounded to (``data.max_side``; the masks
    have that size, 0 = the images' own). Any of them may be None when the record does not hold it."""

    root: str | None = None
    layout: str | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    max_side: int | None = None

    def resolve(self, *, root: str | Path | None = None, layout: str | None = None,
                num_classes: int | None = None) -> "ExportedDataset":
        """The dataset to read the split's images or GT from: ``root`` and ``layout`` where given, else the
        recorded ones (layout ``voc`` when none is recorded). The recorded class count and names come along while
        the layout is the recorded one and no ``num_classes`` is given: an export's masks are numbered by its own
        classes. ``max_side`` always comes along: it is the size of the masks, whichever copy of the images."""
        lay = layout or self.layout or "voc"
        same = lay == (self.layout or "voc") and num_classes is None
        return ExportedDataset(
            root=str(root) if root else self.root, layout=lay,
            num_classes=self.num_classes if same else num_classes, class_names=self.class_names if same else None,
            max_side=self.max_side)


class ArtifactSplit:
    """One exported split: its masks, its CAMs (HDF5 only) and its provenance. Built by :func:`open_split`.

    Attributes:
        folder: the artifact folder (``ART``), where the reports and the provenance files are.
        name: the split.
        masks: the mask source (``name``, ``ids()``, ``load_mask(id)``, ``mask_shapes(ids)``, ``location(id)``):
            the HDF5 file when there is one, unless a PNG folder was asked for by its path.
        cams: the split's ``cams_<split>.h5`` (the CAM source), or None for a PNG-only export.
    """

    def __init__(self, folder: Path, name: str, masks: ArtifactFile | PngMaskFolder,
                 cams: ArtifactFile | None = None) -> None:
        self.folder, self.name, self.masks, self.cams = Path(folder), name, masks, cams

    def require_cams(self) -> ArtifactFile:
        """The CAM source; ConfigError when the split was exported without the HDF5 file."""
        if self.cams is None:
            raise ConfigError(f"{self.folder} has no {h5_path(self.folder, self.name).name} (exported with --format "
                              "png): CAMs are only in the HDF5 artifact; export with --format h5 or h5,png")
        return self.cams

    @property
    def _h5(self) -> ArtifactFile | None:
        if self.cams is not None:
            return self.cams
        return self.masks if isinstance(self.masks, ArtifactFile) else None

    def ids(self) -> set[str]:
        """The ids that have a mask."""
        return self.masks.ids()

    def confidences(self) -> dict[str, MaskConfidence]:
        """Each image's mask confidence (docs/export.md "Confidence"): from ``confidence_<split>.json``, else from
        the ``/masks/<id>`` attributes of the HDF5 file; ``{}`` for an export made before the score was recorded
        (or a folder of masks from elsewhere). Only ids with a mask are kept.

        Raises:
            DataError: the confidence file or the HDF5 file is unreadable (names it).
        """
        held = self.ids()
        scores = read_confidence(self.folder, self.name)
        if scores is None and self._h5 is not None:
            h5 = self._h5
            scores = {i: c for i in sorted(held) if (c := h5.confidence(i)) is not None}
        return {i: c for i, c in (scores or {}).items() if i in held}

    @cached_property
    def record_file(self) -> Path | None:
        """Where the provenance comes from: the HDF5 file, else ``manifest_<split>.json`` (a PNG-only export),
        else a ``config.yaml`` in the folder (``seco predict`` output); None when there is none."""
        if self._h5 is not None:
            return self._h5.path
        return next((p for p in (manifest_path(self.folder, self.name), self.folder / _RUN_CONFIG) if p.is_file()),
                    None)

    @cached_property
    def record(self) -> dict[str, Any]:
        """The split's provenance, read from :attr:`record_file` alone: the export settings (the HDF5 file's root
        attributes, or the manifest's copy of them), or the dataset keys of a ``config.yaml``'s ``data`` section
        named as the artifact's (``dataset_root``, ``layout``, ``num_classes``, ``class_names``); ``{}`` when there
        is none.

        Raises:
            DataError: the file is unreadable, or records a dataset setting of the wrong type (names it).
        """
        where = self.record_file
        if where is None:
            return {}
        if where.suffix == ".h5":
            record = dict(self._h5.attrs)  # type: ignore[union-attr]
        elif where.name == _RUN_CONFIG:
            record = _run_config_record(where)
        else:
            record = read_manifest(self.folder, self.name) or {}
        check_attrs(record, where)
        return record

    @property
    def dataset(self) -> ExportedDataset:
        """The dataset the split was exported from, as recorded."""
        r = self.record
        names = r.get("class_names")
        return ExportedDataset(root=r.get("dataset_root"), layout=r.get("layout"), num_classes=r.get("num_classes"),
                               class_names=tuple(names) if names else None, max_side=r.get("max_side"))

    def open_images(self, *, root: str | Path | None = None, layout: str | None = None,
                    root_option: str = "data_root=...", **reader_args: Any) -> SegmentationReader:
        """The reader of the split's images (tags not needed) in the recorded dataset, or in ``root``/``layout``
        (:meth:`ExportedDataset.resolve`), bounded by the recorded ``max_side`` as at export so that they have the
        size of their masks; ``reader_args`` go to :func:`build_reader`.

        Raises:
            ConfigError: no root given and none recorded (the message says to pass ``root_option``).
        """
        ds = self.dataset.resolve(root=root, layout=layout)
        if not ds.root:
            raise ConfigError(f"{self.folder} does not record where the images of split {self.name!r} are; pass "
                              f"{root_option}")
        reader_args.setdefault("require_tags", False)
        reader_args.setdefault("max_side", ds.max_side or 0)
        return build_reader(ds.layout, ds.root, self.name, num_classes=ds.num_classes, class_names=ds.class_names,
                            **reader_args)


    def pseudo_labels(self, *, data_root: str | Path | None = None, with_cams: bool = False,
                      transform: Callable[..., Any] | None = None) -> PseudoLabels:
        """The split's images with their masks (and CAMs) as a torch ``Dataset``; see :func:`open_pseudo_labels`."""
        cams = self.require_cams() if with_cams else None
        reader = self.open_images(root=data_root)
        exported = self.ids()
        ids = [i for i in reader.ids if i in exported]
        if not ids:
            raise DataError(f"no image of split {self.name!r} in {reader.split_file} has a pseudo mask in "
                            f"{self.folder}")
        return PseudoLabels(self.masks, reader, ids, self.record, cams=cams, transform=transform)


def _run_config_record(path: Path) -> dict[str, Any]:
    """The dataset keys of a run ``config.yaml``'s ``data`` section, named as the artifact's ({} if none)."""
    data = load_config_file(path).get("data")
    if not isinstance(data, dict):
        return {}
    keys = {"root": "dataset_root", "layout": "layout", "num_classes": "num_classes", "class_names": "class_names",
            "max_side": "max_side"}
    return {ours: data[theirs] for theirs, ours in keys.items() if data.get(theirs) not in (None, "", [])}


def _only_split(art: Path) -> str:
    splits = exported_splits(art)
    if len(splits) != 1:
        raise ConfigError(f"{art} holds splits {splits}; pass the split (one of them)" if splits
                          else f"{art} holds no cams_<split>.h5 or masks_<split>/; run seco export-masks")
    return splits[0]


def open_split(path: str | Path, split: str | None = None) -> ArtifactSplit:
    """The exported split at ``path``.

    Args:
        path: an artifact folder (``ART``, holding ``cams_<split>.h5`` and/or ``masks_<split>/``), one of its
            ``cams_<split>.h5`` files, or a folder of ``<id>.png`` masks (``ART/masks_<split>/`` or another, such
            as ``seco predict``'s output).
        split: which split; may be omitted for an HDF5 file (it records its split) and for a folder of one split.

    Raises:
        ConfigError: ``path`` is missing or neither a folder nor an ``.h5`` file; the split is ambiguous.
        DataError: the folder holds nothing of ``split``; the HDF5 file is damaged or records no split.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".h5":
            raise ConfigError(f"{path} is neither a folder nor an .h5 artifact")
        h5 = ArtifactFile(path)
        split = split or h5.attrs.get("split")
        if not split:
            raise DataError(f"{path} does not record its split; pass the split")
        return ArtifactSplit(path.parent, str(split), h5, h5)
    if not path.is_dir():
        raise ConfigError(f"{path} not found: give an artifact folder (seco export-masks --out), a cams_<split>.h5 "
                          "file or a folder of <id>.png masks")
    split = split or _only_split(path)
    h5_file, pngs = h5_path(path, split), masks_dir(path, split)
    if h5_file.is_file():
        h5 = ArtifactFile(h5_file)
        return ArtifactSplit(path, split, h5, h5)
    if pngs.is_dir():
        return ArtifactSplit(path, split, PngMaskFolder(pngs, "pseudo mask", "Export it again"))
    if any(path.glob("*.png")):  # a bare folder of masks; when it is ART/masks_<split>/, ART is the folder
        if path == masks_dir(path.parent, split):
            h5_file = h5_path(path.parent, split)
            return ArtifactSplit(path.parent, split, PngMaskFolder(path),
                                 ArtifactFile(h5_file) if h5_file.is_file() else None)
        return ArtifactSplit(path, split, PngMaskFolder(path))
    held = exported_splits(path)
    raise DataError(f"no predictions for split {split!r} in {path}: expected {pngs}/, {h5_file} or <id>.png files"
                    f"{'; it holds split(s) ' + ', '.join(held) if held else ''}: run seco export-masks --split "
                    f"{split} --out {path}")


def open_pseudo_labels(
    path: str | Path,
    split: str | None = None,
    *,
    data_root: str | Path | None = None,
    with_cams: bool = False,
    transform: Callable[..., Any] | None = None,
) -> PseudoLabels:
    """A torch ``Dataset`` of an exported split: ``(image, mask[, cam, keys])`` per image, in split order.

    Args:
        path: the artifact folder (``ART``) or its ``cams_<split>.h5`` (:func:`open_split`). Masks come from the
            HDF5 file when there is one, else from ``masks_<split>/``.
        split: which split of ``ART``; may be omitted when it holds only one.
        data_root: where the images are (default: the dataset root recorded at export).
        with_cams: also return the CAMs and their class keys (needs the HDF5 file).
        transform: called as ``transform(image, mask[, cam, keys])``; its result is the item.

    Raises:
        ConfigError: ``split`` is ambiguous, no image root is known, or CAMs are asked of a PNG-only export.
        DataError: missing artifact, images or ids (names them).
    """
    return open_split(path, split).pseudo_labels(data_root=data_root, with_cams=with_cams, transform=transform)
