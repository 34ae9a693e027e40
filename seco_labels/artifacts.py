"""The pseudo-label artifact format (docs/design.md §7): schema, crash-safe writer, and the reader other projects
import.

An artifact folder ``ART`` holds, per split:

- ``cams_<split>.h5``: root attributes (provenance, see :data:`ROOT_ATTRS`); ``/cams/<id>`` float16 (k, H, W)
  CAMs of the image's k tagged classes at the original image size, attributes ``keys`` (k,) class indices 1..K-1
  and ``size`` (H, W), one gzip+shuffle chunk per image; ``/masks/<id>`` uint8 (H, W) pseudo mask, 255 = ignore.
- ``masks_<split>/<id>.png``: the same masks as palette-'P' PNGs in VOC colours.
- ``manifest_<split>.json``: the export settings, so that a resumed export can refuse to mix settings.

Crash safety: HDF5 files are not safe to append to from a process that may be killed, so :class:`ArtifactWriter`
writes each finished image as its own part file (``.parts_<split>/<id>.npz``, temp file + rename) holding the
already-compressed HDF5 chunks, and :meth:`ArtifactWriter.finalize` assembles them (with any earlier
``cams_<split>.h5``) into a new file that replaces the old one by rename. A killed export therefore keeps every
finished image, and the next run skips them. Compression and PNG encoding run on a background thread (zlib
releases the GIL), off the network's path.

Reading: :func:`open_pseudo_labels` gives a torch ``Dataset`` of (image, mask[, cam, keys]);
:class:`ArtifactFile` gives per-id masks and CAMs (the ``seco evaluate`` sources). Both open the HDF5 file
lazily, once per process, so they are safe in DataLoader workers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import shutil
import threading
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .data.classes import voc_palette
from .data.readers import build_reader, check_image_id, decode_image
from .distributed import barrier
from .errors import ConfigError, DataError
from .io import atomic_path, atomic_write_bytes, atomic_write_text, folder_lock, remove_stale_temps

__all__ = [
    "FORMAT_VERSION",
    "ROOT_ATTRS",
    "GZIP_LEVEL",
    "ArtifactWriter",
    "ArtifactFile",
    "PseudoLabels",
    "open_pseudo_labels",
    "h5_path",
    "masks_dir",
    "manifest_path",
    "export_report_path",
    "segment_report_path",
    "exported_splits",
    "read_manifest",
    "save_mask_png",
]

#: bumped when the layout of ``cams_<split>.h5`` changes incompatibly
FORMAT_VERSION = 1
GZIP_LEVEL = 4
#: root attributes every ``cams_<split>.h5`` carries (``config`` is a JSON string; lists are arrays)
ROOT_ATTRS = (
    "format_version", "created", "package_version", "split", "dataset_root", "layout", "class_names",
    "num_classes", "ignore_index", "background_policy", "backbone", "checkpoint_sha256", "scales", "flip",
    "cam_source", "tags_source", "crf", "high_thre", "low_thre", "input_size", "config",
)
#: attributes that may differ between the runs of one resumed export
_VOLATILE = ("created", "package_version")


# The names of a split's files in an artifact folder (docs/artifact-format.md). Only this module spells them:
# renaming one is a change here alone.
_H5_NAME = "cams_{}.h5"
_MASKS_NAME = "masks_{}"
_MANIFEST_NAME = "manifest_{}.json"
_EXPORT_REPORT_NAME = "export_{}.json"
_SEGMENT_REPORT_NAME = "segment_{}.json"


def h5_path(art: str | Path, split: str) -> Path:
    """``ART/cams_<split>.h5``: CAMs, masks and provenance of an exported split."""
    return Path(art) / _H5_NAME.format(split)


def masks_dir(art: str | Path, split: str) -> Path:
    """``ART/masks_<split>/``: one palette PNG per image."""
    return Path(art) / _MASKS_NAME.format(split)


def manifest_path(art: str | Path, split: str) -> Path:
    """``ART/manifest_<split>.json``: the settings of a PNG-only export (or of ``seco predict``)."""
    return Path(art) / _MANIFEST_NAME.format(split)


def export_report_path(art: str | Path, split: str) -> Path:
    """``ART/export_<split>.json``: what ``seco export-masks`` did (counts, seconds, settings)."""
    return Path(art) / _EXPORT_REPORT_NAME.format(split)


def segment_report_path(art: str | Path, split: str) -> Path:
    """``ART/segment_<split>.json``: what ``seco segment`` did."""
    return Path(art) / _SEGMENT_REPORT_NAME.format(split)


def exported_splits(art: str | Path) -> list[str]:
    """The splits an artifact folder holds (an HDF5 file or a masks folder), sorted."""
    art = Path(art)
    h5_prefix, h5_suffix = _H5_NAME.split("{}")
    masks_prefix, masks_suffix = _MASKS_NAME.split("{}")
    from_h5 = {p.name[len(h5_prefix): len(p.name) - len(h5_suffix)] for p in art.glob(_H5_NAME.format("*"))}
    from_pngs = {p.name[len(masks_prefix): len(p.name) - len(masks_suffix)]
                 for p in art.glob(_MASKS_NAME.format("*")) if p.is_dir()}
    return sorted(from_h5 | from_pngs)


def _parts_dir(art: str | Path, split: str) -> Path:
    return Path(art) / f".parts_{split}"


def lock_name(split: str) -> str:
    """The lock file of a split in an artifact folder (``ART/.lock_<split>``; :func:`seco_labels.io.folder_lock`):
    one writer per split and folder, while other splits of the folder may be written at the same time."""
    return f".lock_{split}"


def read_manifest(art: str | Path, split: str) -> dict[str, Any] | None:
    """The export settings recorded in ``ART/manifest_<split>.json``, or None when there is none."""
    path = manifest_path(art, split)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is unreadable ({e}); delete it and export again with --overwrite") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path} holds a JSON {type(manifest).__name__}, not the settings object; delete it and "
                        "export again with --overwrite")
    return manifest


# -- encoding ------------------------------------------------------------------------------------------------
def _gzip_chunk(arr: np.ndarray, shuffle: bool) -> bytes:
    """The bytes HDF5's shuffle + deflate filter pipeline stores for ``arr`` as one chunk.

    Shuffle groups the i-th byte of every element together (it is a no-op for 1-byte types); deflate is a zlib
    stream. Producing them here lets the background thread compress and ``finalize`` copy chunks verbatim.
    """
    raw = np.ascontiguousarray(arr)
    if shuffle and raw.itemsize > 1:
        buf = raw.view(np.uint8).reshape(-1, raw.itemsize).T.tobytes()
    else:
        buf = raw.tobytes()
    return zlib.compress(buf, GZIP_LEVEL)


def save_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """Write a (H, W) uint8 mask as a VOC-palette 'P' PNG, atomically."""
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _now_iso() -> str:
    """UTC now as ISO 8601 seconds, or ``SOURCE_DATE_EPOCH`` when set (reproducible builds' convention)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return when.isoformat(timespec="seconds")


def _attr_value(value: Any) -> Any:
    """HDF5-storable form of a JSON-like value: dicts as JSON text, string lists as vlen-string arrays."""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return np.array(value, dtype=h5py.string_dtype())
        return np.asarray(value)
    return value


def _plain(value: Any) -> Any:
    """The JSON-like value back from an HDF5 attribute."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_root_attrs(f: h5py.File) -> dict[str, Any]:
    attrs = {k: _plain(v) for k, v in f.attrs.items()}
    if isinstance(attrs.get("config"), str):
        attrs["config"] = json.loads(attrs["config"])
    return attrs


def _comparable(attrs: dict[str, Any]) -> dict[str, Any]:
    # round-trip through JSON so tuples/lists and numpy scalars compare equal
    return json.loads(json.dumps({k: v for k, v in attrs.items() if k not in _VOLATILE}, sort_keys=True,
                                 default=str))


def settings_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for each recorded setting that differs between two runs into one folder (a manifest's
    ``before``, this run's ``after``); the whole ``config`` shows as one line. Empty when they agree.

    The volatile keys (creation time, package version) do not count, nor keys only one side has: another package
    version added or removed them, so they cannot disagree.
    """
    old, new = _comparable(before), _comparable(after)
    diff = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    shown = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in diff if k != "config"]
    return shown + (["the checkpoint's config differs"] if "config" in diff else [])


