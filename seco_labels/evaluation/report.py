"""``seco report``: one static HTML page to judge the pseudo masks of an exported split (docs/evaluate.md).

``ART/report_<split>/index.html`` holds everything inline (CSS, JS and the data as JSON: no server, no network)
and links to the thumbnails it writes beside it (``thumbs/<id>.jpg``: the image with its pseudo mask over it) and,
where ``seco show`` drew them, to the full strips (``ART/show_<split>/<id>.png``). The page shows the export's
provenance and thresholds, the mIoU and FP/TP and the per-class table when the dataset has GT masks, and the
images sorted worst first (by IoU against the GT; else by the export's confidence score, docs/export.md
"Confidence"; else, for exports made before it was recorded, by the share of uncertain pixels), with a class filter.
The confidence is a sort key of the page whenever the export has it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..artifacts import open_split, report_dir, show_dir
from ..inference.predict_folder import overlay_image
from ..io import atomic_path, atomic_write_text
from .evaluate import evaluate_masks

__all__ = ["write_report", "PROVENANCE_KEYS"]

#: the recorded settings the page shows, in this order
PROVENANCE_KEYS = ("created", "package_version", "backbone", "backbone_weights", "backbone_weights_sha256",
                   "checkpoint_sha256", "cam_source", "tags_source",
                   "scales", "flip", "high_thre", "low_thre", "crf", "input_size", "dataset_root", "layout")


def _thumbnail(image: np.ndarray, mask: np.ndarray, path: Path, height: int) -> None:
    h, w = mask.shape
    size = (max(1, round(w * height / h)), height)
    with atomic_path(path) as tmp:
        Image.fromarray(overlay_image(image, mask)).resize(size, Image.BILINEAR).save(tmp, format="JPEG", quality=85)


def write_report(art: str | Path, split: str, *, out_dir: str | Path | None = None, data_root: str | Path | None = None,
                 layout: str | None = None, thumb_height: int = 160, progress: bool = False) -> Path:
    """Write the report of ``split`` of the artifact folder ``art``; returns the path of its ``index.html``.

    Ground truth is the dataset's masks where every image of the split has one (then each image gets its mIoU and
    the page the per-class table); otherwise images are ranked by their confidence, lowest first (or, for an export
    made before it was recorded, by their share of uncertain (255) pixels).

    Raises:
        ConfigError: no image root recorded nor given.
        DataError: missing or damaged masks or images (names them).
    """
    source = open_split(art, split)
    reader = source.open_images(root=data_root, layout=layout, root_option="--data-root DIR")
    held = source.ids()
    ids = [i for i in reader.ids if i in held]
    out = Path(out_dir) if out_dir else report_dir(source.folder, split)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    ignore = int(source.record.get("ignore_index", reader.ignore_index))
    bound = source.dataset.max_side or 0  # scored at the GT's own size, as seco evaluate does
    gt = source.open_images(root=data_root, layout=layout, max_side=0) if bound else reader
    scores = evaluate_masks(source.masks, gt, ids=ids, max_side=bound) if reader.has_masks else None
    show = show_dir(source.folder, split)
    confidence = source.confidences()  # {} for exports made before it was recorded
    images = []
    for image_id in tqdm(ids, desc=f"report {split}", unit="img", disable=not progress):
        mask = source.masks.load_mask(image_id)
        _thumbnail(reader.load_image(image_id), mask, out / "thumbs" / f"{image_id}.jpg", thumb_height)
        present = [int(c) for c in np.unique(mask) if c not in (0, ignore)]
        strip = show / f"{image_id}.png"
        images.append({
            "id": image_id, "thumb": f"thumbs/{image_id}.jpg",
            "strip": Path("..", show.name, strip.name).as_posix() if strip.is_file() else None,
            "iou": scores.per_image.get(image_id) if scores else None,
            "uncertain": round(float((mask == ignore).mean()), 4),
            "confidence": round(confidence[image_id].image, 4) if image_id in confidence else None,
            "classes": [reader.class_names[c] for c in present if c < len(reader.class_names)],
        })
    summary = scores.summary() if scores else {}
    data = {
        "split": split, "folder": str(source.folder), "masks": source.masks.name, "num_images": len(images),
        "has_gt": scores is not None, "has_confidence": bool(confidence), "class_names": list(reader.class_names[1:]),
        "summary": {k: summary.get(k) for k in ("miou", "miou_gt", "mean_precision", "mean_recall", "fp_tp",
                                                "fp_tp_bg", "fp_tp_fg", "pred_ignored_fraction")},
        "per_class": scores.per_class_rows() if scores else [],
        "provenance": {k: source.record[k] for k in PROVENANCE_KEYS if source.record.get(k) is not None},
        "images": images,
    }
    page = _PAGE.replace("__TITLE__", html.escape(f"seco_labels report: {split} of {source.folder.name}"))
    # "</" would end the <script> element early; JSON allows "<\/" for it
    page = page.replace("__DATA__", json.dumps(data, default=str).replace("</", "<\\/"))
    index = out / "index.html"
    atomic_write_text(index, page)
    return index


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } summary { font-weight: 600; margin-top: 1.2em; cursor: pointer; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.kv td { text-align: left; } .muted { color: #777; }
#controls { margin: 1em 0; display: flex; gap: 1.5em; align-items: center; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 12px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 6px; background: #fafafa; }
.card img { width: 100%; height: 160px; object-fit: contain; background: #eee; display: block; }
.card .id { font-family: monospace; font-size: 12px; word-break: break-all; }
.bad { color: #b00; font-weight: 600; }
</style>
</head>
<body>
<h1 id="title"></h1>
<p id="what" class="muted"></p>
<div id="scores"></div>
<div id="controls">
  <label>Sort <select id="sort"></select></label>
  <label>Class <select id="cls"><option value="">all classes</option></select></label>
  <span id="count" class="muted"></span>
</div>
<div id="grid"></div>
<details id="perclass"><summary>Per class</summary></details>
<details><summary>Export settings and provenance</summary><table class="kv" id="provenance"></table></details>
<script id="report-data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("report-data").textContent);
const pct = (x) => (x === null || x === undefined) ? "-" : (100 * x).toFixed(1);
const num = (x) => (x === null || x === undefined) ? "-" : Number(x).toFixed(2);
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function row(table, cells, header) {
  const tr = el("tr");
  for (const c of cells) tr.appendChild(el(header ? "th" : "td", {}, String(c)));
  table.appendChild(tr);
}
document.getElementById("title").textContent = "Pseudo masks of split " + DATA.split + " (" + DATA.num_images + " images)";
document.getElementById("what").textContent = "masks: " + DATA.masks +
  ". Thumbnails: the pseudo mask over the image (class colours; beige = uncertain, not trained on); click one for its seco show strip where there is one.";
const s = DATA.summary;
document.getElementById("scores").textContent = DATA.has_gt
  ? "mIoU " + pct(s.miou) + " (GT classes only " + pct(s.miou_gt) + "), precision " + pct(s.mean_precision) +
    ", recall " + pct(s.mean_recall) + ", FP/TP " + num(s.fp_tp) + " (bg " + num(s.fp_tp_bg) + ", fg " + num(s.fp_tp_fg) +
    "); " + pct(s.pred_ignored_fraction) + "% of labelled GT pixels left uncertain"
  : "No ground-truth masks for this split: images are ranked by " +
    (DATA.has_confidence ? "their confidence score, lowest first." : "their share of uncertain pixels.");
const prov = document.getElementById("provenance");
for (const [k, v] of Object.entries(DATA.provenance)) row(prov, [k, Array.isArray(v) ? v.join(", ") : v]);
if (!DATA.per_class.length) document.getElementById("perclass").remove();
else {
  const box = document.getElementById("perclass");
  const t = el("table", {id: "perclass-table"});
  row(t, ["class", "IoU", "precision", "recall", "FP/TP", "GT pixels", "predicted pixels"], true);
  for (const r of DATA.per_class) row(t, [r.name, pct(r.iou), pct(r.precision), pct(r.recall), num(r.fp_tp), r.gt_pixels, r.pred_pixels]);
  box.appendChild(t);
}
const SORTS = {
  iou: ["IoU, worst first", (a, b) => (a.iou ?? 2) - (b.iou ?? 2) || a.id.localeCompare(b.id)],
  confidence: ["confidence, lowest first", (a, b) => (a.confidence ?? 2) - (b.confidence ?? 2) || a.id.localeCompare(b.id)],
  uncertain: ["uncertain pixels, most first", (a, b) => b.uncertain - a.uncertain || a.id.localeCompare(b.id)],
  id: ["image id", (a, b) => a.id.localeCompare(b.id)],
};
const sortSel = document.getElementById("sort"), clsSel = document.getElementById("cls");
const sortKeys = [...(DATA.has_gt ? ["iou"] : []), ...(DATA.has_confidence ? ["confidence"] : []), "uncertain", "id"];
for (const key of sortKeys) sortSel.appendChild(el("option", {value: key}, SORTS[key][0]));
for (const name of DATA.class_names) clsSel.appendChild(el("option", {value: name}, name));
function render() {
  const grid = document.getElementById("grid");
  grid.replaceChildren();
  const shown = DATA.images.filter((im) => !clsSel.value || im.classes.includes(clsSel.value)).sort(SORTS[sortSel.value][1]);
  for (const im of shown) {
    const card = el("div", {class: "card", "data-id": im.id});
    const img = el("img", {src: im.thumb, alt: im.id, loading: "lazy"});
    if (im.strip) { const a = el("a", {href: im.strip}); a.appendChild(img); card.appendChild(a); } else card.appendChild(img);
    card.appendChild(el("div", {class: "id"}, im.id));
    const line = el("div");
    if (DATA.has_gt) line.appendChild(el("span", {class: im.iou !== null && im.iou < 0.3 ? "bad" : ""}, "IoU " + pct(im.iou) + "  "));
    line.appendChild(el("span", {}, "uncertain " + pct(im.uncertain) + "%"));
    if (im.confidence !== null) line.appendChild(el("span", {}, "  confidence " + num(im.confidence)));
    card.appendChild(line);
    card.appendChild(el("div", {class: "muted"}, im.classes.join(", ") || "(background only)"));
    grid.appendChild(card);
  }
  document.getElementById("count").textContent = shown.length + " of " + DATA.images.length + " images";
}
sortSel.addEventListener("change", render);
clsSel.addEventListener("change", render);
render();
</script>
</body>
</html>
"""
