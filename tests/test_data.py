"""Data readers, training views and Datasets, on the real images bundled in the repository and broken copies of them."""

from __future__ import annotations

import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seco_labels.data import (
    COCO_CLASSES,
    VOC_CLASSES,
    EvalDataset,
    TrainDataset,
    TrainViews,
    build_reader,
    collate_eval,
    colour_jitter,
    denormalize,
    load_tags_file,
    normalize,
    random_crop_with_box,
    random_gaussian_blur,
    random_grayscale,
    random_hflip,
    random_rescale,
    random_resized_crop,
    random_solarize,
    tags_from_mask,
    voc_palette,
)
from seco_labels.errors import ConfigError, DataError

DEMO_ROOT = Path(__file__).resolve().parents[1] / "seco_labels" / "demo_data" / "voc-demo"


def _save_labels(path: Path, labels: dict[str, np.ndarray]) -> None:
    # the published format: np.save of a dict (wrapped in a 0-d object array)
    np.save(path, labels, allow_pickle=True)


def _voc_copy(src: Path, dst: Path, ids: list[str], *, labels: bool = True) -> Path:
    """A VOC-layout copy of ``ids`` of ``src`` (real files copied, so tests may damage them)."""
    (dst / "ImageSets" / "Segmentation").mkdir(parents=True)
    (dst / "JPEGImages").mkdir()
    (dst / "SegmentationClassAug").mkdir()
    for i in ids:
        shutil.copy(src / "JPEGImages" / f"{i}.jpg", dst / "JPEGImages")
        shutil.copy(src / "SegmentationClassAug" / f"{i}.png", dst / "SegmentationClassAug")
    (dst / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    if labels:
        all_tags = load_tags_file(src / "cls_labels_onehot.npy")
        _save_labels(dst / "cls_labels_onehot.npy", {i: all_tags[i] for i in ids})
    return dst


@pytest.fixture(scope="module")
def voc_train(voc_root):
    return build_reader("voc", voc_root, "train")


@pytest.fixture
def small_voc(voc_root, voc_train, tmp_path):
    return _voc_copy(voc_root, tmp_path / "voc", voc_train.ids[:6])


# -- classes ----------------------------------------------------------------------------------------------------


def test_class_lists_and_palette_match_the_real_masks(voc_train):
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    assert VOC_CLASSES[1] == "aeroplane" and VOC_CLASSES[15] == "person" and VOC_CLASSES[20] == "tvmonitor"
    assert len(COCO_CLASSES) == 81 and len(set(COCO_CLASSES)) == 81 and COCO_CLASSES[0] == "background"
    assert COCO_CLASSES[1] == "person" and COCO_CLASSES[61] == "dining table" and COCO_CLASSES[80] == "toothbrush"
    pal = voc_palette()
    assert len(pal) == 768 and pal[:6] == [0, 0, 0, 128, 0, 0] and pal[-3:] == [224, 224, 192]
    with Image.open(voc_train.mask_path(voc_train.ids[0])) as png:
        assert png.mode == "P" and png.getpalette() == pal


# -- readers on the real sets -------------------------------------------------------------------------------------


def test_voc_reader_images_masks_and_tags(voc_root, voc_train):
    assert (len(voc_train), voc_train.num_classes, voc_train.has_masks) == (32, 21, True)
    assert voc_train.class_names == list(VOC_CLASSES) and voc_train.ids[0] == "2011_000003"
    assert len(build_reader("voc", voc_root, "val")) == 12
    img = voc_train.load_image("2011_000003")
    mask = voc_train.load_mask("2011_000003")
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert mask.dtype == np.uint8 and mask.shape == img.shape[:2] == voc_train.image_size("2011_000003")
    # 'P' PNG read as palette indices (bottle 5, person 15, void 255), not as RGB colours
    assert set(np.unique(mask).tolist()) == {0, 5, 15, 255}
    for i in voc_train.ids:
        tags = voc_train.tags(i)
        assert tags.dtype == np.float32 and tags.shape == (20,)
        np.testing.assert_array_equal(tags, tags_from_mask(voc_train.load_mask(i), 21))


def test_coco_reader_converts_grey_images(coco_root):
    r = build_reader("coco", coco_root, "train")
    assert (len(r), r.num_classes, len(r.class_names)) == (14, 81, 81)
    assert r.image_path("000000000086") == coco_root / "images" / "train" / "000000000086.jpg"
    with Image.open(r.image_path("000000000086")) as raw:
        assert raw.mode == "L"
        grey = np.asarray(raw)
    img = r.load_image("000000000086")
    assert img.shape == (*grey.shape, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[..., 0], grey)
    np.testing.assert_array_equal(img[..., 2], grey)
    for i in r.ids[:20]:
        np.testing.assert_array_equal(r.tags(i), tags_from_mask(r.load_mask(i), 81))
        assert r.tags(i).shape == (80,)


def test_coco_seco_layout(coco_root, tmp_path):
    """The published COCO layout: prefixed image names, unprefixed mask names, labels keyed by image name."""
    coco = build_reader("coco", coco_root, "val")
    ids = coco.ids[:5]
    root = tmp_path / "coco-seco"
    (root / "JPEGImages" / "val").mkdir(parents=True)
    (root / "SegmentationClass" / "val").mkdir(parents=True)
    (root / "ImageSets").mkdir()
    names = [f"COCO_val2014_{i}" for i in ids]
    for i, name in zip(ids, names):
        (root / "JPEGImages" / "val" / f"{name}.jpg").symlink_to(coco.image_path(i))
        (root / "SegmentationClass" / "val" / f"{i}.png").symlink_to(coco.mask_path(i))
    (root / "ImageSets" / "val.txt").write_text("\n".join(names))
    _save_labels(root / "cls_labels_onehot.npy", {n: coco.tags(i) for i, n in zip(ids, names)})

    r = build_reader("coco-seco", root, "val", require_masks=True)
    assert r.ids == names and r.num_classes == 81 and r.has_masks
    assert r.mask_path(names[0]) == root / "SegmentationClass" / "val" / f"{ids[0]}.png"
    for i, name in zip(ids, names):
        np.testing.assert_array_equal(r.load_image(name), coco.load_image(i))
        np.testing.assert_array_equal(r.load_mask(name), coco.load_mask(i))
        np.testing.assert_array_equal(r.tags(name), coco.tags(i))
    # a list such as val_part reads from the folder the id's prefix names, as in the published code
    (root / "val_part.txt").write_text(names[1] + "\n")
    part = build_reader("coco-seco", root, "val_part")
    assert part.image_path(names[1]) == root / "JPEGImages" / "val" / f"{names[1]}.jpg"
    np.testing.assert_array_equal(part.load_mask(names[1]), coco.load_mask(ids[1]))


def test_unknown_layout_lists_valid_ones(voc_root):
    with pytest.raises(ConfigError, match="'pascal'.*coco, coco-seco, folder, voc"):
        build_reader("pascal", voc_root, "train")


def test_tags_derived_from_masks_without_labels_file(voc_root, voc_train, tmp_path):
    ids = voc_train.ids[:8]
    root = _voc_copy(voc_root, tmp_path / "voc", ids, labels=False)
    r = build_reader("voc", root, "train")
    assert r.labels_file is None
    for i in ids:
        np.testing.assert_array_equal(r.tags(i), voc_train.tags(i))
    # neither labels nor masks: nothing to derive the tags from
    (root / "SegmentationClassAug" / f"{ids[3]}.png").unlink()
    with pytest.raises(DataError, match=f"no labels file .*{ids[3]}.png"):
        build_reader("voc", root, "train")


def test_labels_loader_refuses_code(tmp_path):
    """A pickle that would call a builtin is refused before anything runs."""
    target = tmp_path / "pwned.txt"

    class Evil:
        def __reduce__(self):
            return (open, (str(target), "w"))

    path = tmp_path / "cls_labels_onehot.npy"
    path.write_bytes(pickle.dumps({"2011_000003": Evil()}))
    with pytest.raises(DataError, match=r"cls_labels_onehot\.npy is not a pickled .*open, which a labels file never needs"):
        load_tags_file(path)
    assert not target.exists()
    # the benign published form, also as a protocol-2 pickle (bytes go through _codecs.encode)
    good = {"a": np.array([0, 1, 0], np.float32)}
    path.write_bytes(pickle.dumps(np.array(good, dtype=object), protocol=2))
    np.testing.assert_array_equal(load_tags_file(path)["a"], good["a"])


# -- readers on broken copies -------------------------------------------------------------------------------------


def test_missing_or_empty_split(small_voc):
    with pytest.raises(DataError, match=r"val\.txt not found for split 'val'.*train\.txt"):
        build_reader("voc", small_voc, "val")
    (small_voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"split 'val' is empty .*val\.txt"):
        build_reader("voc", small_voc, "val")


def test_missing_image_and_mask_named_at_construction(small_voc, voc_train):
    split_file = small_voc / "ImageSets" / "Segmentation" / "train.txt"
    gone = voc_train.ids[2]
    (small_voc / "SegmentationClassAug" / f"{gone}.png").unlink()
    assert not build_reader("voc", small_voc, "train").has_masks  # masks are optional for training
    with pytest.raises(DataError, match=re.escape(f"{gone}.png (listed in {split_file}) not found; check --data-root")):
        build_reader("voc", small_voc, "train", require_masks=True)
    (small_voc / "JPEGImages" / f"{gone}.jpg").unlink()
    with pytest.raises(DataError, match=re.escape(f"{gone}.jpg (listed in {split_file}) not found; check --data-root")):
        build_reader("voc", small_voc, "train")


def test_truncated_jpeg_named_on_load(small_voc, voc_train):
    bad = voc_train.ids[1]
    path = small_voc / "JPEGImages" / f"{bad}.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    r = build_reader("voc", small_voc, "train")  # presence is all construction checks
    np.testing.assert_array_equal(r.load_image(voc_train.ids[0]), voc_train.load_image(voc_train.ids[0]))
    with pytest.raises(DataError, match=f"{bad}.jpg is unreadable; it may be corrupt or truncated.*Re-copy"):
        r.load_image(bad)


def test_mask_of_wrong_size(small_voc, voc_train):
    bad = voc_train.ids[0]
    path = small_voc / "SegmentationClassAug" / f"{bad}.png"
    with Image.open(path) as m:
        w, h = m.size
        m.resize((w // 2, h // 2), Image.NEAREST).save(path)
    r = build_reader("voc", small_voc, "train")
    with pytest.raises(DataError, match=f"mask of {bad} is {w // 2}x{h // 2} \\(WxH\\) but its image is {w}x{h}"):
        r.load_mask(bad)


def test_mask_values_outside_the_classes(small_voc, voc_train):
    bad = voc_train.ids[0]
    path = small_voc / "SegmentationClassAug" / f"{bad}.png"
    with Image.open(path) as m:
        arr = np.asarray(m).copy()
        palette = m.getpalette()
    arr[:5, :5] = 30
    out = Image.fromarray(arr, mode="P")
    out.putpalette(palette)
    out.save(path)
    r = build_reader("voc", small_voc, "train")
    with pytest.raises(DataError, match=f"{bad}.png of {bad} has values \\[30\\] outside 0..20 and 255; .*palette"):
        r.load_mask(bad)


def test_label_file_errors(small_voc, voc_train):
    ids = voc_train.ids[:6]
    tags = load_tags_file(small_voc / "cls_labels_onehot.npy")
    wrong = dict(tags, **{ids[4]: tags[ids[4]][:19]})
    _save_labels(small_voc / "cls_labels_onehot.npy", wrong)
    with pytest.raises(DataError, match=f"{ids[4]} in .*cls_labels_onehot.npy has length 19, expected .* = 20"):
        build_reader("voc", small_voc, "train")

    _save_labels(small_voc / "cls_labels_onehot.npy", {i: tags[i] for i in ids[:1]})
    with pytest.raises(DataError, match=f"5 id\\(s\\) of split 'train' are missing from .*: {', '.join(ids[1:6])}"):
        build_reader("voc", small_voc, "train")

    _save_labels(small_voc / "cls_labels_onehot.npy", tags)
    with pytest.raises(DataError, match="expected num_classes - 1 = 21; the file implies num_classes = 21"):
        build_reader("voc", small_voc, "train", num_classes=22)


def test_grey_rgba_and_cmyk_images_become_rgb(small_voc, voc_train):
    ids = voc_train.ids[:3]
    for i, mode in zip(ids, ("L", "RGBA", "CMYK")):
        with Image.open(small_voc / "JPEGImages" / f"{i}.jpg") as im:
            # PNG bytes under a .jpg name: PIL goes by content, and PNG keeps RGBA lossless
            im.convert(mode).save(small_voc / "JPEGImages" / f"{i}.jpg", format="PNG" if mode == "RGBA" else "JPEG")
    r = build_reader("voc", small_voc, "train")
    for i in ids:
        img = r.load_image(i)
        assert img.dtype == np.uint8 and img.shape == (*r.image_size(i), 3)
    grey = r.load_image(ids[0])
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    np.testing.assert_array_equal(r.load_image(ids[1]), voc_train.load_image(ids[1]))


# -- transforms ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo(voc_train) -> np.ndarray:
    return voc_train.load_image("2011_000003")


def test_normalize_round_trip(photo):
    x = normalize(photo)
    assert x.shape == (3, *photo.shape[:2]) and x.dtype == torch.float32
    torch.testing.assert_close(x, normalize(photo.astype(np.float64)))
    torch.testing.assert_close(x[0, 0, 0], torch.tensor((photo[0, 0, 0] / 255 - 0.485) / 0.229, dtype=torch.float32))
    back = denormalize(x[None])
    assert back.shape == (1, 3, *photo.shape[:2])
    torch.testing.assert_close(back[0].permute(1, 2, 0), torch.tensor(photo, dtype=torch.float32), atol=1e-3, rtol=0)


def test_rescale_and_flip(photo):
    h, w = photo.shape[:2]
    out = random_rescale(photo, (0.5, 0.5), np.random.default_rng(0))
    assert out.shape == (int(0.5 * h), int(0.5 * w), 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(random_hflip(photo, np.random.default_rng(0), p=1.0), photo[:, ::-1])
    assert random_hflip(photo, np.random.default_rng(0), p=0.0) is photo


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.5])
def test_crop_box_marks_the_image_pixels(photo, scale):
    img = random_rescale(photo, (scale, scale), np.random.default_rng(0))  # 500x375 -> both, one, no side < 448
    h, w = img.shape[:2]
    s = 448
    for seed in range(4):
        crop, box = random_crop_with_box(img, s, np.random.default_rng(seed))
        h0, h1, w0, w1 = box.tolist()
        assert crop.shape == (s, s, 3) and crop.dtype == np.uint8 and box.dtype == np.int64
        assert (h1 - h0, w1 - w0) == (min(h, s), min(w, s))
        outside = np.ones((s, s), bool)
        outside[h0:h1, w0:w1] = False
        assert (crop[outside] == 0).all()
        inside = crop[h0:h1, w0:w1]
        if h <= s and w <= s:
            np.testing.assert_array_equal(inside, img)
        else:  # a window of the image: locate it by its first row, then compare all of it
            ch, cw = inside.shape[:2]
            at = [(y, x) for y in range(h - ch + 1) for x in range(w - cw + 1)
                  if np.array_equal(img[y, x : x + cw], inside[0])]
            assert any(np.array_equal(img[y : y + ch, x : x + cw], inside) for y, x in at)


def test_photometric_ops(photo):
    pil = Image.fromarray(photo)
    rng = np.random.default_rng(0)
    assert colour_jitter(pil, rng, p=0.0) is pil
    jittered = np.asarray(colour_jitter(pil, np.random.default_rng(1), p=1.0))
    assert jittered.shape == photo.shape and not np.array_equal(jittered, photo)
    grey = np.asarray(random_grayscale(pil, rng, p=1.0))
    assert grey.shape == photo.shape and (grey[..., 0] == grey[..., 2]).all()
    sol = np.asarray(random_solarize(pil, rng, p=1.0))
    np.testing.assert_array_equal(sol, np.where(photo >= 128, 255 - photo, photo))
    blurred = np.asarray(random_gaussian_blur(pil, rng, p=1.0)).astype(float)

    def edges(a):
        return np.abs(np.diff(a, axis=1)).mean()

    assert edges(blurred) < edges(photo.astype(float))
    assert random_gaussian_blur(pil, rng, p=0.0) is pil
    rrc = random_resized_crop(pil, 64, (0.4, 1.0), np.random.default_rng(3))
    assert rrc.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(rrc), np.asarray(random_resized_crop(pil, 64, (0.4, 1.0),
                                                                                  np.random.default_rng(3))))


def test_random_resized_crop_is_torchvisions_crop_then_resize(photo):
    """The published second global view is torchvision's RandomResizedCrop: crop the box, then resize it."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resized_crop

    pil = Image.fromarray(photo)
    seed = 5
    rrc = random_resized_crop(pil, 64, (0.4, 1.0), np.random.default_rng(seed))
    rng = np.random.default_rng(seed)  # the same draws, to recover the box
    w, h = pil.size
    for _ in range(10):
        target, aspect = w * h * rng.uniform(0.4, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            break
    expected = resized_crop(pil, y, x, ch, cw, [64, 64], InterpolationMode.BICUBIC)
    np.testing.assert_array_equal(np.asarray(rrc), np.asarray(expected))


def test_train_views_ignore_global_rng(photo):
    views = TrainViews(96, (0.5, 2.0), (0.4, 1.0), strong_flip_p=0.0)
    out = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed), np.random.seed(global_seed), random.seed(global_seed)
        out.append(views(photo, np.random.default_rng(7)))
    a, b = out
    assert set(a) == {"image", "box", "global2", "strong"}
    for k in ("image", "global2", "strong"):
        assert a[k].shape == (3, 96, 96) and a[k].dtype == torch.float32
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert a["box"].dtype == torch.int64 and a["box"].shape == (4,) and torch.equal(a["box"], b["box"])
    c = views(photo, np.random.default_rng(8))
    assert not torch.equal(a["global2"], c["global2"])
    with pytest.raises(ConfigError, match="strong_flip_p"):
        TrainViews(96, strong_flip_p=1.5)


def test_train_views_flip_p_mirrors_without_moving_the_rng(photo):
    square = np.ascontiguousarray(photo[:96, :96])  # crop = image: no padding offset, so a flip is a pure mirror
    never, always = (TrainViews(96, (1.0, 1.0), (0.4, 1.0), strong_flip_p=0.0, flip_p=p)(square,
                                                                                         np.random.default_rng(3))
                     for p in (0.0, 1.0))
    torch.testing.assert_close(always["image"], never["image"].flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(always["global2"], never["global2"].flip(-1), rtol=0, atol=1e-5)  # same draws
    assert not torch.equal(always["image"], never["image"])
    with pytest.raises(ConfigError, match="data.flip_p"):
        TrainViews(96, flip_p=-0.1)


# -- datasets -----------------------------------------------------------------------------------------------------


def test_train_dataset_is_reproducible_per_seed_epoch_index(voc_train):
    views = TrainViews(64)
    ds = TrainDataset(voc_train, views, seed=3)
    again = pickle.loads(pickle.dumps(TrainDataset(voc_train, views, seed=3)))  # what a spawned worker gets
    a, b = ds[5], again[5]
    assert a["id"] == voc_train.ids[5]
    for k in ("image", "global2", "strong", "box", "tags", "label_idx"):
        assert torch.equal(a[k], b[k]), k
    ds.set_epoch(1)
    c = ds[5]
    assert not torch.equal(a["image"], c["image"]) or not torch.equal(a["global2"], c["global2"])
    assert torch.equal(c["image"], again[(1, 5)]["image"])
    other_seed = TrainDataset(voc_train, views, seed=4)[5]
    assert not torch.equal(a["global2"], other_seed["global2"])


def test_train_dataset_items_and_label_idx(voc_train):
    ds = TrainDataset(voc_train, TrainViews(64), seed=0)
    n_single = 0
    for i in range(8):
        item = ds[i]
        tags = voc_train.tags(item["id"])
        assert torch.equal(item["tags"], torch.from_numpy(tags)) and item["tags"].dtype == torch.float32
        assert item["label_idx"].dtype == torch.long and item["label_idx"].shape == ()
        if tags.sum() == 1:
            n_single += 1
            assert item["label_idx"].item() == int(tags.argmax()) + 1
        else:
            assert item["label_idx"].item() == -1
        h0, h1, w0, w1 = item["box"].tolist()
        assert 0 <= h0 < h1 <= 64 and 0 <= w0 < w1 <= 64
    assert ds[0]["label_idx"].item() == -1  # 2011_000003: bottle and person
    assert 0 < n_single < 8


def test_workers_give_the_same_batches(voc_train):
    ds = TrainDataset(voc_train, TrainViews(48), seed=0)
    ds.set_epoch(2)
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers)
        batches.append([b for _, b in zip(range(2), loader)])
    for b0, b2 in zip(*batches):
        assert b0["id"] == b2["id"]
        for k in ("image", "global2", "strong", "box"):
            assert torch.equal(b0[k], b2[k]), k


def test_eval_dataset(voc_root):
    r = build_reader("voc", voc_root, "val", require_masks=True)
    ds = EvalDataset(r)
    item = ds[0]
    h, w = r.image_size(r.ids[0])
    assert item["id"] == r.ids[0] and item["image"].shape == (3, h, w)
    assert item["mask"].dtype == torch.long and torch.equal(item["mask"], torch.from_numpy(r.load_mask(r.ids[0])).long())
    assert item["orig_size"].tolist() == [h, w] and item["orig_size"].dtype == torch.long
    torch.testing.assert_close(item["tags"], torch.from_numpy(r.tags(r.ids[0])))
    sized = EvalDataset(r, size=64)
    assert sized[0]["image"].shape == (3, 64, 64) and sized[0]["mask"].shape == (h, w)
    assert "mask" not in EvalDataset(r, with_masks=False)[0]
    batch = collate_eval([sized[0], sized[1]])
    assert batch["image"].shape == (2, 3, 64, 64) and batch["id"] == r.ids[:2]
    assert [m.shape for m in batch["mask"]] == [tuple(s) for s in batch["orig_size"].tolist()]


def test_eval_dataset_needs_masks(small_voc, voc_train):
    (small_voc / "SegmentationClassAug" / f"{voc_train.ids[1]}.png").unlink()
    r = build_reader("voc", small_voc, "train")
    with pytest.raises(DataError, match=f"{voc_train.ids[1]}.png .*evaluation needs a mask"):
        EvalDataset(r)


# -- bundled demo set ---------------------------------------------------------------------------------------------


def test_demo_data_is_a_small_consistent_voc_set():
    train = build_reader("voc", DEMO_ROOT, "train", require_masks=True)
    val = build_reader("voc", DEMO_ROOT, "val", require_masks=True)
    assert (len(train), len(val)) == (32, 12) and not set(train.ids) & set(val.ids)
    assert {"2011_000003", "2011_000006", "2011_000025", "2011_003066"} <= set(train.ids)
    tags = np.stack([train.tags(i) for i in train.ids])
    assert (tags.sum(1) == 1).sum() >= 10 and (tags.sum(0) > 0).sum() >= 15
    for r in (train, val):
        for i in r.ids:
            np.testing.assert_array_equal(r.tags(i), tags_from_mask(r.load_mask(i), 21))
    assert set(load_tags_file(DEMO_ROOT / "cls_labels_onehot.npy")) == set(train.ids) | set(val.ids)
    assert sum(p.stat().st_size for p in DEMO_ROOT.rglob("*") if p.is_file()) < 3_000_000
    assert (DEMO_ROOT / "README.md").read_text().count("GPL-3.0") >= 1


# -- 16-bit and other image modes -----------------------------------------------------------------------------------


def png_bytes(arr: np.ndarray, bit_depth: int, color_type: int, *, size: tuple[int, int] | None = None) -> bytes:
    """A PNG written by hand (PIL cannot write 16-bit RGB or grey+alpha): ``arr`` (H, W[, C]) samples,
    ``color_type`` 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA; ``size`` (W, H) overrides the header's dimensions."""
    import struct
    import zlib

    h, w = arr.shape[:2]
    samples = np.asarray(arr).astype(">u2" if bit_depth == 16 else np.uint8)
    rows = b"".join(b"\x00" + samples[i].tobytes() for i in range(h))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    width, height = size or (w, h)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_16_bit_images_keep_their_values(small_voc, voc_train):
    """16-bit grey (PNG 'I;16', TIFF 'I;16', TIFF 32-bit 'I') and 16-bit RGB / grey+alpha PNGs read as the 8-bit
    image they were scaled up from; PIL's own convert('RGB') would make every 16-bit grey pixel 255. (PIL cannot
    write 16-bit RGB PNGs: those are written by hand, see png_bytes.)"""
    ids = voc_train.ids[:6]
    rgb = voc_train.load_image(ids[0])
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    grey16 = grey.astype(np.uint16) * 257  # 0..255 -> 0..65535, as a 16-bit export of the same picture
    img16 = Image.fromarray(grey16)
    assert img16.mode == "I;16"  # Pillow >= 12 infers it (its mode= argument is deprecated)
    jpg = lambda i: small_voc / "JPEGImages" / f"{i}.jpg"  # noqa: E731 -- PIL goes by content, not the suffix
    img16.save(jpg(ids[0]), format="PNG")
    img16.save(jpg(ids[1]), format="TIFF")
    Image.fromarray(grey16.astype(np.int32)).save(jpg(ids[2]), format="TIFF")  # mode 'I'
    jpg(ids[3]).write_bytes(png_bytes(rgb.astype(np.uint16) * 257, 16, 2))
    jpg(ids[4]).write_bytes(png_bytes(np.stack([grey16, np.full_like(grey16, 65535)], -1), 16, 4))
    with Image.open(jpg(ids[0])) as a, Image.open(jpg(ids[1])) as b, Image.open(jpg(ids[2])) as c:
        assert (a.mode, b.mode, c.mode) == ("I;16", "I;16", "I")
        # the bug this guards against: PIL clips 16-bit values to 0..255, so every pixel above 0 turns white
        assert (np.asarray(a.convert("RGB"))[..., 0] == 255).mean() > 0.95
    r = build_reader("voc", small_voc, "train")
    for i in ids[:3] + ids[4:5]:
        out = r.load_image(i)
        assert out.dtype == np.uint8 and out.shape == (*grey.shape, 3)
        for c in range(3):
            assert np.abs(out[..., c].astype(int) - grey).max() <= 1, i
    out = r.load_image(ids[3])
    assert np.abs(out.astype(int) - rgb).max() <= 1

    # 32-bit 'I' beyond 16 bits is clipped, not wrapped
    big = np.array([[-5, 0, 65535, 70000, 2**31 - 1]], dtype=np.int32)
    Image.fromarray(big).save(jpg(ids[5]), format="TIFF")
    np.testing.assert_array_equal(r.load_image(ids[5])[0, :, 0], [0, 0, 255, 255, 255])


def test_float_images_are_refused_by_name(small_voc, voc_train):
    i = voc_train.ids[0]
    path = small_voc / "JPEGImages" / f"{i}.jpg"
    Image.fromarray(np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)).save(path, format="TIFF")
    r = build_reader("voc", small_voc, "train")
    with pytest.raises(DataError, match=re.escape(f"image {path} has 32-bit float pixels (mode F)")):
        r.load_image(i)


def test_8_bit_modes_convert_as_pil_does(small_voc, voc_train):
    """Grey, grey+alpha, 1-bit, CMYK, RGBA and palette images (with and without transparency) read as PIL's own
    RGB conversion of the decoded file."""
    ids = voc_train.ids[:6]
    base = Image.fromarray(voc_train.load_image(ids[0]))
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 3
    cases = [(base.convert("L"), "PNG"), (base.convert("LA"), "PNG"), (base.convert("1"), "PNG"),
             (base.convert("CMYK"), "JPEG"), (pal, "PNG"), (pal_t, "PNG")]
    for i, (img, fmt) in zip(ids, cases):
        img.save(small_voc / "JPEGImages" / f"{i}.jpg", format=fmt)
    r = build_reader("voc", small_voc, "train")
    for i, (img, _) in zip(ids, cases):
        with Image.open(small_voc / "JPEGImages" / f"{i}.jpg") as f:
            assert f.mode == img.mode
            want = np.asarray(f.convert("RGB"))
        np.testing.assert_array_equal(r.load_image(i), want)
    assert len(np.unique(r.load_image(ids[2]))) == 2  # 1-bit: black and white only
