"""A co-occurrence benchmark a CPU can learn (issue 13): real photo cut-outs pasted on real backgrounds, with
co-occurrence controlled per class pair.

    # a VOC-layout dataset every seco command reads as it is (train 2000, val 300 at 128 px by default)
    python -m benchmarks.cooc generate --source ../shared/data/coco-mini --out cooc/data --seed 0 \\
        --pairs dog:person --num-classes 6 --min-area 200

    # the digits tier: the bundled handwritten digits (about 180 per class) on coco-mini's photos
    python -m benchmarks.cooc generate --digits --source ../shared/data/coco-mini --out cooc/digits --seed 0 \\
        --pairs three:eight --num-classes 5 --size 96

Sources must not show the same photos under two vocabularies: voc-mini's ``coco_*`` images are coco-mini's, with
VOC names (``diningtable`` for ``dining table``), so give one of them. On coco-mini (106 photos), with
``--min-area 200`` and 5 classes, the train/val instances per class are: dog 9/1, person 91/20, cup 14/2,
dining table 20/4, bowl 11/2 (16 s). That is too few distinct objects per class for a model to generalise from
(stage 1 on one H200, 6000 steps: tag F1 0.68 on train, 0.27 on val), hence ``--digits``: 1,797 real handwritten
digits (benchmarks/data/README.md), 135-154 train and 27-44 val instances per class for 5 classes (9 s), in random
colours (``--colours random``: the class is in the shape alone) or one hue per class, each pair's two classes
sharing one (``--colours class``: colour tells the classes apart, except A from B).
Stage 1 (``pretrain --data DIR --out weights.pt``) trains the ViT SeCo will use on multi-label classification and
saves a state dict for ``seco train --backbone-weights``; ``baselines --data DIR`` scores the tag-only masks a pseudo
label must beat. ``run --source DIR --out DIR --seed S`` does one seed end to end and resumes (result_<variant>.json:
the export's scores, the baselines and their ratio, the CAM ROC-AUC, the co-occurrence confusion and what each of
SeCo's mechanisms did, per 100 steps). ``--context A`` (run and ablate) makes the context set, A on green backgrounds
in train, and adds A's spread onto them. ``ablate --source DIR --out DIR --seeds 0,1,2`` runs the five variants of
benchmarks/ablation.py per seed on one dataset and one stage 1 and writes ablation.md/.csv/.png, with the
per-seed paired differences and each mechanism's verdict. ``study --source DIR --out DIR`` is the mechanism study
(:mod:`.study`): the six variants on the class-colour set and on its context twin, five seeds, one command.

The stages are modules, each usable alone: :mod:`.instances` (cut-outs and backgrounds), :mod:`.dataset`
(``generate``: how a dataset is made), :mod:`.stage1` (``pretrain``), :mod:`.scores` (baselines, CAM ROC-AUC,
co-occurrence confusion, context spread), :mod:`.segmenters` (the segmenter step), :mod:`.spec` (:class:`RunSpec`,
the settings of ``run`` and ``ablate``), :mod:`.runs` (``run``, ``ablate``), :mod:`.tables` (the ablation tables,
paired differences and verdicts), :mod:`.study` (the mechanism study) and :mod:`.cli` (the commands).
"""

from .dataset import DatasetError, cooccurrence, generate, load_split, mirrors, val_photos
from .instances import DIGIT_NAMES, Instance, colour_by_class, components, digit_instances, find_backgrounds, paste
from .runs import ablate, activity_counts, run
from .scores import baselines, context_spread, localisation, pair_confusion, roc_auc
from .segmenters import fit_segmenter
from .spec import RunSpec
from .stage1 import pretrain, tile, untile
from .study import study, study_sets
from .tables import ABLATION_COLUMNS, paired_differences, verdict

__all__ = [
    "ABLATION_COLUMNS", "DIGIT_NAMES", "DatasetError", "Instance", "RunSpec", "ablate", "activity_counts", "baselines",
    "colour_by_class", "components", "context_spread", "cooccurrence", "digit_instances", "find_backgrounds",
    "fit_segmenter", "generate", "load_split", "localisation", "mirrors", "pair_confusion", "paired_differences",
    "paste", "pretrain", "roc_auc", "run", "study", "study_sets", "tile", "untile", "val_photos", "verdict",
]