# -- writer --------------------------------------------------------------------------------------------------
class ArtifactWriter:
    """Writes one split's artifacts; resumable, and never leaves a half-written file in place of a good one.

    Args:
        out_dir: the artifact folder ``ART``.
        split: split name (file names carry it).
        attrs: provenance written as the HDF5 root attributes and to ``manifest_<split>.json`` (JSON-like values).
        formats: ``"h5"`` and/or ``"png"``.
        overwrite: drop this split's earlier outputs first instead of resuming them.
        queue_size: images waiting for the background thread before :meth:`add` blocks.
        verb: what made the outputs, for the settings message (``exported``; ``segmented`` by seco segment).
        is_primary: False in every torchrun process but rank 0. All processes write their images' parts and PNGs
            into the same folder; rank 0 alone prepares it and assembles the HDF5 file in :meth:`finalize`, which
            every process calls (it waits for all of them), so the result does not depend on the process count.

    Rank 0 holds the split's lock (``ART/.lock_<split>``, see :func:`lock_name`) from construction to the end of
    :meth:`finalize` (or of the ``with`` block), so a second export of the split into ``ART`` fails at once instead
    of merging (and deleting) the first one's parts; holding it, it removes the temp files a killed run left.

    Raises:
        ConfigError: ``ART`` already holds this split exported with other settings (and not ``overwrite``).
        FolderBusyError: another process is writing this split of ``ART``.
        DiskFullError: a part, PNG or the HDF5 file did not fit (raised by :meth:`add`, :meth:`flush`,
            :meth:`finalize`); the finished images and the previous HDF5 file are kept, a rerun resumes.
    """

    def __init__(self, out_dir: str | Path, split: str, attrs: dict[str, Any], *,
                 formats: Iterable[str] = ("h5", "png"), overwrite: bool = False, queue_size: int = 8,
                 verb: str = "exported", is_primary: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.verb = verb
        self.split = split
        self.formats = tuple(formats)
        if not self.formats or set(self.formats) - {"h5", "png"}:
            raise ConfigError(f"formats {self.formats}: choose h5, png or both")
        self.h5 = h5_path(out_dir, split)
        self.masks = masks_dir(out_dir, split)
        self.parts = _parts_dir(out_dir, split)
        self.attrs = {"format_version": FORMAT_VERSION, "split": split, **attrs}
        # Under torchrun every process builds a writer over the same folder: all check the settings (read-only),
        # rank 0 alone prepares the folder, and nobody writes before it has.
        self.primary = is_primary
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(folder_lock(self.out_dir, lock_name(split), what=f"split {split}",
                                             enabled=is_primary))
        try:
            if not overwrite:
                self._check_settings()
        except BaseException:
            self._lock.close()
            raise
        barrier()
        if self.primary:
            self._prepare(overwrite)
        barrier()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name=f"seco-writer-{split}", daemon=True)
        self._thread.start()

    def _prepare(self, overwrite: bool) -> None:
        if overwrite:
            for path in (self.h5, manifest_path(self.out_dir, self.split)):
                path.unlink(missing_ok=True)
            for folder in (self.parts, self.masks):
                shutil.rmtree(folder, ignore_errors=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # A killed run's temp files (up to a whole HDF5 file): only this split's names, since other splits may be
        # under way in the same folder; the parts and masks folders are this split's alone.
        remove_stale_temps(self.out_dir, [path.name for path in (
            self.h5, manifest_path(self.out_dir, self.split), export_report_path(self.out_dir, self.split),
            segment_report_path(self.out_dir, self.split))])
        remove_stale_temps(self.parts)
        remove_stale_temps(self.masks)
        if "h5" in self.formats:
            self.parts.mkdir(exist_ok=True)
        if "png" in self.formats:
            self.masks.mkdir(exist_ok=True)
        previous = read_manifest(self.out_dir, self.split) or {}
        # the export's first start, kept across resumed runs; SOURCE_DATE_EPOCH pins it (reproducible builds)
        created = previous.get("created") or _now_iso()
        self.attrs["created"] = created
        atomic_write_text(manifest_path(self.out_dir, self.split), json.dumps(self.attrs, indent=2, sort_keys=True) + "\n")

    def _check_settings(self) -> None:
        before = read_manifest(self.out_dir, self.split)
        where = manifest_path(self.out_dir, self.split)
        if before is None and self.h5.is_file():
            before, where = ArtifactFile(self.h5).attrs, self.h5
        if before is None:
            return
        changes = settings_changes(before, self.attrs)
        if changes:
            raise ConfigError(
                f"{self.out_dir} already holds split {self.split!r} {self.verb} with other settings ({where}): "
                f"{'; '.join(changes[:5])}. Pass --overwrite to redo it, or write to another --out"
            )

    # -- progress --------------------------------------------------------------------------------------
    def _h5_ids(self) -> set[str]:
        ids = {p.stem for p in self.parts.glob("*.npz")} if self.parts.is_dir() else set()
        if self.h5.is_file():
            ids |= ArtifactFile(self.h5).ids()
        return ids

    def done_ids(self) -> set[str]:
        """Ids already written in every requested format (skipped by a resumed export)."""
        done: set[str] | None = None
        for fmt in self.formats:
            have = self._h5_ids() if fmt == "h5" else {p.stem for p in self.masks.glob("*.png")}
            done = have if done is None else done & have
        return done or set()

    # -- writing ---------------------------------------------------------------------------------------
    def add(self, image_id: str, cam: np.ndarray, keys: np.ndarray, mask: np.ndarray) -> None:
        """Queue one image: ``cam`` (k, H, W) float in [0, 1], ``keys`` (k,) class indices 1..K-1 of its channels,
        ``mask`` (H, W) uint8 with 255 = ignore. Blocks while the queue is full; re-raises a writer failure."""
        self._raise_pending()
        # readers already refuse such ids in split lists; checked again here because this is where files are
        # named, whatever the caller (defence in depth)
        check_image_id(image_id, fix="or rename the image")
        cam = np.asarray(cam)
        if cam.ndim != 3 or cam.shape[0] != len(keys) or cam.shape[1:] != mask.shape:
            raise ValueError(f"{image_id}: cam {cam.shape}, keys {len(keys)} and mask {mask.shape} disagree")
        self._queue.put((image_id, cam.astype(np.float16), np.asarray(keys, dtype=np.int64),
                         np.asarray(mask, dtype=np.uint8)))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._write(*item)
            except BaseException as e:  # handed to the caller's thread by _raise_pending
                self._error = e
            finally:
                self._queue.task_done()

    def _write(self, image_id: str, cam: np.ndarray, keys: np.ndarray, mask: np.ndarray) -> None:
        # h5 part first, PNG second: an id counts as done only once every requested file exists
        if "h5" in self.formats:
            part = {
                "cam": np.frombuffer(_gzip_chunk(cam, shuffle=True), dtype=np.uint8) if cam.size else np.zeros(0, np.uint8),
                "cam_shape": np.asarray(cam.shape, dtype=np.int64),
                "keys": keys,
                "mask": np.frombuffer(_gzip_chunk(mask, shuffle=False), dtype=np.uint8),
                "mask_shape": np.asarray(mask.shape, dtype=np.int64),
            }
            with atomic_path(self.parts / f"{image_id}.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, **part)
        if "png" in self.formats:
            save_mask_png(self.masks / f"{image_id}.png", mask)

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Wait until every queued image is on disk."""
        self._queue.join()
        self._raise_pending()

    def close(self) -> None:
        """Stop the background thread (after the queued images are written)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise_pending()

    def finalize(self) -> None:
        """Write every queued image, then assemble ``cams_<split>.h5`` from the earlier file and the parts.

        The new file is built under a temporary name and renamed over the old one; the parts are deleted after.
        Under torchrun every process calls it: each writes its own queue, then rank 0 assembles once all have.
        """
        try:
            self.close()
            barrier()
            if self.primary:
                self._assemble()
            barrier()
        finally:
            self._lock.close()

    def _assemble(self) -> None:
        if "h5" not in self.formats:
            return
        parts = {p.stem: p for p in self.parts.glob("*.npz")} if self.parts.is_dir() else {}
        if not parts and self.h5.is_file():
            shutil.rmtree(self.parts, ignore_errors=True)
            return
        old = h5py.File(self.h5, "r") if self.h5.is_file() else None
        try:
            ids = sorted(set(parts) | (set(old["masks"].keys()) if old is not None else set()))
            with atomic_path(self.h5) as tmp, h5py.File(tmp, "w") as f:
                for k, v in self.attrs.items():
                    if v is not None:  # HDF5 has no null: an unknown value is an absent attribute
                        f.attrs[k] = _attr_value(v)
                cams, masks = f.create_group("cams"), f.create_group("masks")
                for image_id in ids:
                    if image_id in parts:
                        self._write_part(cams, masks, image_id, parts[image_id])
                    else:  # copies the stored (compressed) chunks and the attributes
                        old.copy(old["cams"][image_id], cams, name=image_id)
                        old.copy(old["masks"][image_id], masks, name=image_id)
        finally:
            if old is not None:
                old.close()
        shutil.rmtree(self.parts, ignore_errors=True)

    @staticmethod
    def _write_part(cams: h5py.Group, masks: h5py.Group, image_id: str, path: Path) -> None:
        try:
            with np.load(path) as z:
                part = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, zlib.error) as e:
            raise DataError(f"part file {path} of {image_id} is unreadable ({e}); delete it and export again") from None
        cam_shape = tuple(int(v) for v in part["cam_shape"])
        mask_shape = tuple(int(v) for v in part["mask_shape"])
        if cam_shape[0] > 0:
            ds = cams.create_dataset(image_id, shape=cam_shape, dtype=np.float16, chunks=cam_shape,
                                     compression="gzip", compression_opts=GZIP_LEVEL, shuffle=True)
            ds.id.write_direct_chunk((0, 0, 0), part["cam"].tobytes())
        else:  # an image with no tagged class: zero channels cannot be chunked
            ds = cams.create_dataset(image_id, shape=cam_shape, dtype=np.float16)
        ds.attrs["keys"] = part["keys"].astype(np.int64)
        ds.attrs["size"] = np.asarray(mask_shape, dtype=np.int64)
        ms = masks.create_dataset(image_id, shape=mask_shape, dtype=np.uint8, chunks=mask_shape,
                                  compression="gzip", compression_opts=GZIP_LEVEL)
        ms.id.write_direct_chunk((0, 0), part["mask"].tobytes())

    def __enter__(self) -> "ArtifactWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.finalize()
        else:  # keep what was queued: it is finished work
            try:
                self.close()
            except BaseException:
                pass
            self._lock.close()


# -- reading -------------------------------------------------------------------------------------------------
#: what h5py raises on a damaged file: mostly OSError, but corrupt metadata can surface as any of these
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError)


