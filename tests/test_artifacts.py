"""The artifact format: HDF5 schema, crash-safe writer, resume, and the Dataset reader other projects use."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from seco_labels.artifacts import (
    FORMAT_VERSION,
    GZIP_LEVEL,
    ArtifactFile,
    ArtifactWriter,
    open_pseudo_labels,
)
from seco_labels.data import build_reader
from seco_labels.data.classes import VOC_CLASSES, voc_palette
from seco_labels.errors import ConfigError, DataError


def _attrs(voc_root, **extra):
    return {"dataset_root": str(voc_root), "layout": "voc", "class_names": list(VOC_CLASSES), "num_classes": 21,
            "ignore_index": 255, "scales": [1.0, 0.5], "flip": True, "high_thre": 0.7, "low_thre": 0.25,
            "config": {"model": {"backbone": "vit_tiny_patch16_224"}}, **extra}


def _fake_outputs(reader, image_id, seed=0):
    """A CAM over the image's tagged classes and a mask of those classes with an ignore band (real sizes)."""
    h, w = reader.image_size(image_id)
    keys = np.nonzero(reader.tags(image_id))[0] + 1
    rng = np.random.default_rng(seed)
    cam = rng.random((len(keys), h, w), dtype=np.float32)
    mask = np.where(cam.max(0) > 0.5, keys[cam.argmax(0)], 0).astype(np.uint8)
    mask[: h // 10] = 255
    return cam, keys, mask


@pytest.fixture
def reader(voc_root):
    return build_reader("voc", voc_root, "val")


def test_h5_schema_and_png_palette(reader, voc_root, tmp_path):
    ids = reader.ids[:3]
    expected = {i: _fake_outputs(reader, i, n) for n, i in enumerate(ids)}
    with ArtifactWriter(tmp_path, "val", _attrs(voc_root)) as w:
        assert w.done_ids() == set()
        for i in ids:
            w.add(i, *expected[i])
    assert not (tmp_path / ".parts_val").exists()  # assembled into the HDF5 file, parts removed
    with h5py.File(tmp_path / "cams_val.h5") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION and f.attrs["split"] == "val"
        assert f.attrs["num_classes"] == 21 and f.attrs["ignore_index"] == 255
        assert [n.decode() if isinstance(n, bytes) else n for n in f.attrs["class_names"]] == list(VOC_CLASSES)
        assert json.loads(f.attrs["config"]) == {"model": {"backbone": "vit_tiny_patch16_224"}}
        assert "created" in f.attrs
        assert sorted(f["cams"].keys()) == sorted(ids) == sorted(f["masks"].keys())
        for i in ids:
            cam, keys, mask = expected[i]
            ds = f["cams"][i]
            assert ds.dtype == np.float16 and ds.shape == cam.shape and ds.chunks == cam.shape
            assert ds.compression == "gzip" and ds.compression_opts == GZIP_LEVEL and ds.shuffle
            np.testing.assert_array_equal(ds.attrs["keys"], keys)
            np.testing.assert_array_equal(ds.attrs["size"], mask.shape)
            np.testing.assert_array_equal(ds[()], cam.astype(np.float16))  # written as raw chunks, read by HDF5
            m = f["masks"][i]
            assert m.dtype == np.uint8 and m.compression == "gzip"
            np.testing.assert_array_equal(m[()], mask)
            png = Image.open(tmp_path / "masks_val" / f"{i}.png")
            assert png.mode == "P" and png.getpalette()[:63] == voc_palette()[:63]
            np.testing.assert_array_equal(np.asarray(png), mask)
    manifest = json.loads((tmp_path / "manifest_val.json").read_text())
    assert manifest["scales"] == [1.0, 0.5] and manifest["created"] == ArtifactFile(tmp_path / "cams_val.h5").attrs["created"]


def test_resume_merges_earlier_file_and_parts(reader, voc_root, tmp_path):
    ids = reader.ids[:4]
    out = {i: _fake_outputs(reader, i, n) for n, i in enumerate(ids)}
    with ArtifactWriter(tmp_path, "val", _attrs(voc_root)) as w:
        for i in ids[:2]:
            w.add(i, *out[i])
    # a second run is "killed": its images reach the part files but the HDF5 file is never assembled
    w = ArtifactWriter(tmp_path, "val", _attrs(voc_root))
    assert w.done_ids() == set(ids[:2])
    w.add(ids[2], *out[ids[2]])
    w.close()
    assert ArtifactFile(tmp_path / "cams_val.h5").ids() == set(ids[:2])  # the good file is untouched
    w = ArtifactWriter(tmp_path, "val", _attrs(voc_root))
    assert w.done_ids() == set(ids[:3])
    w.add(ids[3], *out[ids[3]])
    w.finalize()
    art = ArtifactFile(tmp_path / "cams_val.h5")
    assert art.ids() == set(ids)
    for i in ids:
        cam, keys = art.load_cam(i)
        np.testing.assert_array_equal(cam, out[i][0].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(keys, out[i][1])
        np.testing.assert_array_equal(art.load_mask(i), out[i][2])


def test_mask_shapes_read_the_headers_of_held_ids_and_the_file_closes_with_its_block(reader, voc_root, tmp_path):
    ids = reader.ids[:2]
    with ArtifactWriter(tmp_path, "val", _attrs(voc_root)) as w:
        for n, i in enumerate(ids):
            w.add(i, *_fake_outputs(reader, i, n))
    with ArtifactFile(tmp_path / "cams_val.h5") as art:
        assert art.mask_shapes([*ids, "not_exported"]) == {i: reader.image_size(i) for i in ids}
    assert art._file is None  # closed; a later call opens it again
    assert art.mask_shapes(ids[:1]) == {ids[0]: reader.image_size(ids[0])}


def test_png_only_then_h5_redoes_missing_cams(reader, voc_root, tmp_path):
    i = reader.ids[0]
    with ArtifactWriter(tmp_path, "val", _attrs(voc_root), formats=("png",)) as w:
        w.add(i, *_fake_outputs(reader, i))
    assert not (tmp_path / "cams_val.h5").exists()
    w = ArtifactWriter(tmp_path, "val", _attrs(voc_root), formats=("h5", "png"))
    assert w.done_ids() == set()  # the PNG is there but its CAM is not
    w.close()
    assert ArtifactWriter(tmp_path, "val", _attrs(voc_root), formats=("png",)).done_ids() == {i}


def test_other_settings_are_refused_unless_overwrite(reader, voc_root, tmp_path):
    i = reader.ids[0]
    with ArtifactWriter(tmp_path, "val", _attrs(voc_root)) as w:
        w.add(i, *_fake_outputs(reader, i))
    with pytest.raises(ConfigError, match=r"other settings .*scales: \[1.0, 0.5\] -> \[1.0\].*--overwrite"):
        ArtifactWriter(tmp_path, "val", _attrs(voc_root, scales=[1.0]))
    w = ArtifactWriter(tmp_path, "val", _attrs(voc_root, scales=[1.0]), overwrite=True)
    assert w.done_ids() == set() and not (tmp_path / "cams_val.h5").exists()
    w.finalize()


def test_writer_errors_name_the_id(reader, voc_root, tmp_path):
    i = reader.ids[0]
    cam, keys, mask = _fake_outputs(reader, i)
    w = ArtifactWriter(tmp_path, "val", _attrs(voc_root))
    with pytest.raises(ValueError, match=f"{i}: cam"):
        w.add(i, cam[:, :-1], keys, mask)
    with pytest.raises(DataError, match="must not contain '/'"):
        w.add("a/b", cam, keys, mask)
    w.close()


def test_reader_errors(tmp_path):
    with pytest.raises(DataError, match="not found; run seco export-masks"):
        ArtifactFile(tmp_path / "cams_val.h5").ids()
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="junk.h5 is unreadable or truncated"):
        ArtifactFile(tmp_path / "junk.h5")
    with pytest.raises(ConfigError, match="holds no cams_<split>.h5"):
        open_pseudo_labels(tmp_path)


def test_open_pseudo_labels_in_dataloader_workers(reader, voc_root, tmp_path):
    ids = reader.ids[:4]
    out = {i: _fake_outputs(reader, i, n) for n, i in enumerate(ids)}
    with ArtifactWriter(tmp_path, "val", _attrs(voc_root)) as w:
        for i in ids:
            w.add(i, *out[i])
    ds = open_pseudo_labels(tmp_path)  # the only split: no split= needed
    assert ds.ids == ids and len(ds) == 4 and ds.num_classes == 21 and ds.class_names[15] == "person"
    image, mask = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, *out[ids[1]][2].shape)
    assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(out[ids[1]][2].astype(np.int64)))

    def crop(image, mask, cam, keys):  # what another project's joint transform looks like
        return image[:, :64, :64].float() / 255, mask[:64, :64], cam[:, :64, :64], keys

    ds = open_pseudo_labels(tmp_path / "cams_val.h5", with_cams=True, transform=crop)
    batches = list(DataLoader(ds, batch_size=2, num_workers=2, collate_fn=list))
    items = [it for b in batches for it in b]
    assert len(items) == 4
    for (image, mask, cam, keys), i in zip(items, ids):
        assert image.shape == (3, 64, 64) and image.max() <= 1
        np.testing.assert_array_equal(keys.numpy(), out[i][1])
        np.testing.assert_array_equal(mask.numpy(), out[i][2][:64, :64])
        np.testing.assert_allclose(cam.numpy(), out[i][0][:, :64, :64], atol=1e-3)  # float16 storage


