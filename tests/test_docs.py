"""The user docs stay in sync with the code: docs/artifact-format.md, docs/export.md, docs/cli.md, and every
`seco ...` command shown in README.md and docs/*.md.

The reading snippets of docs/artifact-format.md are executed against a real (tiny) export. Each command line of
the docs is parsed and checked against the click commands of ``seco_labels.cli``: the command, its options, the
values of choice options and the ``--set`` keys. README's list of the docs pages is checked against docs/.
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
from dataclasses import asdict
from pathlib import Path

import click
import numpy as np
import pytest
from PIL import Image
from test_train import tiny_config  # tests/ is on sys.path (pytest prepend mode)

from seco_labels.artifacts import ROOT_ATTRS, ArtifactFile
from seco_labels.cli import cli
from seco_labels.config import SecoConfig, dotted_keys
from seco_labels.data.classes import VOC_CLASSES
from seco_labels.inference.export import SCALE_PRESETS, ExportOptions, export_split
from seco_labels.segmenters.config import SegmenterConfig

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


# -- every `seco ...` command of the docs is a real command with real options ------------------------------------
#: the pages whose commands are checked: README.md and every docs page (docs/cli.md included: its `$ seco X --help`
#: lines are commands too)
ROOT = DOCS.parent
COMMAND_DOCS = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
#: where a command line starts: `seco`, `python -m seco_labels.cli`, or anything ending in `-m seco_labels.cli`
#: (`torchrun --standalone --nproc_per_node 4 -m seco_labels.cli train ...`)
COMMAND_START = re.compile(r"^(?:seco|python3? -m seco_labels\.cli|torchrun\b.*?-m seco_labels\.cli)(?=\s|$)")
#: words a shell line may put before the command: a prompt, env assignments, nohup/time
PREFIX = re.compile(r"^(?:\$\s+|[A-Z_][A-Z0-9_]*=\S*\s+|nohup\s+|time\s+)*")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)?)`(?!`)")  # may wrap once, as prose lines do
#: the config whose keys `--set` takes, per command that has `--set` (a test keeps this complete)
SET_CONFIGS = {"train": SecoConfig, "demo": SecoConfig, "fit-segmenter": SegmenterConfig}


def _config_keys(command: str) -> set[str] | None:
    """The dotted keys `--set` accepts for ``command`` (None: the command has no `--set`)."""
    config = SET_CONFIGS.get(command)
    return None if config is None else dotted_keys(asdict(config()))


def _known_set_key(key: str, keys: set[str]) -> bool:
    """A `--set` key the config accepts: a leaf, a loss term given its weight (`loss.lig=0`), or a key inside a
    mapping-valued field (`model.kwargs.encoder_depth`)."""
    return (key in keys or f"{key}.weight" in keys
            or any(key.startswith(f"{k}.") for k in keys if k.endswith("kwargs")))


def _placeholder(token: str) -> bool:
    """A word that stands for a value the reader fills in: CAPS (`RUN_DIR`, `FILE|random`), `...`, `<split>`, a
    shell variable (`$arch`)."""
    return token.strip("[]") in ("", "...") or bool(re.search(r"[A-Z]{2,}|<|\$|\.\.\.|…", token))


def check_command(line: str) -> list[str]:
    """The problems of one command line (`seco train --preset demo ...`): an unknown command, an option the
    command lacks, a value outside an option's choices, an unknown `--set` key, a stray positional argument."""
    rest = COMMAND_START.sub("", line.strip(), count=1)
    try:
        words = shlex.split(rest)
    except ValueError:  # an unbalanced quote in prose: split on spaces
        words = rest.split()
    words = [w.strip("[]") if w.startswith("[") or w.endswith("]") else w for w in words]  # `[--crf]`: optional
    cmd: click.Command = cli
    name = "seco"
    if words and not words[0].startswith("-"):
        if _placeholder(words[0]):
            return []  # `seco COMMAND --help`
        sub = cli.commands.get(words[0])
        if sub is None:
            return [f"`{line}`: no command {words[0]!r} (seco has {', '.join(sorted(cli.commands))})"]
        cmd, name, words = sub, f"seco {words[0]}", words[1:]
    group = click.Context(cli, **cli.context_settings)  # the group's settings: -h as well as --help
    params = {opt: p for p in cmd.get_params(click.Context(cmd, parent=group))
              for opt in (*p.opts, *p.secondary_opts)}
    has_arguments = any(isinstance(p, click.Argument) for p in cmd.params)
    problems = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if re.match(r"^\d?[<>]|^&$", word):
            break  # a redirection or `&`: the command ended
        if not word.startswith("-") or re.fullmatch(r"-[\d.]+", word) or word == "-":
            if not has_arguments and not _placeholder(word):
                problems.append(f"`{line}`: {name} takes no argument {word!r}")
            continue
        opt, eq, value = word.partition("=")
        param = params.get(opt)
        if param is None:
            if not _placeholder(opt):
                problems.append(f"`{line}`: {name} has no option {opt} (it has {', '.join(sorted(params))})")
            if not eq and i < len(words) and not words[i].startswith("-"):
                i += 1  # its value, most likely: one mistake, one report
            continue
        if isinstance(param, click.Option) and (param.is_flag or param.count):
            continue
        if not eq:
            if i >= len(words):
                break  # `--layout` named in prose without its value
            value, i = words[i], i + 1
        if _placeholder(value):
            continue
        if isinstance(param.type, click.Choice):
            bad = [v for v in value.split("|") if v not in param.type.choices]
            if bad:
                problems.append(f"`{line}`: {opt} {value}: not one of {', '.join(param.type.choices)}")
        if opt == "--set":
            keys = _config_keys(cmd.name)
            key = value.split("=", 1)[0]
            if keys is not None and not _known_set_key(key, keys):
                problems.append(f"`{line}`: --set {key}: no such config key of {name}")
    return problems


