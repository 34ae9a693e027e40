"""The crash-safe, resumable writer of one split's artifacts (see the package docstring)."""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import threading
import zlib
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from ..data.images import check_image_id
from ..errors import ConfigError, DataError
from ..io import atomic_path, atomic_write_text, folder_lock, remove_stale_temps
from ..runtime.distributed import barrier
from .confidence import MaskConfidence, read_confidence, write_confidence
from .encoding import attr_value, gzip_chunk, now_iso
from .layout import (
    FORMAT_VERSION,
    GZIP_LEVEL,
    coco_path,
    confidence_path,
    export_report_path,
    h5_path,
    hand_label_paths,
    hf_dataset_dir,
    lock_name,
    manifest_path,
    masks_dir,
    parts_dir,
    read_manifest,
    save_mask_png,
    segment_report_path,
    settings_changes,
    write_classes_json,
)
from .reader import ArtifactFile

#: the suffix of an image's confidence part, ``.parts_<split>/<id>.confidence.json``
_CONFIDENCE_PART = ".confidence.json"


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
        self.parts = parts_dir(out_dir, split)
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
            for path in (self.h5, manifest_path(self.out_dir, self.split), coco_path(self.out_dir, self.split),
                         *hand_label_paths(self.out_dir, self.split), confidence_path(self.out_dir, self.split)):
                path.unlink(missing_ok=True)
            for folder in (self.parts, self.masks, hf_dataset_dir(self.out_dir, self.split)):
                shutil.rmtree(folder, ignore_errors=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # A killed run's temp files (up to a whole HDF5 file): only this split's names, since other splits may be
        # under way in the same folder; the parts and masks folders are this split's alone.
        remove_stale_temps(self.out_dir, [path.name for path in (
            self.h5, manifest_path(self.out_dir, self.split), export_report_path(self.out_dir, self.split),
            segment_report_path(self.out_dir, self.split), coco_path(self.out_dir, self.split),
            *hand_label_paths(self.out_dir, self.split), confidence_path(self.out_dir, self.split))])
        remove_stale_temps(self.parts)
        remove_stale_temps(self.masks)
        # the parts hold the h5 images and every image's confidence until finalize
        self.parts.mkdir(exist_ok=True)
        if "png" in self.formats:
            self.masks.mkdir(exist_ok=True)
        previous = read_manifest(self.out_dir, self.split) or {}
        # the export's first start, kept across resumed runs; SOURCE_DATE_EPOCH pins it (reproducible builds)
        created = previous.get("created") or now_iso()
        self.attrs["created"] = created
        atomic_write_text(manifest_path(self.out_dir, self.split), json.dumps(self.attrs, indent=2, sort_keys=True) + "\n")
        if self.attrs.get("class_names"):  # what the mask values and palette colours mean, for any consumer
            write_classes_json(self.out_dir, self.attrs["class_names"])

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
    def add(self, image_id: str, cam: np.ndarray, keys: np.ndarray, mask: np.ndarray,
            confidence: MaskConfidence | None = None) -> None:
        """Queue one image: ``cam`` (k, H, W) float in [0, 1], ``keys`` (k,) class indices 1..K-1 of its channels,
        ``mask`` (H, W) uint8 with 255 = ignore, and optionally the mask's ``confidence`` (stored as ``/masks/<id>``
        attributes and in ``confidence_<split>.json``). Blocks while the queue is full; re-raises a writer
        failure."""
        self._raise_pending()
        # readers already refuse such ids in split lists; checked again here because this is where files are
        # named, whatever the caller (defence in depth)
        check_image_id(image_id, fix="or rename the image")
        cam = np.asarray(cam)
        if cam.ndim != 3 or cam.shape[0] != len(keys) or cam.shape[1:] != mask.shape:
            raise ValueError(f"{image_id}: cam {cam.shape}, keys {len(keys)} and mask {mask.shape} disagree")
        self._queue.put((image_id, cam.astype(np.float16), np.asarray(keys, dtype=np.int64),
                         np.asarray(mask, dtype=np.uint8), confidence))

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

    def _write(self, image_id: str, cam: np.ndarray, keys: np.ndarray, mask: np.ndarray,
               confidence: MaskConfidence | None) -> None:
        # confidence first, h5 part second, PNG last: an id counts as done only once every requested file exists,
        # and then its score is on disk too
        if confidence is not None:
            atomic_write_text(self.parts / f"{image_id}{_CONFIDENCE_PART}", json.dumps(confidence.to_json()))
        if "h5" in self.formats:
            part = {
                "cam": np.frombuffer(gzip_chunk(cam, shuffle=True), dtype=np.uint8) if cam.size else np.zeros(0, np.uint8),
                "cam_shape": np.asarray(cam.shape, dtype=np.int64),
                "keys": keys,
                "mask": np.frombuffer(gzip_chunk(mask, shuffle=False), dtype=np.uint8),
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
        # the HDF5 file first, the confidence file second, the parts deleted last: a crash in between leaves
        # parts that the next run assembles again
        scores = self._confidence_parts()
        if "h5" in self.formats:
            self._assemble_h5(scores)
        if scores:
            merged = {**(read_confidence(self.out_dir, self.split) or {}), **scores}
            write_confidence(self.out_dir, self.split, merged, str(self.attrs.get("confidence_score", "")))
        shutil.rmtree(self.parts, ignore_errors=True)

    def _confidence_parts(self) -> dict[str, MaskConfidence]:
        found = {}
        for path in sorted(self.parts.glob(f"*{_CONFIDENCE_PART}")) if self.parts.is_dir() else ():
            try:
                found[path.name[: -len(_CONFIDENCE_PART)]] = MaskConfidence.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise DataError(f"part file {path} is unreadable ({e}); delete it and export again") from None
        return found

    def _assemble_h5(self, scores: dict[str, MaskConfidence]) -> None:
        parts = {p.stem: p for p in self.parts.glob("*.npz")} if self.parts.is_dir() else {}
        if not parts and self.h5.is_file():
            return
        old = h5py.File(self.h5, "r") if self.h5.is_file() else None
        try:
            ids = sorted(set(parts) | (set(old["masks"].keys()) if old is not None else set()))
            with atomic_path(self.h5) as tmp, h5py.File(tmp, "w") as f:
                for k, v in self.attrs.items():
                    if v is not None:  # HDF5 has no null: an unknown value is an absent attribute
                        f.attrs[k] = attr_value(v)
                cams, masks = f.create_group("cams"), f.create_group("masks")
                for image_id in ids:
                    if image_id in parts:
                        self._write_part(cams, masks, image_id, parts[image_id], scores.get(image_id))
                    else:  # copies the stored (compressed) chunks and the attributes
                        old.copy(old["cams"][image_id], cams, name=image_id)
                        old.copy(old["masks"][image_id], masks, name=image_id)
        finally:
            if old is not None:
                old.close()

    @staticmethod
    def _write_part(cams: h5py.Group, masks: h5py.Group, image_id: str, path: Path,
                    confidence: MaskConfidence | None) -> None:
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
        if confidence is not None:
            for k, v in confidence.to_attrs().items():
                ms.attrs[k] = v

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


