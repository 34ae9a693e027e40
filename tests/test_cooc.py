"""benchmarks.cooc: a co-occurrence dataset from real cut-outs, deterministic and readable by seco; stage 1, the
scores, one seed end to end and the ablation over seeds; the commands' options."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import TEST_DATA

from benchmarks import cooc
from benchmarks.cooc import cli as cooc_cli
from seco_labels.data import build_reader, read_class_names


def test_components_are_four_connected_regions():
    mask = np.array([[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 1], [1, 0, 1, 1]], bool)
    labels, n = cooc.components(mask)
    assert n == 3 and (labels > 0).sum() == mask.sum() and (labels[~mask] == 0).all()
    assert labels[0, 0] == labels[1, 1] != labels[3, 0] != labels[1, 3] == labels[3, 2]


def _flood_fill(mask: np.ndarray) -> np.ndarray:
    """The reference: each region by a breadth-first walk, numbered by its last pixel (row-major), as components."""
    seen, regions = np.zeros(mask.shape, bool), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        todo, region = [start], []
        seen[start] = True
        while todo:
            y, x = todo.pop()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    todo.append((ny, nx))
        regions.append(region)
    labels = np.zeros(mask.shape, np.int64)
    for k, region in enumerate(sorted(regions, key=lambda r: max(y * mask.shape[1] + x for y, x in r)), 1):
        labels[tuple(np.array(region).T)] = k
    return labels


def test_components_match_a_flood_fill_on_long_winding_regions():
    snake = np.zeros((9, 9), bool)  # one 41-pixel path back and forth: propagation alone needs 40 rounds
    snake[::2] = True
    snake[1::4, -1] = snake[3::4, 0] = True
    rng = np.random.default_rng(0)
    for mask in [snake, snake[::-1], snake.T, np.ones((3, 5), bool), np.zeros((2, 2), bool),
                 *(rng.random((30, 40)) < p for p in (0.3, 0.55, 0.7))]:
        labels, n = cooc.components(mask)
        expected = _flood_fill(mask)
        assert n == expected.max() and np.array_equal(labels, expected)
    assert cooc.components(snake)[1] == 1


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("cooc")
    args = dict(sources=[TEST_DATA / "coco-mini"], seed=3, pairs=[("cup", "person")], classes=None, num_classes=3,
                n_train=60, n_val=24, size=96, cooc=0.85, context=None, min_area=200, min_visible=20)
    info = cooc.generate(out=out / "a", **args)
    again = cooc.generate(out=out / "b", **args)
    return out, info, again


def test_the_dataset_is_read_by_seco_and_its_tags_match_its_masks(generated):
    out, info, _ = generated
    names = read_class_names(out / "a" / "classes.txt")
    assert list(names) == ["background", *info["classes"]] and {"cup", "person"} <= set(info["classes"])
    for split in ("train", "val"):
        reader = build_reader("voc", out / "a", split, class_names=names, require_masks=True)
        assert len(reader) == info["images"][split] > 0.9 * {"train": 60, "val": 24}[split]
        for image_id in reader.ids[:10]:
            image, mask = reader.load_image(image_id), reader.load_mask(image_id)
            assert image.shape == (96, 96, 3) and mask.shape == (96, 96)
            counts = np.bincount(mask.ravel(), minlength=len(names))[1:]
            np.testing.assert_array_equal(reader.tags(image_id), (counts >= 20).astype(np.float32))
    assert min(info["instances"]["val"].values()) >= 1 and min(info["instances"]["train"].values()) >= 1
    assert cooc.mirrors(out / "a")  # photo cut-outs: SeCo may train on and export mirror images


def test_cooccurrence_is_controlled_and_recorded(generated):
    out, info, _ = generated
    train, val = info["cooccurrence"]["train"]["cup:person"], info["cooccurrence"]["val"]["cup:person"]
    assert train["share_of_a_with_b"] >= 0.75  # 0.85 drawn; an occluded partner can drop out of the tags
    assert abs(val["a_alone"] - val["both"]) <= 2 and abs(val["b_alone"] - val["both"]) <= 2 and val["both"] >= 2
    assert json.loads((out / "a" / "cooc.json").read_text())["pairs"] == ["cup:person"]


def test_same_seed_same_bytes(generated):
    out, info, again = generated
    for sub in ("JPEGImages/train_00007.jpg", "SegmentationClassAug/val_00003.png", "ImageSets/Segmentation/train.txt"):
        assert (out / "a" / sub).read_bytes() == (out / "b" / sub).read_bytes()
    assert {k: v for k, v in info.items() if k != "seconds"} == {k: v for k, v in again.items() if k != "seconds"}


def test_the_context_variant_keeps_its_class_on_one_background_type_in_train(tmp_path):
    info = cooc.generate([TEST_DATA / "coco-mini"], tmp_path, seed=1, pairs=[], classes=["person", "cup"],
                         num_classes=2, n_train=40, n_val=20, size=64, cooc=0.85, context="person", min_area=200,
                         min_visible=10)
    seen = info["context_backgrounds"]
    assert seen["train"]["other"] == 0 and seen["train"]["green"] > 0
    assert seen["val"]["other"] > 0  # mixed in val


def test_pretrained_weights_load_into_seco_and_baselines_are_scored(generated, tmp_path):
    from seco_labels.models.backbone import ViTEncoder

    out, info, _ = generated
    kwargs = {"patch_size": 8, "depth": 1}
    result = cooc.pretrain(out / "a", tmp_path / "w.pt", backbone="vit_tiny_patch16_224", backbone_kwargs=kwargs,
                           steps=3, batch_size=4, lr=1e-3, seed=0, log_every=0)
    assert result["steps"] == 3 and 0 <= result["val_tag_f1"] <= 1 and result["last_loss"] > 0
    encoder = ViTEncoder("vit_tiny_patch16_224", aux_layer=-1, weights=str(tmp_path / "w.pt"), **kwargs)  # strict
    saved = __import__("torch").load(tmp_path / "w.pt", weights_only=True)
    assert all((encoder.vit.state_dict()[k] == v).all() for k, v in saved.items())
    scores = cooc.baselines(out / "a", "train")
    assert 0 < scores["all_background"] < 1 and scores["best_centre_box_side"] in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert scores["best_trivial"] == max(scores["all_background"], scores["whole_image"], scores["best_centre_box"])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One seed of the quick benchmark (tiny sizes, digits, segmenter step on), run once for this module: the
    ablation below reuses its dataset, stage 1 and ``full`` run, as ``ablate`` reuses a ``run`` of the same seed."""
    spec = cooc.RunSpec(sources=[TEST_DATA / "coco-mini"], pairs=[("one", "four")], num_classes=2, n_train=12,
                        n_val=6, size=64, digits=True, context="four", backbone_kwargs={"patch_size": 8, "depth": 3},
                        pretrain_steps=2, iters=2, threads=1, seg_iters=2,
                        extra_sets=("decompose.local_crop_size=16", "train.val_max_images=2"))
    out = tmp_path_factory.mktemp("cooc-run")
    return spec, out, cooc.run(spec, out / "seed0", seed=0, variant="full")