def _commands_in_shell_line(line: str) -> list[str]:
    """The seco commands of one shell line (continuations joined, comment dropped): `a && seco x; seco y | tee`."""
    line = re.sub(r"(^|\s)#.*$", "", line)
    out = []
    for part in re.split(r"&&|\|\||;|(?<![\w-])\|(?![\w-])", line):
        part = PREFIX.sub("", part.strip())
        if COMMAND_START.match(part):
            out.append(part)
    return out


def doc_commands(text: str) -> list[tuple[int, str]]:
    """Every seco command of a markdown page, with its line number: the lines of fenced code blocks that run one
    (`\\` continuations joined, `$ ` prompts and comments dropped) and the inline code spans that start with one."""
    found: list[tuple[int, str]] = []
    lines = text.splitlines()
    prose = []  # the text outside code fences, blanked inside, so offsets keep their line numbers
    fenced, pending, start, indent = False, "", 0, 0
    for number, line in enumerate(lines, 1):
        if FENCE.match(line):
            fenced, pending = not fenced, ""
            indent = len(line) - len(line.lstrip())
            prose.append("")
            continue
        if not fenced:
            prose.append(line)
            continue
        prose.append("")
        if not pending:
            if len(line) - len(line.lstrip()) > indent:
                continue  # not a command line: a diagram's or a listing's text that mentions a command
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found += [(start, c) for c in _commands_in_shell_line(pending + line)]
        pending = ""
    body = "\n".join(prose)
    for match in INLINE.finditer(body):
        span = " ".join(match.group(1).replace("\\|", "|").split())
        span = PREFIX.sub("", span)
        if COMMAND_START.match(span):
            found.append((body.count("\n", 0, match.start()) + 1, span))
    return sorted(found)


@pytest.mark.parametrize("doc", COMMAND_DOCS, ids=lambda p: p.name)
def test_every_documented_command_exists_with_its_options(doc):
    problems = [f"{doc.name}:{n}: {p}" for n, line in doc_commands(doc.read_text()) for p in check_command(line)]
    assert problems == [], "\n".join(problems)


