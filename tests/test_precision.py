"""Mixed precision on CPU (``train.amp=bf16``/``fp16``): the autocast path of training and export runs in CI, the
fp32 islands stay fp32 (CAM heads, PAR, CRF energy, losses), and bf16 moves the ROI masks by little."""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from seco_labels.runtime.checkpoint import load_checkpoint, load_seco
from seco_labels.runtime.device import batch_to_device
from seco_labels.runtime.precision import grad_scaler, in_fp32
from test_train import tiny_config  # tests/ is on sys.path (pytest prepend mode)

from seco_labels.artifacts import ArtifactFile
from seco_labels.inference import export as export_module
from seco_labels.inference.export import ExportOptions, export_split
from seco_labels.method import objective as objective_module
from seco_labels.method.cams import cam_to_roi_mask, multi_scale_cams
from seco_labels.method.energy import crf_energy_loss
from seco_labels.method.losses import cls_loss, label_to_affinity, lig_loss, lil_loss, ptc_loss, seg_loss
from seco_labels.method.objective import LOSS_TERMS, seco_step
from seco_labels.method.refine import PAR
from seco_labels.training.trainer import Trainer

HALF = (torch.bfloat16, torch.float16)


def _autocast(dtype: torch.dtype | None):
    return (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else contextlib.nullcontext


def _trainer(voc_root: Path, run_dir: Path, amp: str, crop: int = 64) -> Trainer:
    cfg = tiny_config(voc_root)
    cfg.train.amp, cfg.train.device, cfg.data.num_workers, cfg.data.crop_size = amp, "cpu", 0, crop
    return Trainer(cfg, run_dir, quiet=True)


@pytest.fixture(scope="module")
def trained(voc_root, tiny_checkpoint, tmp_path_factory) -> Trainer:
    """A bf16 trainer holding the weights of 4 fp32 steps, at step 4 (every term on, the final CAM for the ROI), on
    128 px crops.

    Trained weights, because the CAMs of a random ViT are near-zero sums of cancelling terms: their min-max
    normalisation magnifies any rounding, and the ROI of such a map means nothing in fp32 either. 128 px, because
    at 64 px scale 0.5 leaves a 2 x 2 token CAM stretched over the crop, where one token's rounding moves the
    threshold contour across whole regions (4 fp32 steps: 0.44% of the pixels at 64 px, 0.28% at 128 px).
    """
    trainer = _trainer(voc_root, tmp_path_factory.mktemp("bf16"), "bf16", crop=128)
    trainer.model.load_state_dict(load_checkpoint(tiny_checkpoint)["model"])  # ViT weights fit any crop size
    trainer.step = 4
    return trainer


def _record_rois(monkeypatch) -> list[torch.Tensor]:
    """Every ROI mask seco_step computes (objective.cam_to_roi_mask), in call order."""
    rois: list[torch.Tensor] = []

    def spy(*args, **kwargs):
        rois.append(cam_to_roi_mask(*args, **kwargs))
        return rois[-1]

    monkeypatch.setattr(objective_module, "cam_to_roi_mask", spy)
    return rois


def _matmul_dtypes(model) -> list[torch.dtype]:
    """Output dtypes of the encoder's first qkv projection, one per call (hook left on the copy of the model)."""
    seen: list[torch.dtype] = []
    model.encoder.vit.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def test_bf16_step_keeps_the_roi_masks_and_every_term_of_fp32(trained, monkeypatch):
    """Same weights, same batches: seco_step in fp32 and under CPU bf16 autocast, forward and backward."""
    rois = _record_rois(monkeypatch)
    loader = iter(trained.train_loader())
    cfg, diff, pixels = trained.cfg, 0, 0
    for _ in range(4):
        batch = batch_to_device(next(loader), trained.device)
        outs = {}
        for dtype in (None, torch.bfloat16):
            model = copy.deepcopy(trained.model)  # the step updates the memories and the teacher
            matmuls = _matmul_dtypes(model)
            out = seco_step(model, batch, trained.step, cfg, trained.par, autocast=_autocast(dtype))
            out.loss.backward()
            assert set(matmuls) == {dtype or torch.float32}  # the encoder really ran in bf16 (or fp32)
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
            outs[dtype] = out
        fp32, bf16 = outs[None], outs[torch.bfloat16]
        for name in LOSS_TERMS:
            assert fp32.terms[name] is not None and math.isfinite(bf16.terms[name]), (name, bf16.terms)
        for name in ("cls", "aux"):  # no crop or ROI in between: the encoder's rounding alone
            assert bf16.terms[name] == pytest.approx(fp32.terms[name], rel=2e-3, abs=1e-4), name
        roi32, roi16 = rois[-2:]
        diff, pixels = diff + int((roi32 != roi16).sum()), pixels + roi32.numel()
    assert diff / pixels < 0.005, f"bf16 changed {diff} of {pixels} ROI pixels"


def test_cam_heads_run_in_fp32_under_autocast(trained):
    """What the ROI path reads: raw CAMs, their multi-scale normalisation, and the pooled logits, all fp32.

    bf16 raw CAMs made multi_scale_cams normalise in bf16 (``cam - min`` cancels digits), which moved the ROI of
    several percent of the pixels on CPU."""
    model, x = trained.model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for dtype in HALF:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            out = model(x)
            cams = multi_scale_cams(model.cams, x, (1.0, 0.5), base=(out.cam, out.cam_aux))
            logits, _ = model.classify(x)
            assert model.encoder(x).tokens.dtype == torch.float32  # LayerNorm: fp32 under CPU autocast
            q = model.proj_head(out.cls_token)
        assert {out.cam.dtype, out.cam_aux.dtype, out.logits.dtype, logits.dtype} == {torch.float32}
        assert {cams[0].dtype, cams[1].dtype, q.dtype} == {torch.float32}
        with torch.no_grad():
            raw = torch.nn.functional.conv2d(out.tokens, model.classifier.weight)
        torch.testing.assert_close(out.cam, raw, rtol=0, atol=0)  # the fp32 conv of the (autocast) tokens


def test_fp16_step_on_cpu_goes_through_the_grad_scaler(voc_root, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # GradScaler("cuda") on a CPU warned and disabled itself
        trainer = _trainer(voc_root, tmp_path / "run", "fp16")
    scaler = trainer.scaler
    assert trainer.amp_dtype is torch.float16 and scaler.is_enabled() and scaler.get_scale() == 65536.0
    trainer.step = 4
    batch = next(iter(trainer.train_loader()))
    before = [p.detach().clone() for p in trainer.model.encoder.parameters()]
    matmuls = _matmul_dtypes(trainer.model)
    out = trainer.train_step(batch)
    assert set(matmuls) == {torch.float16}
    assert math.isfinite(float(out.loss.detach()))
    assert all(math.isfinite(v) for v in out.terms.values() if v is not None)
    stepped = any(not torch.equal(a, p) for a, p in zip(before, trainer.model.encoder.parameters()))
    # the scaler either found finite gradients and stepped, or skipped the step and halved the scale
    assert (stepped, scaler.get_scale()) in ((True, 65536.0), (False, 32768.0))
    assert trainer.state_dict()["scaler"]["scale"] == scaler.get_scale()  # checkpointed for the resume
    scores = trainer.validate()  # validation_scores() under fp16 autocast: 2 val images
    assert set(scores) == {"cam_miou", "cam_aux_miou", "seg_miou"} and all(0 <= v <= 1 for v in scores.values())


def test_grad_scaler_follows_the_device_and_dtype():
    cpu = torch.device("cpu")
    assert grad_scaler(cpu, torch.float16).is_enabled()
    assert not grad_scaler(cpu, torch.bfloat16).is_enabled() and not grad_scaler(cpu, None).is_enabled()
    assert grad_scaler(cpu, torch.float16)._device == "cpu"


#: two of the demo set's smallest val images: PAR at full size dominates an export's time on a CPU
SMALL_VAL = ("coco_000000000260", "coco_000000000536")


def _small_val(voc_root: Path, root: Path) -> Path:
    """A VOC-layout root whose split ``val`` is :data:`SMALL_VAL` (symlinks)."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClassAug", "cls_labels_onehot.npy"):
        (root / name).symlink_to(voc_root / name)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(SMALL_VAL) + "\n")
    return root


def test_bf16_export_on_cpu_matches_fp32(tiny_checkpoint, voc_root, tmp_path, monkeypatch):
    """Same checkpoint, same images: the masks and CAMs of a bf16 export on CPU against fp32 (CAMs at 128 px: at the
    training crop of 64 px a 4 x 4 token CAM stretched over a whole image puts 0.5% of the pixels near a threshold)."""
    root = _small_val(voc_root, tmp_path / "data")
    matmuls: list[torch.dtype] = []

    def load_and_hook(*args, **kwargs):
        model, cfg = load_seco(*args, **kwargs)
        matmuls[:] = []
        model.encoder.vit.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: matmuls.append(o.dtype))
        return model, cfg

    monkeypatch.setattr(export_module, "load_seco", load_and_hook)
    masks, cams = {}, {}
    for amp in ("off", "bf16"):
        opts = ExportOptions(scales=(1.0, 0.5), amp=amp, device="cpu", num_workers=0, input_size=128)
        result = export_split(tiny_checkpoint, "val", tmp_path / amp, data_root=str(root), options=opts, quiet=True)
        assert result["exported"] == 2 and result["bad"] == []
        assert set(matmuls) == {torch.bfloat16 if amp == "bf16" else torch.float32}  # the encoder ran in bf16
        masks[amp] = {p.stem: np.asarray(Image.open(p)) for p in (tmp_path / amp / "masks_val").glob("*.png")}
        art = ArtifactFile(tmp_path / amp / "cams_val.h5")
        cams[amp] = {i: art.load_cam(i)[0] for i in SMALL_VAL}
        art.close()
    assert sorted(masks["bf16"]) == sorted(SMALL_VAL)
    changed = sum(int((masks["off"][i] != masks["bf16"][i]).sum()) for i in SMALL_VAL)
    assert changed / sum(masks["off"][i].size for i in SMALL_VAL) < 0.005
    assert max(float(np.abs(cams["off"][i] - cams["bf16"][i]).max()) for i in SMALL_VAL) < 0.02


# -- the fp32 islands, fed half-precision tensors or called under autocast ------------------------------------


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", HALF)
def test_par_on_half_images_is_the_fp32_result(dtype):
    """fp16 PAR divided by ``std + 1e-8``, and 1e-8 is 0 in fp16: a flat region gave NaN."""
    par = PAR((1, 2), 5)
    images = torch.full((1, 3, 16, 16), 0.5)
    images[..., 8:] = 0.9  # flat halves: std 0 away from the edge
    masks = _rand(1, 2, 16, 16)
    out = par(images.to(dtype), masks.to(dtype))
    expected = par(images.to(dtype).float(), masks.to(dtype).float())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("energy_filter", ["lattice", "exact"])
@pytest.mark.parametrize("dtype", HALF)
def test_crf_energy_under_autocast_is_the_fp32_value(dtype, energy_filter):
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(2, 3, 32, 32, generator=g) * 255).round()
    probs = torch.randn(2, 5, 32, 32, generator=g).softmax(1).requires_grad_()
    roi, label = torch.ones(2, 32, 32), torch.randint(0, 5, (2, 32, 32), generator=g)
    kwargs = dict(filter=energy_filter, weight=1.0)
    expected = crf_energy_loss(image, probs, roi, label, **kwargs)
    (grad32,) = torch.autograd.grad(expected, probs)
    with torch.autocast("cpu", dtype=dtype):
        value = crf_energy_loss(image, probs, roi, label, **kwargs)
    (grad,) = torch.autograd.grad(value, probs)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, grad32, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", HALF)
def test_losses_of_half_inputs_are_the_fp32_values(dtype):
    """LIL and LIG at tau = 0.08 (logits up to 12.5, exact-1.0 tests), the PTC cosines and the seg / cls losses:
    half-precision inputs give the fp32 loss of the same (rounded) numbers, inside an autocast region too."""
    n, m, d = 12, 20, 16
    q = torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(1)), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(m, d, generator=torch.Generator().manual_seed(2)), dim=1)
    q_tags, key_tags = torch.arange(n) % 4 - 1, torch.arange(m) % 4 - 1
    protos = keys[:3]
    tokens = torch.randn(2, d, 4, 4, generator=torch.Generator().manual_seed(3))
    tokens[0, :, 0, 0] = 0  # a zero token: the 1e-8 of the cosine's normalisation underflows in fp16
    aff = label_to_affinity(torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(4)))
    seg = 3 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    label = torch.randint(0, 4, (2, 8, 8), generator=torch.Generator().manual_seed(6))
    logits, tags = 5 * torch.randn(2, 4, generator=torch.Generator().manual_seed(7)), torch.tensor([[1., 0, 1, 0]] * 2)
    calls = {
        "lil": lambda c: lil_loss(c(q), c(keys), q_tags, key_tags, 0.08)[0],
        "lig": lambda c: lig_loss(c(q), c(protos), q_tags.clamp(min=-1, max=3), 0.08),
        "ptc": lambda c: ptc_loss(c(tokens), aff),
        "seg": lambda c: seg_loss(c(seg), label),
        "cls": lambda c: cls_loss(c(logits), tags),
    }
    for name, call in calls.items():
        expected = call(lambda t: t.to(dtype).float())
        with torch.autocast("cpu", dtype=dtype):
            value = call(lambda t: t.to(dtype))
        assert value.dtype == torch.float32 and torch.isfinite(value), name
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7, msg=name)


def test_in_fp32_keeps_fp64_and_non_tensors():
    seen = []

    @in_fp32
    def f(a, b, *, c, scale):
        seen.append((a.dtype, b.dtype, c.dtype, scale))
        return a

    f(torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.bfloat16), c=torch.zeros(1, dtype=torch.long),
      scale=0.5)
    assert seen == [(torch.float64, torch.float32, torch.long, 0.5)]