@pytest.mark.slow
def test_run_does_one_seed_end_to_end_and_resumes(digits_run):
    """The quick version of the benchmark (tiny sizes): every stage runs, the result holds every score."""
    spec, out, result = digits_run
    seed = out / "seed0"
    assert (seed / "weights.pt").is_file() and (seed / "full" / "seed0" / "art" / "cams_train.h5").is_file()
    assert 0 <= result["mask_miou"] <= 1 and result["baselines"]["best_trivial"] > 0
    assert result["mask_miou_over_best_trivial"] == round(result["mask_miou"] / result["baselines"]["best_trivial"], 3)
    assert 0 <= result["cam_roc_auc"] <= 1 and result["cam_roc_auc_n"] > 0
    assert set(result["cooc_confusion"]) == {"one:four"} and set(result["seg_cooc_confusion"]) == {"one:four"}
    assert result["seg_gap"] == round(result["seg_gt_val_miou"] - result["seg_val_miou"], 4)
    val_ids = (seed / "data" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert len(list((seed / "full" / "seed0" / "seg-pseudo" / "pred_val").glob("*.png"))) == len(val_ids) > 0
    assert yaml.safe_load((seed / "seg-gt" / "config.yaml").read_text())["data"]["labels"] == "gt"
    assert result["pretrain"]["steps"] == 2 and json.loads((seed / "pretrain.json").read_text()) == result["pretrain"]
    assert result["code"] is None or len(result["code"]) >= 7  # the checkout's commit, where there is git
    acted = result["activity"]  # --iters 2 compresses the schedule: LIL/LIG run on the second step only
    assert acted["steps_logged"] == 2 and 0 <= acted["steps_with_rectification"] <= 1
    assert acted["crops_tagged"]["steps"] == 2 and acted["crops_tagged"]["total"] > 0
    assert acted["crops_tagged"]["per_100_steps"] == 50 * acted["crops_tagged"]["total"]
    local = [acted[f"local_crops_{t}"]["total"] for t in ("class", "background", "uncertain")]
    assert sum(local) == 2 * 4 * 10  # 2 steps x the demo preset's batch of 4 x 10 local crops, each tagged once
    assert acted["lil_pairs"]["steps"] == acted["lig_positives"]["steps"] == 1
    assert acted["lil_pairs"]["per_100_steps"] == 100 * acted["lil_pairs"]["total"] > 0
    spread = result["context"]  # A = four on green backgrounds: shares of background pixels
    assert spread["context_class"] == "four" and 0 <= spread["train_spread"] <= 1
    assert all(v is None or v >= 0 for k, v in spread.items() if k != "context_class")
    assert len(list((seed / "full" / "seed0" / "seg" / "masks_val").glob("*.png"))) == len(val_ids)
    assert 0 <= result["seg_miou"] <= 1  # the SeCo decoder on val, which the context set scores
    stamp = (seed / "result_full.json").stat().st_mtime_ns
    assert cooc.run(spec, seed, seed=0) == result  # resumed: nothing redone
    assert (seed / "result_full.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("pool, mosaic", [("max", 2), ("cls", 1)])
def test_pretrain_reads_out_tiles_or_the_class_token_and_scores_its_cams(generated, tmp_path, pool, mosaic):
    out, _, _ = generated
    result = cooc.pretrain(out / "a", tmp_path / "w.pt", backbone="vit_tiny_patch16_224", pool=pool, mosaic=mosaic,
                           backbone_kwargs={"patch_size": 8, "depth": 1}, steps=2, batch_size=2, lr=1e-3, seed=0,
                           log_every=0)
    assert result["mosaic"] == mosaic and 0 < result["head_cam_roc_auc"] < 1 and result["last_loss"] > 0
    with pytest.raises(ValueError, match="mosaic > 1 classifies each tile"):
        cooc.pretrain(out / "a", tmp_path / "x.pt", backbone="vit_tiny_patch16_224", pool="cls", mosaic=2,
                      backbone_kwargs={"patch_size": 8, "depth": 1}, steps=1, batch_size=1, lr=1e-3, seed=0)


def test_tile_lays_images_row_by_row_and_untile_inverts_it():
    import torch

    x = torch.arange(8 * 3 * 4 * 5, dtype=torch.float32).view(8, 3, 4, 5)
    mosaic = cooc.tile(x, 2)
    assert mosaic.shape == (2, 3, 8, 10)
    assert torch.equal(mosaic[0, :, :4, 5:], x[1]) and torch.equal(mosaic[1, :, 4:, :5], x[6])
    assert torch.equal(cooc.untile(mosaic, 2), x)


def test_pair_confusion_counts_the_images_holding_both_classes_only():
    gt, pred = np.array([[1, 1, 2, 2]]), np.array([[1, 2, 2, 2]])  # one of A's two pixels labelled B
    a_alone, a_as_b = np.array([[1, 1, 0, 0]]), np.array([[2, 2, 0, 0]])  # no B in the GT: not counted
    scores = cooc.pair_confusion([gt, a_alone], [pred, a_as_b], ["background", "a", "b"], [("a", "b")])
    assert scores == {"cooc_confusion": {"a:b": {"b_as_a": 0.0, "a_as_b": 0.5}}, "cooc_confusion_mean": 0.25}


def test_roc_auc_counts_ties_half():
    assert cooc.roc_auc(np.array([2.0, 3.0]), np.array([1.0, 1.0])) == 1.0
    assert cooc.roc_auc(np.array([1.0]), np.array([1.0, 2.0])) == 0.25


def test_digits_give_every_class_enough_distinct_instances_on_real_backgrounds(tmp_path):
    info = cooc.generate([TEST_DATA / "coco-mini"], tmp_path, seed=0, pairs=[("three", "eight")], classes=None,
                         num_classes=4, n_train=30, n_val=12, size=64, cooc=0.85, context=None, min_area=200,
                         min_visible=20, digits=True)
    assert info["objects"] == "digits" and info["classes"][:2] == ["three", "eight"]
    assert set(info["classes"]) <= set(cooc.DIGIT_NAMES) and len(info["classes"]) == 4
    assert min(info["instances"]["train"].values()) >= 100 and min(info["instances"]["val"].values()) >= 20
    names = read_class_names(tmp_path / "classes.txt")
    reader = build_reader("voc", tmp_path, "train", class_names=names, require_masks=True)
    for image_id in reader.ids[:10]:
        image, mask = reader.load_image(image_id), reader.load_mask(image_id)
        counts = np.bincount(mask.ravel(), minlength=len(names))[1:]
        np.testing.assert_array_equal(reader.tags(image_id), (counts >= 20).astype(np.float32))
        assert image[mask == 0].std() > 10  # a photo behind the digits, not a flat canvas


def test_class_colours_give_each_class_its_hue_but_a_pair_one_hue_and_scale_bounds_the_objects(tmp_path):
    import colorsys

    info = cooc.generate([TEST_DATA / "coco-mini"], tmp_path, seed=0, pairs=[("three", "eight")],
                         classes=["three", "eight", "one", "four"], num_classes=4, n_train=30, n_val=8, size=64,
                         cooc=0.85, context=None, min_area=200, min_visible=20, digits=True, colours="class",
                         scale=(0.2, 0.3))
    hues = info["hues"]
    assert hues["three"] == hues["eight"] and len({hues["three"], hues["one"], hues["four"]}) == 3
    assert json.loads((tmp_path / "cooc.json").read_text())["scale"] == [0.2, 0.3]
    reader = build_reader("voc", tmp_path, "train", class_names=read_class_names(tmp_path / "classes.txt"),
                          require_masks=True)
    seen = set()
    for image_id in reader.ids:
        image, mask = reader.load_image(image_id), reader.load_mask(image_id)
        for k in np.unique(mask[mask > 0]):
            ys, xs = np.nonzero(mask == k)
            assert max(ys.max() - ys.min(), xs.max() - xs.min()) < 0.3 * 64 + 1  # the longest side's bound
            inner = (mask == k) & (np.roll(mask, 1, 0) == k) & (np.roll(mask, -1, 1) == k)  # off JPEG's edges
            rgb = np.median(image[inner], axis=0) / 255 if inner.any() else None
            if rgb is not None:
                hue = colorsys.rgb_to_hsv(*rgb)[0]
                name = info["classes"][k - 1]
                assert min(abs(hue - hues[name]), 1 - abs(hue - hues[name])) < 0.05, (image_id, name, hue)
                seen.add(name)
    assert seen == {"three", "eight", "one", "four"}
    with pytest.raises(cooc.DatasetError, match="recolours the digits"):
        cooc.generate([TEST_DATA / "coco-mini"], tmp_path / "photos", seed=0, pairs=[], classes=None, num_classes=2,
                      n_train=4, n_val=2, size=64, cooc=0.85, context=None, min_area=200, min_visible=20,
                      colours="class")


def test_val_photos_never_take_most_of_a_class():
    def inst(name, photo):
        return cooc.Instance(name, np.zeros((2, 2, 3), np.uint8), np.ones((2, 2), bool), photo)

    # "rare": 1 instance in photo p0, 6 in p1; "common": one in each of 20 photos, p1 among them
    instances = {"rare": [inst("rare", "p0")] + [inst("rare", "p1")] * 6,
                 "common": [inst("common", f"p{k}") for k in range(20)]}
    for seed in range(20):
        val = cooc.val_photos(instances, ["rare", "common"], np.random.default_rng(seed))
        assert "p0" in val and "p1" not in val  # the rare class keeps 6 of its 7 in train
        assert 2 <= len(val) <= 4 and {f"p{k}" for k in range(20)} - val


def test_background_blur_takes_the_texture_out_of_the_backgrounds_only(tmp_path):
    def texture(blur: float) -> tuple[float, float]:
        out = tmp_path / f"blur{blur}"
        cooc.generate([TEST_DATA / "coco-mini"], out, seed=0, pairs=[], classes=["one", "four"], num_classes=2,
                      n_train=12, n_val=4, size=64, cooc=0.85, context=None, min_area=200, min_visible=20,
                      digits=True, background_blur=blur)
        names = read_class_names(out / "classes.txt")
        reader = build_reader("voc", out, "train", class_names=names, require_masks=True)
        back, fore = [], []
        for image_id in reader.ids:
            image, mask = reader.load_image(image_id).astype(float), reader.load_mask(image_id)
            step = np.abs(np.diff(image, axis=1)).sum(-1)  # (64, 63) horizontal steps
            inside = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
            outside = (mask[:, 1:] == 0) & (mask[:, :-1] == 0)
            back.append(step[outside].mean())
            fore.append(step[inside].mean())
        assert json.loads((out / "cooc.json").read_text())["background_blur"] == blur
        return float(np.mean(back)), float(np.mean(fore))

    (sharp_back, sharp_fore), (soft_back, soft_fore) = texture(0.0), texture(3.0)
    assert soft_back < 0.6 * sharp_back  # the photos behind lost most of their texture
    assert soft_fore == pytest.approx(sharp_fore, rel=0.35)  # the digits' flat fill did not change


@pytest.mark.slow
def test_ablate_shares_data_and_stage_one_per_seed_and_tabulates(digits_run):
    spec, out, _ = digits_run
    seed = out / "seed0"
    full_stamp = (seed / "result_full.json").stat().st_mtime_ns
    # without the segmenter step: the run's result (which has it) is reused, the baseline trains from its stage 1
    table = cooc.ablate(dataclasses.replace(spec, seg_iters=0), out, seeds=[0], variants=["baseline", "full"])
    assert sorted(p.name for p in seed.glob("result_*.json")) == ["result_baseline.json", "result_full.json"]
    assert (seed / "result_full.json").stat().st_mtime_ns == full_stamp
    assert len(list(seed.glob("weights*.pt"))) == 1 and (seed / "data" / "cooc.json").is_file()
    baseline_config = yaml.safe_load((seed / "baseline" / "seed0" / "run" / "config.yaml").read_text())
    assert baseline_config["model"]["backbone_weights"] == str(seed / "weights.pt")
    rows = (out / "ablation.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("variant,seed,cam_miou,mask_miou")
    assert "| `baseline` | cls + aux + seg only |" in table and "| `full` | SeCo |" in table
    assert table == (out / "ablation.md").read_text() and (out / "ablation.png").stat().st_size > 1000
    full = json.loads((seed / "result_full.json").read_text())
    full_rows = [line for line in table.splitlines() if line.startswith("| `full` | SeCo |")]
    assert len(full_rows) == 3  # the scores, the context spread, what each mechanism did
    assert f"{100 * full['mask_miou']:.2f} ± 0.00" in full_rows[0]
    assert f"{100 * full['context']['train_spread']:.2f} ± 0.00" in full_rows[1]
    assert f"{full['activity']['local_crops_class']['per_100_steps']:.3f} ± 0.000" in full_rows[2]
    diff = 100 * (full["mask_miou"] - json.loads((seed / "result_baseline.json").read_text())["mask_miou"])
    assert f"| SeCo (full - baseline) | `full` | `baseline` | pseudo-mask mIoU | 1 | {diff:+.2f} |" in table
    assert "too few seeds" in table and (out / "paired.csv").read_text().startswith("contrast,with,without,metric")
    # a mirrored 4 is no 4: the digits are neither trained on nor exported with their mirror images
    config = yaml.safe_load((seed / "full" / "seed0" / "run" / "config.yaml").read_text())
    assert (config["data"]["flip_p"], config["data"]["strong_flip_p"], config["cam"]["flip"]) == (0, 0, False)
    with h5py.File(seed / "full" / "seed0" / "art" / "cams_train.h5") as f:
        assert not f.attrs["flip"]


def test_no_rectify_is_not_trained_again_when_full_never_rectified(digits_run, tmp_path):
    """A full run whose rectification acted in no step is the no_rectify run (same data, stage 1, seed and losses):
    ablate writes full's result as no_rectify's, saying so, and trains it only when rectification acted."""
    from benchmarks.cooc.runs import ablation_rows, same_as_full

    spec, out, _ = digits_run
    full = json.loads((out / "seed0" / "result_full.json").read_text())
    folder = tmp_path / "seed0"
    folder.mkdir()
    assert same_as_full(folder, spec) is None  # full has not finished here
    full["activity"]["crops_rectified"]["steps"] = 7  # LIL ran in 7 steps
    for acted, expected in ((2, None), (0, "full: rectification acted in none of its 7 LIL steps")):
        full["activity"]["steps_with_rectification"] = acted
        (folder / "result_full.json").write_text(json.dumps(full))
        derived = same_as_full(folder, spec)
        assert (derived or {}).get("same_run_as") == expected
    assert derived["variant"] == "no_rectify" and derived["mask_miou"] == full["mask_miou"]
    assert json.loads((folder / "result_no_rectify.json").read_text()) == derived
    rows = ablation_rows(tmp_path, [0], ["no_rectify", "full"])
    assert [r["variant"] for r in rows] == ["no_rectify", "full"] and rows[0]["mask_miou"] == rows[1]["mask_miou"]
    full["activity"]["crops_rectified"]["steps"] = 0  # LIL never ran: nothing says rectification was inert
    (folder / "result_no_rectify.json").unlink()
    (folder / "result_full.json").write_text(json.dumps(full))
    assert same_as_full(folder, spec) is None and not (folder / "result_no_rectify.json").exists()


@pytest.mark.slow
def test_study_tables_the_finished_runs_of_both_sets_with_their_verdicts(digits_run, tmp_path):
    spec, out, _ = digits_run
    cooc.ablate(dataclasses.replace(spec, seg_iters=0), out, seeds=[0], variants=["baseline", "full"])  # done above
    (tmp_path / "colours").symlink_to(out)  # the study's class-colour set; its context set has not run
    result = CliRunner().invoke(cooc_cli.cli, [
        "study", "--source", str(TEST_DATA / "coco-mini"), "--out", str(tmp_path), "--seeds", "0",
        "--variants", "baseline,full,no_lil", "--tables-only"])
    assert result.exit_code == 0, result.output
    rows = {line.split(" | ")[0].lstrip("| "): line for line in result.output.splitlines() if line.startswith("| ")}
    full, baseline = (json.loads((out / "seed0" / f"result_{v}.json").read_text())["mask_miou"]
                      for v in ("full", "baseline"))
    assert rows["SeCo (full - baseline)"] == (f"| SeCo (full - baseline) | {100 * (full - baseline):+.2f} ± n/a (n=1): "
                                              "too few seeds | not run |")
    assert "LIL" not in rows  # no_lil has not run on either set
    study_md = (tmp_path / "study.md").read_text()
    assert study_md.startswith(result.output.rstrip("\n")) and "## colours" in study_md and "## context" not in study_md
    assert not (tmp_path / "context").exists()  # --tables-only trained nothing
    # the same differences from the set's ablation.csv alone (what docs/results keeps)
    paired = CliRunner().invoke(cooc_cli.cli, ["paired", "--csv", str(tmp_path / "colours" / "ablation.csv")])
    assert paired.exit_code == 0, paired.output
    assert (f"| SeCo (full - baseline) | `full` | `baseline` | pseudo-mask mIoU | 1 | {100 * (full - baseline):+.2f} | "
            in paired.output)
    md = (tmp_path / "colours" / "ablation.md").read_text()
    assert paired.output == md[md.index("Paired differences"):]
    # run_missing: each set's ablation in a worker process, its finished runs read, not redone
    stamp = (out / "seed0" / "result_full.json").stat().st_mtime_ns
    verdicts = cooc.study({"colours": dataclasses.replace(spec, seg_iters=0)}, tmp_path, seeds=[0],
                          variants=["baseline", "full"], jobs=1)
    assert verdicts.splitlines()[2] == "| mechanism | colours |" and "too few seeds" in verdicts
    assert (out / "seed0" / "result_full.json").stat().st_mtime_ns == stamp


# -- the commands ----------------------------------------------------------------------------------------------
def test_generate_command_writes_the_dataset_and_prints_its_statistics(tmp_path):
    result = CliRunner().invoke(cooc_cli.cli, [
        "generate", "--digits", "--source", str(TEST_DATA / "coco-mini"), "--out", str(tmp_path / "d"),
        "--pairs", "one:four", "--num-classes", "2", "--train", "6", "--val", "4", "--size", "48",
        "--scale", "0.4,0.6", "--colours", "class"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["classes"] == ["one", "four"] and printed["images"]["train"] > 0
    saved = json.loads((tmp_path / "d" / "cooc.json").read_text())
    assert saved["pairs"] == ["one:four"] and saved["scale"] == [0.4, 0.6] and saved["colours"] == "class"
    assert saved["min_area"] == 400 and saved["cooc"] == 0.85  # the documented defaults


def test_run_and_ablate_options_make_the_run_spec(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cooc_cli, "run", lambda spec, out, **kw: calls.append((spec, out, kw)) or {"ok": 1})
    monkeypatch.setattr(cooc_cli, "ablate", lambda spec, out, **kw: calls.append((spec, out, kw)) or "table")
    source, runner = str(TEST_DATA / "coco-mini"), CliRunner()
    result = runner.invoke(cooc_cli.cli, [
        "run", "--source", source, "--out", str(tmp_path), "--seed", "3", "--variant", "no_lil", "--digits",
        "--pairs", "three:eight", "--train", "50", "--val", "20", "--size", "96", "--background-blur", "2",
        "--colours", "class", "--scale", "0.3,0.5", "--pretrain-steps", "7", "--pretrain-lr", "0.01",
        "--mosaic", "2", "--seg-iters", "5", "--iters", "9", "--backbone-kwargs", '{"patch_size": 8, "depth": 4}',
        "--threads", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    spec, out, kw = calls.pop()
    assert out == tmp_path and kw == {"seed": 3, "variant": "no_lil"}
    assert spec == cooc.RunSpec(sources=[TEST_DATA / "coco-mini"], pairs=[("three", "eight")], num_classes=5,
                                n_train=50, n_val=20, size=96, digits=True, background_blur=2.0,
                                scale=(0.3, 0.5), colours="class", backbone_kwargs={"patch_size": 8, "depth": 4},
                                pretrain_steps=7, pretrain_lr=0.01, mosaic=2, iters=9, seg_iters=5, threads=1)
    result = runner.invoke(cooc_cli.cli, ["ablate", "--source", source, "--out", str(tmp_path)])
    assert result.exit_code == 0 and result.output == "table\n"
    spec, _, kw = calls.pop()
    assert kw == {"seeds": [0, 1, 2], "variants": ["baseline", "no_lig", "no_lil", "no_rectify", "full"]}
    assert spec == cooc.RunSpec(sources=[TEST_DATA / "coco-mini"])  # the defaults of the options are the spec's


@pytest.mark.parametrize("args, option, message", [
    (["run", "--pairs", "dog"], "--pairs", "give pairs as A:B"),
    (["run", "--scale", "0.5"], "--scale", "give the scale as MIN,MAX"),
    (["run", "--scale", "0.8,0.4"], "--scale", "need 0 < MIN <= MAX <= 1"),
    (["run", "--backbone-kwargs", "depth=4"], "--backbone-kwargs", "is not a JSON object"),
    (["run", "--variant", "nope"], "--variant", "'nope' is not one of"),
    (["ablate", "--variants", "full,nope"], "--variants", "unknown variant(s) ['nope']"),
    (["ablate", "--seeds", "0,x"], "--seeds", "e.g. 0,1,2"),
])
def test_bad_options_name_the_option(tmp_path, args, option, message):
    result = CliRunner().invoke(cooc_cli.cli, [*args, "--source", str(TEST_DATA / "coco-mini"),
                                               "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and option in result.output and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_a_dataset_that_cannot_be_made_ends_the_command_with_its_reason(tmp_path):
    result = CliRunner().invoke(cooc_cli.cli, ["generate", "--source", str(TEST_DATA / "coco-mini"),
                                               "--out", str(tmp_path / "d"), "--colours", "class"])
    assert result.exit_code == 1 and "recolours the digits" in result.output and "Traceback" not in result.output


def test_context_spread_counts_background_pixels_labelled_the_context_class(tmp_path):
    out = tmp_path / "d"
    cooc.generate([TEST_DATA / "coco-mini"], out, seed=1, pairs=[], classes=["person", "cup"], num_classes=2,
                  n_train=20, n_val=12, size=64, cooc=0.85, context="person", min_area=200, min_visible=10)
    kinds = json.loads((out / "backgrounds.json").read_text())
    ids = {split: cooc.load_split(out, split) for split in ("train", "val")}
    assert {split: list(kinds[split]) for split in kinds} == {split: ids[split][0] for split in ids}
    person = 1
    gts = {split: dict(zip(v[0], v[3].numpy())) for split, v in ids.items()}
    # perfect masks: nothing spreads; the class everywhere: all of the background is A's
    perfect = cooc.context_spread(out, "person", gts["train"].__getitem__, gts["val"].__getitem__)
    assert perfect["train_spread"] == 0 and perfect["train_fp_tp"] == 0 and perfect["val_context_fp"] in (0, None)
    everywhere = cooc.context_spread(out, "person", lambda i: np.full((64, 64), person, np.uint8),
                                     lambda i: np.full((64, 64), person, np.uint8))
    assert everywhere["train_spread"] == 1 and everywhere["train_other_spread"] == 1  # any class counts there
    with_a = [i for i, gt in gts["train"].items() if (gt == person).any()]
    assert with_a and all(kinds["train"][i] == "green" for i in with_a)  # A stands on green in train
    background = sum(int((gts["train"][i] == 0).sum()) for i in with_a)
    tp = sum(int((gts["train"][i] == person).sum()) for i in with_a)
    assert everywhere["train_fp_tp"] == round(background / tp, 4)
    no_a_val = [i for i, gt in gts["val"].items() if not (gt == person).any()]
    assert (everywhere["val_context_fp"] == 1) == any(kinds["val"][i] == "green" for i in no_a_val)


def test_paired_differences_give_each_mechanism_its_verdict():
    rows = [{"variant": v, "seed": s, "mask_miou": m, "cam_miou": 0.5, "cooc_confusion_mean": c}
            for v, s, m, c in [("full", 0, 0.80, 0.2), ("full", 1, 0.82, 0.1), ("full", 2, 0.81, 0.3),
                               ("baseline", 0, 0.70, 0.4), ("baseline", 1, 0.71, 0.4), ("baseline", 2, 0.72, 0.4),
                               ("no_lil", 0, 0.81, 0.2), ("no_lil", 1, 0.81, 0.2), ("no_lil", 2, 0.80, 0.2),
                               ("no_lig", 0, 0.80, 0.2)]]
    paired = {(p["contrast"], p["metric"]): p for p in cooc.paired_differences(rows)}
    seco = paired["SeCo (full - baseline)", "mask_miou"]
    assert seco["diffs"] == pytest.approx([0.10, 0.11, 0.09]) and seco["verdict"] == "helps"
    assert seco["se"] == pytest.approx(0.01 / 3 ** 0.5)
    assert paired["SeCo (full - baseline)", "cooc_confusion_mean"]["verdict"] == "helps"  # lower is better
    assert paired["LIL", "mask_miou"]["verdict"] == "no measurable effect"  # -0.01, +0.01, +0.01
    assert paired["LIG", "mask_miou"]["verdict"] == "too few seeds"  # no_lig ran one seed
    assert ("PTC", "mask_miou") not in paired  # no_contrast did not run
    assert cooc.verdict([-0.05, -0.06, -0.04]) == "hurts" and cooc.verdict([0.0, 0.0]) == "no measurable effect"