def test_png_only_export_reads_and_refuses_cams(reader, voc_root, tmp_path):
    i = reader.ids[0]
    cam, keys, mask = _fake_outputs(reader, i)
    with ArtifactWriter(tmp_path, "val", _attrs(voc_root), formats=("png",)) as w:
        w.add(i, cam, keys, mask)
    ds = open_pseudo_labels(tmp_path, "val")
    assert ds.ids == [i] and torch.equal(ds[0][1], torch.from_numpy(mask.astype(np.int64)))
    with pytest.raises(ConfigError, match="exported with --format png"):
        open_pseudo_labels(tmp_path, "val", with_cams=True)


def test_outputs_get_the_usual_file_permissions(reader, voc_root, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        i = reader.ids[0]
        with ArtifactWriter(tmp_path, "val", _attrs(voc_root)) as w:
            w.add(i, *_fake_outputs(reader, i))
    finally:
        os.umask(old)
    for path in (tmp_path / "cams_val.h5", tmp_path / "masks_val" / f"{i}.png", tmp_path / "manifest_val.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path  # readable by others, like any written file


def test_attributes_added_later_do_not_block_a_resume(reader, voc_root, tmp_path):
    i = reader.ids[0]
    w = ArtifactWriter(tmp_path, "val", _attrs(voc_root))
    w.add(i, *_fake_outputs(reader, i))
    w.close()
    manifest = json.loads((tmp_path / "manifest_val.json").read_text())
    del manifest["scales"]  # as written by a version that did not record it
    (tmp_path / "manifest_val.json").write_text(json.dumps(manifest))
    assert ArtifactWriter(tmp_path, "val", _attrs(voc_root)).done_ids() == {i}


def test_exported_splits_and_the_file_names_of_a_split(tmp_path):
    """One module spells an artifact folder's names: the splits are read back from the same patterns."""
    from seco_labels.artifacts import (export_report_path, exported_splits, h5_path, manifest_path, masks_dir,
                                       segment_report_path)

    assert exported_splits(tmp_path) == []
    h5_path(tmp_path, "train").write_bytes(b"")
    masks_dir(tmp_path, "val").mkdir()
    masks_dir(tmp_path, "x").with_suffix(".png").write_bytes(b"")  # a file, not a masks folder
    (tmp_path / "masks_stray.txt").write_text("")
    assert exported_splits(tmp_path) == ["train", "val"]
    names = [p.name for p in (h5_path(tmp_path, "s"), masks_dir(tmp_path, "s"), manifest_path(tmp_path, "s"),
                              export_report_path(tmp_path, "s"), segment_report_path(tmp_path, "s"))]
    assert names == ["cams_s.h5", "masks_s", "manifest_s.json", "export_s.json", "segment_s.json"]


def test_open_split_finds_masks_cams_and_one_provenance_record(reader, voc_root, tmp_path):
    """The sources of a split by each way of naming it, and where its provenance is read from."""
    from seco_labels.artifacts import PngMaskFolder, h5_path, manifest_path, masks_dir, open_split

    ids = reader.ids[:2]
    out = {i: _fake_outputs(reader, i, n) for n, i in enumerate(ids)}
    with ArtifactWriter(tmp_path, "val", _attrs(voc_root)) as w:
        for i in ids:
            w.add(i, *out[i])
    both = open_split(tmp_path)  # the only split
    assert both.name == "val" and both.folder == tmp_path
    assert isinstance(both.masks, ArtifactFile) and both.cams is both.masks  # the HDF5 file first
    assert both.record_file == h5_path(tmp_path, "val") and both.dataset.num_classes == 21
    assert both.dataset.class_names == VOC_CLASSES and both.ids() == set(ids)
    assert both.masks.mask_shapes(reader.ids) == {i: out[i][2].shape for i in ids}
    # the PNG folder by its path: its masks, the CAMs of the HDF5 file beside it, the same record
    pngs = open_split(masks_dir(tmp_path, "val"), "val")
    assert isinstance(pngs.masks, PngMaskFolder) and isinstance(pngs.cams, ArtifactFile)
    assert pngs.folder == tmp_path and pngs.masks.mask_shapes(reader.ids) == {i: out[i][2].shape for i in ids}
    np.testing.assert_array_equal(pngs.masks.load_mask(ids[1]), both.masks.load_mask(ids[1]))
    # PNG only: the manifest is the record; CAMs are refused
    h5_path(tmp_path, "val").unlink()
    png_only = open_split(tmp_path, "val")
    assert png_only.cams is None and png_only.record_file == manifest_path(tmp_path, "val")
    assert png_only.dataset.root == str(voc_root)
    with pytest.raises(ConfigError, match="has no cams_val.h5 .*--format h5"):
        png_only.require_cams()
    # a damaged record is named
    manifest = json.loads(manifest_path(tmp_path, "val").read_text())
    manifest_path(tmp_path, "val").write_text(json.dumps({**manifest, "num_classes": "21"}))
    with pytest.raises(DataError, match=r"manifest_val\.json records num_classes = '21'"):
        open_split(tmp_path, "val").dataset


def test_open_split_of_a_bare_png_folder_reads_a_run_config(reader, voc_root, tmp_path):
    from seco_labels.artifacts import ExportedDataset, open_split

    folder = tmp_path / "preds"
    folder.mkdir()
    i = reader.ids[0]
    Image.fromarray(_fake_outputs(reader, i)[2]).save(folder / f"{i}.png")
    bare = open_split(folder, "val")
    assert bare.record == {} and bare.dataset == ExportedDataset() and bare.ids() == {i}
    with pytest.raises(ConfigError, match="does not record where the images of split 'val' are; pass --data-root"):
        bare.open_images(root_option="--data-root")
    assert bare.open_images(root=voc_root).ids == reader.ids
    (folder / "config.yaml").write_text(f"data:\n  root: {voc_root}\n  layout: voc\n  num_classes: 21\n")
    recorded = open_split(folder, "val").dataset
    assert recorded == ExportedDataset(str(voc_root), "voc", 21, None)
    # another layout drops the recorded classes; a given class count replaces them
    assert recorded.resolve(layout="coco") == ExportedDataset(str(voc_root), "coco", None, None)
    assert recorded.resolve(num_classes=5).num_classes == 5 and recorded.resolve().num_classes == 21
    with pytest.raises(DataError, match=r"no predictions for split 'train' in .*: expected .*masks_train/"):
        open_split(tmp_path, "train")
    with pytest.raises(ConfigError, match="nope not found"):
        open_split(tmp_path / "nope", "val")
