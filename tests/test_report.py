"""seco report: the page's data, and the page itself in a real headless browser (Chromium, where installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter

import pytest
from click.testing import CliRunner

from seco_labels.artifacts import read_confidence
from seco_labels.cli import cli
from seco_labels.data import build_reader
from seco_labels.evaluation.evaluate import evaluate_masks

#: the browsers the test looks for, in order
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


@pytest.fixture(scope="module")
def report(tiny_checkpoint, voc_root, tmp_path_factory):
    """An export of voc-mini's val split, two seco show strips, and the report of it."""
    art = tmp_path_factory.mktemp("report-art")
    runner = CliRunner()
    res = runner.invoke(cli, ["export-masks", "--checkpoint", str(tiny_checkpoint), "--split", "val", "--out", str(art),
                              "--data-root", str(voc_root), "--scales", "1.0", "--no-flip", "--num-workers", "0", "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["show", "--pred", str(art), "--split", "val", "-n", "2", "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["report", str(art), "--split", "val", "-q"])
    assert res.exit_code == 0, res.output
    index = art / "report_val" / "index.html"
    assert res.output.strip() == f"wrote {index}"
    return art, index


def _data(index):
    text = index.read_text()
    found = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', text, re.S)
    return json.loads(found.group(1))


def _expected_order(images, key):
    if key in ("iou", "confidence"):  # lowest first, images without one last
        return [im["id"] for im in sorted(images, key=lambda im: (2 if im[key] is None else im[key], im["id"]))]
    return sorted(im["id"] for im in images)


def test_the_page_holds_the_scores_the_settings_and_every_image(report, voc_root):
    art, index = report
    data = _data(index)
    reader = build_reader("voc", voc_root, "val")
    assert [im["id"] for im in data["images"]] == reader.ids and data["has_gt"]
    scores = evaluate_masks(art / "masks_val", reader)
    assert data["summary"]["miou"] == pytest.approx(scores.summary()["miou"])
    assert [r["name"] for r in data["per_class"]] == reader.class_names
    assert data["provenance"]["high_thre"] > data["provenance"]["low_thre"] and data["provenance"]["layout"] == "voc"
    for im in data["images"]:
        assert (index.parent / im["thumb"]).is_file()
        assert im["iou"] == pytest.approx(scores.per_image[im["id"]]) if im["iou"] is not None else True
        assert 0 <= im["uncertain"] <= 1
        assert im["confidence"] == pytest.approx(read_confidence(art, "val")[im["id"]].image, abs=1e-4)
    assert data["has_confidence"]
    strips = [im["strip"] for im in data["images"] if im["strip"]]
    assert len(strips) == 2 and all((index.parent / s).is_file() for s in strips)
    assert "<script src" not in index.read_text() and "http" not in index.read_text().split("<script id")[0]


#: runs in the page after its own script: sorts, filters, checks every image and link, reports into the DOM
HARNESS = """
<script>
window.addEventListener("load", async () => {
  const ids = () => [...document.querySelectorAll("#grid .card")].map((c) => c.dataset.id);
  const out = {errors: window.__errors, sorts: [...document.getElementById("sort").options].map((o) => o.value)};
  out.initial = ids();
  const load = (src) => new Promise((ok) => { const i = new Image(); i.onload = () => ok(i.naturalWidth > 0 ? null : src);
                                                 i.onerror = () => ok(src); i.src = src; });
  const srcs = [...document.querySelectorAll("#grid img")].map((i) => i.getAttribute("src"))
    .concat([...document.querySelectorAll("#grid a")].map((a) => a.getAttribute("href")));
  out.checked = srcs.length;
  out.broken = (await Promise.all(srcs.map(load))).filter((x) => x);
  const sort = document.getElementById("sort");
  sort.value = "id"; sort.dispatchEvent(new Event("change"));
  out.by_id = ids();
  sort.value = "confidence"; sort.dispatchEvent(new Event("change"));
  out.by_confidence = ids();
  sort.value = "id"; sort.dispatchEvent(new Event("change"));
  const cls = document.getElementById("cls");
  cls.value = "__CLASS__"; cls.dispatchEvent(new Event("change"));
  out.filtered = ids();
  out.count = document.getElementById("count").textContent;
  const pre = document.createElement("pre"); pre.id = "harness"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""
#: first thing in <head>: records uncaught errors and console.error calls of the page's own script
ERROR_HOOK = """<script>
window.__errors = [];
window.addEventListener("error", (e) => window.__errors.push(String(e.message || e)));
const __consoleError = console.error;
console.error = (...a) => { window.__errors.push(a.join(" ")); __consoleError(...a); };
</script>"""


def _run_in_browser(index, tmp_path):
    """The page at ``index`` run in headless Chromium with :data:`HARNESS`: (its data, what the harness found)."""
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no Chromium/Chrome installed (e.g. apt install chromium)")
    data = _data(index)
    common = Counter(c for im in data["images"] for c in im["classes"]).most_common(1)[0][0]
    page = index.read_text().replace("<head>", "<head>\n" + ERROR_HOOK, 1)
    page = page.replace("</body>", HARNESS.replace("__CLASS__", common) + "</body>", 1)
    probe = index.parent / "probe.html"  # beside the page: the same relative links
    probe.write_text(page)
    try:
        # no background connections: this machine's closed network refuses them, many at a time
        run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              "--no-first-run", f"--user-data-dir={tmp_path / 'browser-profile'}",
                              "--virtual-time-budget=20000", "--window-size=1280,2000", "--dump-dom",
                              probe.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="harness">(.*?)</pre>', run.stdout, re.S)
    assert found, f"the page did not finish loading: {run.stderr[-2000:]}"
    out = json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    return data, out, common


def test_the_page_sorts_filters_and_resolves_in_a_real_browser(report, tmp_path):
    art, index = report
    data, out, common = _run_in_browser(index, tmp_path)
    assert out["errors"] == []
    assert out["sorts"] == ["iou", "confidence", "uncertain", "id"]
    assert out["initial"] == _expected_order(data["images"], "iou")  # worst IoU first
    assert out["by_id"] == _expected_order(data["images"], "id")
    assert out["by_confidence"] == _expected_order(data["images"], "confidence")
    assert out["by_confidence"] != out["by_id"]  # the scores differ enough to reorder the images
    with_class = [im["id"] for im in data["images"] if common in im["classes"]]
    assert out["filtered"] == sorted(with_class) and out["count"] == f"{len(with_class)} of {len(data['images'])} images"
    assert out["checked"] == len(data["images"]) + 2 and out["broken"] == []


def test_without_gt_the_page_sorts_by_confidence_first(report, voc_root, tmp_path):
    """A copy of the images without their GT masks: the report ranks by the export's confidence, lowest first."""
    art, _ = report
    root = tmp_path / "no-gt"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    shutil.copy(voc_root / "ImageSets" / "Segmentation" / "val.txt", root / "ImageSets" / "Segmentation")
    shutil.copytree(voc_root / "JPEGImages", root / "JPEGImages")
    out_dir = tmp_path / "report"
    res = CliRunner().invoke(cli, ["report", str(art), "--split", "val", "--data-root", str(root), "--out",
                                   str(out_dir), "-q"])
    assert res.exit_code == 0, res.output
    data, out, _ = _run_in_browser(out_dir / "index.html", tmp_path)
    assert not data["has_gt"] and data["has_confidence"] and data["per_class"] == []
    assert out["errors"] == [] and out["sorts"] == ["confidence", "uncertain", "id"]
    assert out["initial"] == out["by_confidence"] == _expected_order(data["images"], "confidence")
