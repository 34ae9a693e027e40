"""benchmarks/ablation.py: its variants are real config switches, and a tiny run writes the table and plot."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from benchmarks import ablation
from seco_labels.config import get_preset, set_values


def test_every_variant_is_a_config_switch():
    full = get_preset("voc")
    assert set(ablation.VARIANTS) == {"baseline", "no_lig", "no_lil", "no_rectify", "full", "no_contrast"}
    assert ablation.DEFAULT_VARIANTS == ("baseline", "no_lig", "no_lil", "no_rectify", "full")
    changed = {}
    for name, (_, overrides) in ablation.VARIANTS.items():
        cfg = set_values(get_preset("voc"), {k: v for k, v in overrides.items()})
        changed[name] = {
            "ptc": cfg.loss.ptc.weight, "lig": cfg.loss.lig.weight, "lil": cfg.loss.lil.weight,
            "rectify": cfg.loss.rectify,
        }
    assert changed["full"] == {"ptc": full.loss.ptc.weight, "lig": 0.5, "lil": 0.5, "rectify": True}
    assert changed["baseline"] == {"ptc": 0, "lig": 0, "lil": 0, "rectify": True}
    assert changed["no_lig"]["lig"] == 0 and changed["no_lig"]["lil"] == 0.5
    assert changed["no_lil"]["lil"] == 0 and changed["no_lil"]["lig"] == 0.5
    assert changed["no_rectify"]["rectify"] is False and changed["no_rectify"]["lil"] == 0.5
    assert changed["no_contrast"] == {"ptc": full.loss.ptc.weight, "lig": 0, "lil": 0, "rectify": True}


def test_summary_is_mean_and_sample_std():
    results = [{"variant": "full", "seed": s, "cam_miou": c, "mask_miou": m, "fp_tp": f}
               for s, c, m, f in ((0, 0.2, 0.1, 1.0), (1, 0.4, 0.3, 3.0))]
    summary = ablation.summarize(results, ["full"])
    assert summary["full"]["cam_miou"] == pytest.approx((0.3, 0.1414213), rel=1e-5)
    assert summary["full"]["fp_tp"] == pytest.approx((2.0, 1.4142135), rel=1e-5)
    table = ablation.format_markdown(summary, results, "settings")
    assert "| `full` | SeCo | 30.00 ± 14.14 | 20.00 ± 14.14 | 2.000 ± 1.414 |" in table


def test_the_plot_leaves_out_a_figure_no_seed_has(tmp_path):
    """FP/TP of masks without a true positive is None for every seed: no bar, and the plot is still drawn."""
    results = [{"variant": v, "seed": 0, "cam_miou": 0.3, "mask_miou": 0.2, "fp_tp": f}
               for v, f in (("baseline", None), ("full", 2.0))]
    summary = ablation.summarize(results, ["baseline", "full"])
    assert np.isnan(summary["baseline"]["fp_tp"][0])
    ablation.draw(summary, tmp_path / "plot.png", title="nan")
    with Image.open(tmp_path / "plot.png") as img:
        assert img.width > 100 and img.height > 100


def test_bad_options_stop_the_command_before_any_run(voc_root, tmp_path):
    runner, out = CliRunner(), tmp_path / "abl"
    base = ["--out", str(out), "--data-root", str(voc_root)]
    bad = runner.invoke(ablation.cli, [*base, "--variants", "full,no_such"])
    assert bad.exit_code == 2 and "--variants" in bad.output and "unknown variant(s) ['no_such']" in bad.output
    bad = runner.invoke(ablation.cli, [*base, "--seeds", "0,one"])
    assert bad.exit_code == 2 and "--seeds" in bad.output and "e.g. 0,1,2" in bad.output
    bad = runner.invoke(ablation.cli, [*base, "--seeds", "0", "1"])  # argparse's old form: seeds are comma-separated
    assert bad.exit_code == 2 and "unexpected extra argument (1)" in bad.output
    assert not out.exists()


def _small_split(voc_root: Path, root: Path, n: int = 6) -> Path:
    """A VOC-layout root whose split ``small`` holds the first ``n`` voc-mini training images (symlinks)."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClassAug", "cls_labels_onehot.npy"):
        (root / name).symlink_to(voc_root / name)
    lists = root / "ImageSets" / "Segmentation"
    ids = (voc_root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:n]
    (lists / "small.txt").write_text("\n".join(ids) + "\n")
    val = (voc_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:2]
    (lists / "smallval.txt").write_text("\n".join(val) + "\n")
    return root


def test_tiny_ablation_writes_table_csv_and_plot(voc_root, tmp_path):
    out, root = tmp_path / "abl", _small_split(voc_root, tmp_path / "data")
    args = ["--out", str(out), "--data-root", str(root), "--split", "small", "--preset", "demo", "--iters", "2",
            "--crop", "64", "--seeds", "0,1", "--variants", "full,no_lig", "--device", "cpu",
            "--val-split", "smallval", "--set", "cam.scales=[1.0]", "--jobs", "2"]  # two runs at a time
    result = CliRunner().invoke(ablation.cli, args)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "ablation.csv").open()))
    assert sorted((r["variant"], r["seed"]) for r in rows) == [("full", "0"), ("full", "1"), ("no_lig", "0"),
                                                              ("no_lig", "1")]
    for r in rows:
        assert 0 <= float(r["cam_miou"]) <= 1 and 0 <= float(r["mask_miou"]) <= 1 and float(r["fp_tp"]) >= 0
        assert 0 <= float(r["seg_miou"]) <= 1  # the decoder on smallval, via seco segment + evaluate
    assert len(list((out / "full" / "seed0" / "seg" / "masks_smallval").glob("*.png"))) == 2
    md = (out / "ablation.md").read_text()
    assert "decoder mIoU (%)" in md and "decoder scored on `smallval`" in md
    assert "Mean ± std over seeds 0, 1" in md and "| `no_lig` | SeCo without LIG |" in md
    assert md in result.output  # the command prints the table it wrote
    plot = Image.open(out / "ablation.png")
    colours = np.unique(np.asarray(plot.convert("RGB")).reshape(-1, 3), axis=0)
    assert plot.width > 400 and plot.height > 200 and len(colours) > 10
    # a second call reuses every finished run (result.json) instead of training again
    before = (out / "full" / "seed0" / "run" / "last.pt").stat().st_mtime_ns
    again = CliRunner().invoke(ablation.cli, args)
    assert again.exit_code == 0, again.output
    assert (out / "full" / "seed0" / "run" / "last.pt").stat().st_mtime_ns == before