class ArtifactFile:
    """One ``cams_<split>.h5``: masks and CAMs by image id (a ``seco evaluate`` mask and CAM source).

    The file is opened on first use in each process (safe to pickle into DataLoader workers).

    Raises:
        DataError: the file is missing, not HDF5, truncated or damaged, of a newer format, lacks an id, or holds a
            mask or CAM of the wrong type or shape (names the file, and the id where there is one).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        f = self._h5()
        try:
            complete = ("format_version" in f.attrs and isinstance(f.get("masks"), h5py.Group)
                        and isinstance(f.get("cams"), h5py.Group))
            if not complete:
                raise DataError(f"{self.path} is not a seco_labels artifact (no format_version, /cams or /masks)")
            version = int(f.attrs["format_version"])
            self.attrs = _read_root_attrs(f)
        except DataError:
            self.close()
            raise
        except _H5_ERRORS as e:
            self.close()
            raise self._damaged(e) from None
        if version > FORMAT_VERSION:
            self.close()
            raise DataError(f"{self.path} has format version {version}; this seco_labels reads up to "
                            f"{FORMAT_VERSION}: upgrade seco-labels")

    def _damaged(self, e: BaseException, image_id: str | None = None) -> DataError:
        what = f" (reading {image_id})" if image_id is not None else ""
        return DataError(f"artifact {self.path} is unreadable or damaged{what}: {e}; export it again")

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            if not self.path.is_file():
                raise DataError(f"artifact {self.path} not found; run seco export-masks first")
            try:
                self._file = h5py.File(self.path, "r")
            except _H5_ERRORS as e:
                raise DataError(f"artifact {self.path} is unreadable or truncated ({e}); export it again") from None
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = state["_pid"] = None
        return state

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "ArtifactFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def ids(self) -> set[str]:
        try:
            return set(self._h5()["masks"].keys())
        except _H5_ERRORS as e:
            raise self._damaged(e) from None

    def mask_shapes(self, ids: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """The shapes of the masks of ``ids`` (those the file holds; the others are left out), from the HDF5
        headers: no mask is decoded."""
        try:
            group = self._h5()["masks"]
            return {i: tuple(group[i].shape) for i in ids if i in group}
        except _H5_ERRORS as e:
            raise self._damaged(e) from None

    def _get(self, group: str, image_id: str) -> h5py.Dataset:
        try:
            grp = self._h5()[group]
            present = image_id in grp
            ds = grp[image_id] if present else None
        except _H5_ERRORS as e:
            raise self._damaged(e, image_id) from None
        if ds is None:
            raise DataError(f"image {image_id!r} is not in {self.path} (/{group}); export it first")
        if not isinstance(ds, h5py.Dataset):
            raise DataError(f"/{group}/{image_id} in {self.path} is a {type(ds).__name__}, not a dataset; "
                            "export it again")
        return ds

    def load_mask(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 pseudo mask, 255 = ignore."""
        ds = self._get("masks", image_id)
        try:
            mask = ds[()]
        except _H5_ERRORS as e:
            raise self._damaged(e, image_id) from None
        if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8 or mask.ndim != 2 or 0 in mask.shape:
            raise DataError(f"mask of {image_id} in {self.path} is {getattr(mask, 'dtype', type(mask).__name__)} "
                            f"{getattr(mask, 'shape', '')}, not a (H, W) uint8 mask; export it again")
        return mask

    def load_cam(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(cam (k, H, W) float32 in [0, 1], keys (k,) int64)``; keys are the channels' class indices 1..K-1."""
        ds = self._get("cams", image_id)
        try:
            cam = ds[()]
            keys = np.asarray(ds.attrs["keys"])
        except _H5_ERRORS as e:
            raise self._damaged(e, image_id) from None
        if (not isinstance(cam, np.ndarray) or cam.dtype.kind != "f" or cam.ndim != 3 or keys.ndim != 1
                or keys.dtype.kind not in "iu" or keys.shape[0] != cam.shape[0]):
            raise DataError(f"CAM of {image_id} in {self.path} is {getattr(cam, 'dtype', '?')} "
                            f"{getattr(cam, 'shape', '?')} with keys {keys.dtype} {keys.shape}, not (k, H, W) floats "
                            "with k class keys; export it again")
        return cam.astype(np.float32), keys.astype(np.int64)


class PseudoLabels(Dataset):
    """Images of an exported split with their pseudo masks (and optionally CAMs); see :func:`open_pseudo_labels`.

    Items: ``(image, mask)``, or ``(image, mask, cam, keys)`` with ``with_cams``; image (3, H, W) uint8, mask (H, W)
    int64 (255 = ignore), cam (k, H, W) float32, keys (k,) int64. ``transform(*item)`` (if given) receives the
    tuple and its return value is the item. Attributes: ``ids``, ``class_names``, ``num_classes``, ``attrs``.
    """

    def __init__(self, masks: ArtifactFile | Path, reader, ids: list[str], attrs: dict[str, Any], *,
                 with_cams: bool = False, transform: Callable[..., Any] | None = None) -> None:
        self._masks = masks
        #: where the masks come from, for messages
        self.source_name = masks.name if isinstance(masks, ArtifactFile) else str(masks)
        self.reader = reader
        self.ids = ids
        self.attrs = attrs
        self.class_names = list(attrs.get("class_names") or reader.class_names)
        self.num_classes = int(attrs.get("num_classes") or reader.num_classes)
        self.ignore_index = int(attrs.get("ignore_index", 255))
        self.with_cams = with_cams
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def _load_mask(self, image_id: str) -> np.ndarray:
        if isinstance(self._masks, ArtifactFile):
            return self._masks.load_mask(image_id)
        path = self._masks / f"{image_id}.png"
        with decode_image(path, "pseudo mask", "Export it again") as img:
            mode = img.mode
            mask = np.array(img)
        if mode not in ("P", "L", "I", "I;16") or mask.ndim != 2:
            raise DataError(f"pseudo mask {path} of {image_id} has mode {mode}; pseudo masks are palette 'P' PNGs "
                            "of class indices: export it again")
        return mask

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        image = self.reader.load_image(image_id)
        mask = self._load_mask(image_id)
        if mask.shape != image.shape[:2]:
            raise DataError(f"pseudo mask of {image_id} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                            f"{self.reader.image_path(image_id)} is {image.shape[1]}x{image.shape[0]}; the artifact "
                            "was exported from another copy of the dataset (pass data_root=...)")
        valid = ((mask >= 0) & (mask < self.num_classes)) | (mask == self.ignore_index)
        if not valid.all():
            bad = np.unique(mask[~valid])
            raise DataError(f"pseudo mask of {image_id} in {self.source_name} has values {bad.tolist()[:8]} outside "
                            f"0..{self.num_classes - 1} and {self.ignore_index}; export it again")
        item: tuple = (torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask.astype(np.int64)))
        if self.with_cams:
            cam, keys = self._masks.load_cam(image_id)  # type: ignore[union-attr]
            item += (torch.from_numpy(cam), torch.from_numpy(keys))
        return self.transform(*item) if self.transform is not None else item