def test_the_docs_show_every_command():
    """The checker reads the commands it should: each seco command appears somewhere, and README shows the main ones."""
    shown = {line.split()[1] if line.startswith("seco ") else "" for doc in COMMAND_DOCS
             for _, line in doc_commands(doc.read_text()) if len(line.split()) > 1}
    assert set(cli.commands) - shown == set(), "commands no doc page shows"
    readme = {line.split()[1] for _, line in doc_commands((ROOT / "README.md").read_text())
              if line.startswith("seco ") and len(line.split()) > 1}
    assert {"demo", "train", "export-masks", "evaluate", "fit-segmenter"} <= readme


MISSPELLED_DOC = """\
Train with `seco train --preset demo --lyout folder` or, in a block:

```bash
$ seco train --preset demo --data-root my_data \\
    --split all --val-splt '' --out runs/mine   # a comment
pip install -e . && seco exprot-masks --checkpoint runs/mine/last.pt
torchrun --standalone --nproc_per_node 2 -m seco_labels.cli train --preset voc --set loss.lgi.weight=0
python -m seco_labels.cli fit-segmenter --labels gt --optimizer adma --out seg
seco show --pred art --split val extra
seco fit-segmenter --labels gt --set optim.head_lr_mult=10 --set optim.lr_mult=2 --out seg
```
"""


def test_the_command_checker_reports_misspellings():
    """A checker that passed everything would pass the docs too: each mistake here must be reported, on its line."""
    problems = [(n, p) for n, line in doc_commands(MISSPELLED_DOC) for p in check_command(line)]
    expected = [(1, "no option --lyout"), (4, "no option --val-splt"), (6, "no command 'exprot-masks'"),
                (7, "--set loss.lgi.weight: no such config key"), (8, "--optimizer adma: not one of"),
                (9, "takes no argument 'extra'"), (10, "--set optim.lr_mult: no such config key")]
    assert [n for n, _ in problems] == [n for n, _ in expected], problems
    for (_, problem), (_, fragment) in zip(problems, expected):
        assert fragment in problem


def test_every_command_with_set_has_its_config_keys():
    with_set = {name for name, c in cli.commands.items() if any("--set" in p.opts for p in c.params)}
    assert with_set == set(SET_CONFIGS), "SET_CONFIGS must name the config of every command that takes --set"


def test_the_command_checker_passes_real_commands():
    good = ["seco train --preset demo --layout folder --data-root my_data --split all --val-split '' --out runs/m",
            "seco train --preset voc|coco|small|demo --set loss.lig=0 --set train.amp=off",
            "seco export-masks --checkpoint RUN_DIR/last.pt --split SPLIT --out ART [--crf] ...",
            "seco fit-segmenter --set model.kwargs.encoder_depth=3 --labels gt --out seg",
            "seco COMMAND --help", "seco --version", "seco train -h", "seco show --pred art -n 16 > log.txt 2>&1"]
    assert [p for line in good for p in check_command(line)] == []


# -- README's list of the docs pages -----------------------------------------------------------------------------
def test_readme_lists_every_docs_page():
    """README's "Documentation" section links each docs/*.md page once (index.md and cli.md included), and nothing
    else under docs/."""
    section = _section((ROOT / "README.md").read_text(), "## Documentation")
    listed = re.findall(r"^- \[[^]]+\]\(docs/([\w.-]+\.md)\)", section, re.M)
    assert len(listed) == len(set(listed)), "a page is listed twice"
    assert sorted(listed) == sorted(p.name for p in DOCS.glob("*.md"))


def test_ci_runs_the_readmes_test_command():
    """.ci/run runs the README's second set-up command (with CI's pins and a quiet pip), not a variant of it."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"# 2\. install and pass the tests.*\n(.+)\n", readme).group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert command.replace("pip install -e", "pip install -q -c .ci/constraints.txt -e") in ci.splitlines()
