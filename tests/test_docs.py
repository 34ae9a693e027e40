"""The user docs stay in sync with the code: docs/artifact-format.md and docs/export.md.

The reading snippets of docs/artifact-format.md are executed against a real (tiny) export.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train import tiny_config  # tests/ is on sys.path (pytest prepend mode)

from seco_labels.artifacts import ROOT_ATTRS, ArtifactFile
from seco_labels.cli import cli
from seco_labels.data.classes import VOC_CLASSES
from seco_labels.inference.export import SCALE_PRESETS, ExportOptions, export_split

DOCS = Path(__file__).resolve().parents[1] / "docs"
ARTIFACT_DOC = DOCS / "artifact-format.md"
EXPORT_DOC = DOCS / "export.md"
#: two of voc-mini's smallest val images: PAR on full-size images dominates the export's time on a CPU
IDS = ("coco_000000000260", "coco_000000000536")
#: the line of a snippet that names the artifact; the tests point it at a real export
ART_LINE = re.compile(r"^ART, SPLIT = .*$", re.M)


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole markdown heading line) up to the next heading of its level or higher."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        raise AssertionError(f"heading {heading!r} not found") from None
    fenced = False  # a '# comment' line in a code block is no heading
    for end in range(start + 1, len(lines)):
        if lines[end].startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", lines[end]):
            break
    else:
        end = len(lines)
    return "\n".join(lines[start + 1:end])


def _first_column(section: str) -> list[str]:
    """First cells of the rows of the (first) markdown table in ``section``, header and rule excluded."""
    rows = [ln for ln in section.splitlines() if ln.startswith("|")]
    assert len(rows) > 2, "no table found"
    return [re.split(r"(?<!\\)\|", row)[1].strip() for row in rows[2:]]


def _python_blocks(section: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)


def _run_snippet(code: str, art: Path, split: str) -> dict:
    assert len(ART_LINE.findall(code)) == 1, "the snippet must set ART, SPLIT on one line"
    code = ART_LINE.sub(lambda _: f"ART, SPLIT = {str(art)!r}, {split!r}", code)
    namespace: dict = {"__name__": "doc_snippet"}
    exec(compile(code, str(ARTIFACT_DOC), "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def export(voc_root, tmp_path_factory) -> Path:
    """A real export of two val images by a checkpoint trained for 2 steps (single scale)."""
    from seco_labels.training.trainer import Trainer

    data = tmp_path_factory.mktemp("docs-data")  # voc-mini with a 2-image val split
    for name in ("JPEGImages", "SegmentationClassAug", "cls_labels_onehot.npy"):
        (data / name).symlink_to(voc_root / name)
    (data / "ImageSets" / "Segmentation").mkdir(parents=True)
    (data / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(IDS) + "\n")
    cfg = tiny_config(voc_root, iters=2)
    cfg.train.val_every = 0
    run = tmp_path_factory.mktemp("docs-run")
    Trainer(cfg, run, quiet=True).fit()
    art = tmp_path_factory.mktemp("docs-art")
    result = export_split(run / "last.pt", "val", art, data_root=str(data),
                          options=ExportOptions(scales=(1.0,), num_workers=0), quiet=True)
    assert result["exported"] == len(IDS)
    return art


# -- (a) the root attribute table ------------------------------------------------------------------------------
def _documented_attrs() -> list[str]:
    cells = _first_column(_section(ARTIFACT_DOC.read_text(), "### Root attributes"))
    names = [re.fullmatch(r"`(\w+)`", c) for c in cells]
    assert all(names), f"first column cells must be `name`: {cells}"
    return [m.group(1) for m in names]


def test_root_attribute_table_matches_code():
    documented = _documented_attrs()
    assert len(documented) == len(set(documented)), "an attribute is listed twice"
    missing = [a for a in ROOT_ATTRS if a not in documented]
    stale = [a for a in documented if a not in ROOT_ATTRS]
    assert not missing, f"ROOT_ATTRS not in the table of {ARTIFACT_DOC.name}: {missing}"
    assert not stale, f"{ARTIFACT_DOC.name} documents attributes that are not in ROOT_ATTRS: {stale}"


def test_root_attribute_table_matches_a_real_file(export):
    written = set(ArtifactFile(export / "cams_val.h5").attrs)
    assert written == set(_documented_attrs())


# -- (b) the export-masks options --------------------------------------------------------------------------------
def test_every_export_option_is_documented():
    section = _section(EXPORT_DOC.read_text(), "## The command")
    documented = {opt for cell in _first_column(section) for opt in re.findall(r"(?<![\w-])--?[a-z][\w-]*", cell)}
    in_code = {opt for p in cli.commands["export-masks"].params for opt in (*p.opts, *p.secondary_opts)}
    assert in_code - documented == set(), f"options of seco export-masks missing from {EXPORT_DOC.name}"
    assert documented - in_code == set(), f"{EXPORT_DOC.name} documents options seco export-masks lacks"


def test_scale_presets_are_documented():
    rows = [ln for ln in _section(EXPORT_DOC.read_text(), "### Scale presets").splitlines() if ln.startswith("|")]
    table = {cells[1].strip().strip("`"): cells[2].strip().strip("`")
             for cells in (row.split("|") for row in rows[2:])}
    assert table == {name: ",".join(str(s) for s in scales) for name, scales in SCALE_PRESETS.items()}


# -- (c) the reading snippets run ----------------------------------------------------------------------------
def _without_seco_labels_snippet() -> str:
    blocks = _python_blocks(_section(ARTIFACT_DOC.read_text(), "## Reading without seco_labels"))
    assert len(blocks) == 1
    imported = set()
    for node in ast.walk(ast.parse(blocks[0])):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert "seco_labels" not in imported and "h5py" in imported
    return blocks[0]


def test_reading_without_seco_labels_snippet_runs(export, capsys):
    ns = _run_snippet(_without_seco_labels_snippet(), export, "val")
    assert "2 masks, 21 classes" in capsys.readouterr().out
    assert ns["class_names"] == list(VOC_CLASSES) and ns["ignore_index"] == 255
    assert ns["config"]["data"]["crop_size"] == 64
    art = ArtifactFile(export / "cams_val.h5")
    assert set(ns["masks"]) == set(IDS) == art.ids()
    for image_id in IDS:
        mask = art.load_mask(image_id)
        _, keys = art.load_cam(image_id)
        np.testing.assert_array_equal(ns["masks"][image_id], mask)
        labels = ns["cam_labels"][image_id]
        assert labels.shape == mask.shape
        assert set(np.unique(labels).tolist()) <= {0, *keys.tolist()}
        assert set(np.unique(mask).tolist()) <= {0, 255, *keys.tolist()}


def test_reading_without_seco_labels_snippet_catches_a_bad_png(export, tmp_path):
    bad = tmp_path / "art"
    shutil.copytree(export, bad)
    png = bad / "masks_val" / f"{IDS[0]}.png"
    with Image.open(png) as img:
        values = np.array(img)
        palette = img.getpalette()
    wrong = Image.fromarray(np.where(values == 255, 0, 255).astype(np.uint8), mode="P")
    wrong.putpalette(palette)
    wrong.save(png)
    with pytest.raises(AssertionError, match=IDS[0]):
        _run_snippet(_without_seco_labels_snippet(), bad, "val")


def test_reading_with_seco_labels_snippet_runs(export, capsys):
    blocks = _python_blocks(_section(ARTIFACT_DOC.read_text(), "## Reading with seco_labels"))
    ns = _run_snippet(blocks[0], export, "val")  # the first block; the training example follows
    ds = ns["ds"]
    assert ds.ids == list(IDS) and ds.num_classes == 21
    image, mask = ns["image"], ns["mask"]
    assert image.shape[1:] == mask.shape and image.shape[0] == 3
    assert f"2 21 ['background', 'aeroplane', 'bicycle'] 255 {IDS[0]}" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' own use of numpy 2
def test_using_pseudo_labels_coco_snippet_runs(export, capsys):
    """The COCO example of docs/using-pseudo-labels.md, on the COCO JSON of a real export."""
    pytest.importorskip("pycocotools")
    from seco_labels.artifacts import write_coco_json

    write_coco_json(export, "val")
    blocks = _python_blocks(_section((DOCS / "using-pseudo-labels.md").read_text(), "## In a COCO-format code base"))
    ns = _run_snippet(blocks[0], export, "val")
    assert ns["first"]["seco_id"] == IDS[0] and ns["first"]["file_name"] == f"JPEGImages/{IDS[0]}.jpg"
    printed = capsys.readouterr().out.splitlines()
    assert printed and all(line.startswith(f"JPEGImages/{IDS[0]}.jpg ") for line in printed)
    assert {line.split()[1] for line in printed} <= set(VOC_CLASSES[1:])


# -- docs/cli.md -------------------------------------------------------------------------------------------------
CLI_DOC = DOCS / "cli.md"


def test_cli_reference_is_regenerated():
    from seco_labels.cli.reference import render_reference

    assert CLI_DOC.read_text() == render_reference(), (
        "docs/cli.md is stale: run python -m seco_labels.cli.reference > docs/cli.md"
    )


@pytest.mark.parametrize("name", [None, *sorted(cli.commands)])
def test_cli_reference_matches_help_output(name):
    from click.testing import CliRunner

    from seco_labels.cli.reference import WIDTH

    args = ([name] if name else []) + ["--help"]
    res = CliRunner().invoke(cli, args, prog_name="seco", terminal_width=WIDTH)
    assert res.exit_code == 0, res.output
    block = f"$ seco {name + ' ' if name else ''}--help\n{res.output}```"
    assert block in CLI_DOC.read_text(), f"the help of `seco {name or ''}` differs from docs/cli.md"


# -- the docs as a site ------------------------------------------------------------------------------------------
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_every_page_is_in_the_index_and_every_link_resolves():
    index = (DOCS / "index.md").read_text()
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md")
    assert [p for p in pages if f"]({p})" not in index] == [], "pages missing from docs/index.md"
    for page in DOCS.glob("*.md"):
        for target, _ in LINK.findall(page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