def _check_attrs(attrs: dict[str, Any], where: str | Path) -> None:
    """Refuse recorded settings of the wrong type (a damaged or hand-edited file), naming the file and the key;
    the dataset reader built from them would otherwise fail with a bare TypeError."""
    expect: dict[str, tuple[type, ...]] = {
        "split": (str,), "dataset_root": (str,), "layout": (str,), "num_classes": (int,), "ignore_index": (int,),
        "class_names": (list,),
    }
    for key, types in expect.items():
        value = attrs.get(key)
        bad = value is not None and (not isinstance(value, types) or isinstance(value, bool))
        if not bad and key == "class_names" and value is not None:
            bad = not all(isinstance(v, str) for v in value)
        if bad:
            raise DataError(f"{where} records {key} = {value!r} ({type(value).__name__}), not a valid "
                            f"{types[0].__name__}; the file is damaged: export it again")


def _find_split(art: Path) -> str:
    splits = exported_splits(art)
    if len(splits) != 1:
        raise ConfigError(f"{art} holds splits {splits or 'none'}; pass split=... (one of them)"
                          if splits else f"{art} holds no cams_<split>.h5 or masks_<split>/; run seco export-masks")
    return splits[0]


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
        path: the artifact folder (``ART``) or its ``cams_<split>.h5``. Masks come from the HDF5 file when there
            is one, else from ``masks_<split>/``.
        split: which split of ``ART``; may be omitted when it holds only one.
        data_root: where the images are (default: the dataset root recorded at export).
        with_cams: also return the CAMs and their class keys (needs the HDF5 file).
        transform: called as ``transform(image, mask[, cam, keys])``; its result is the item.

    Raises:
        ConfigError: ``split`` is ambiguous, or CAMs are asked of a PNG-only export.
        DataError: missing artifact, images or ids (names them).
    """
    path = Path(path)
    if path.suffix == ".h5":
        art, source = path.parent, ArtifactFile(path)
        _check_attrs(source.attrs, path)
        if not split and not source.attrs.get("split"):
            raise DataError(f"{path} does not record its split; pass split=...")
        split = split or str(source.attrs["split"])
    else:
        art = path
        if not art.is_dir():
            raise DataError(f"artifact folder {art} not found; run seco export-masks --out {art}")
        split = split or _find_split(art)
        h5 = h5_path(art, split)
        source = ArtifactFile(h5) if h5.is_file() else masks_dir(art, split)
    if isinstance(source, ArtifactFile):
        attrs, exported = source.attrs, source.ids()
        _check_attrs(attrs, source.path)
    else:
        if with_cams:
            raise ConfigError(f"{art} has no cams_{split}.h5 (exported with --format png): CAMs are not available")
        if not source.is_dir():
            raise DataError(f"{art} holds neither cams_{split}.h5 nor masks_{split}/; run seco export-masks "
                            f"--split {split} --out {art}")
        attrs = read_manifest(art, split) or {}
        _check_attrs(attrs, manifest_path(art, split))
        exported = {p.stem for p in source.glob("*.png")}
    root = data_root or attrs.get("dataset_root")
    if root is None:
        raise ConfigError(f"{art} does not record where the images are; pass data_root=...")
    reader = build_reader(attrs.get("layout") or "voc", root, split, num_classes=attrs.get("num_classes"),
                          class_names=attrs.get("class_names"), require_tags=False)
    ids = [i for i in reader.ids if i in exported]
    if not ids:
        raise DataError(f"no image of split {split!r} in {reader.split_file} has a pseudo mask in {art}")
    return PseudoLabels(source, reader, ids, attrs, with_cams=with_cams, transform=transform)
