"""Fuzzing the readers: every corrupted or odd input gives a correct result or one of the project's errors.

Inputs are the bundled demo images, masks and labels file, and a ``cams_<split>.h5`` built with the project's own
:class:`~seco_labels.artifacts.ArtifactWriter`, damaged in seeded, reproducible ways (truncation, bit flips,
zeroed or swapped blocks, appended junk) plus hand-made odd files (wrong modes, 0-pixel and huge dimensions in a
header, masks with values outside the classes, labels of the wrong shape or type, pickles of other objects,
artifacts with wrong attributes). They are read through the public readers (``build_reader``, ``ArtifactFile``,
``open_pseudo_labels``, ``PngMaskFolder``, ``open_ground_truth`` + ``evaluate_masks``). A result must be
well-formed (shape, dtype, value range); anything raised must be a :class:`~seco_labels.errors.SecoError`.

Every case runs under a time guard (``signal.alarm`` for Python-level loops, ``faulthandler`` as a backstop that
ends the run with a traceback if C code hangs), so a hang fails instead of stalling the suite.

The quick part (the ``test_fuzz_quick`` and ``test_odd_*`` cases) runs in the normal suite. ``test_fuzz_more``
(more seeds, marked ``slow`` and ``fuzz_extended``) runs when markers are chosen, e.g. ``pytest -m slow
tests/test_fuzz.py``; a plain ``pytest -q`` (what CI runs) skips it (tests/conftest.py).
"""

from __future__ import annotations

import faulthandler
import io
import json
import pickle
import signal
import struct
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
import pytest
from PIL import Image

from seco_labels.artifacts import ArtifactFile, ArtifactWriter, open_pseudo_labels, read_manifest
from seco_labels.data import VOC_CLASSES, build_reader, id_problem, load_tags_file, voc_palette
from seco_labels.errors import SecoError
from seco_labels.evaluation.evaluate import PngMaskFolder, evaluate_masks, open_ground_truth

K = 21
#: seconds one case may take (a 500x375 JPEG decodes in milliseconds; HDF5 reads of 3 images as fast)
CASE_LIMIT_S = 20


@contextmanager
def time_guard(seconds: int = CASE_LIMIT_S) -> Iterator[None]:
    """Fail a case that runs longer than ``seconds``; restores the previous handler and timers on exit."""

    def _expired(signum, frame):
        raise TimeoutError(f"case ran longer than {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(seconds)
    # a hang inside C code never returns to Python to see the alarm: dump the stacks and end the run instead
    faulthandler.dump_traceback_later(seconds * 3, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def expect_ok_or_seco(op: Callable[[], object], check: Callable[[object], None] | None = None) -> BaseException | None:
    """Run ``op``: a SecoError is an accepted outcome (returned); any other exception fails the case; a result is
    passed to ``check``."""
    try:
        result = op()
    except SecoError as e:
        assert str(e).strip(), "a SecoError without a message"
        return e
    if check is not None:
        check(result)
    return None


# -- the pristine corpus ---------------------------------------------------------------------------------------------


class Corpus:
    """Bytes of real files, from which each case builds its own dataset folder."""

    def __init__(self, voc_root: Path, work: Path) -> None:
        reader = build_reader("voc", voc_root, "train")
        self.ids = reader.ids[:3]
        self.jpeg = {i: (voc_root / "JPEGImages" / f"{i}.jpg").read_bytes() for i in self.ids}
        self.mask = {i: (voc_root / "SegmentationClassAug" / f"{i}.png").read_bytes() for i in self.ids}
        self.png = {}
        for i in self.ids:
            buf = io.BytesIO()
            Image.fromarray(reader.load_image(i)).save(buf, format="PNG", compress_level=1)
            self.png[i] = buf.getvalue()
        tags = load_tags_file(voc_root / "cls_labels_onehot.npy")
        self.tags = {i: tags[i] for i in self.ids}
        buf = io.BytesIO()
        np.save(buf, self.tags, allow_pickle=True)
        self.labels = buf.getvalue()
        self.split = ("\n".join(self.ids) + "\n").encode()
        # an artifact written by the project's writer: real masks as pseudo masks, CAMs of the tagged classes
        root = self.dataset(work / "pristine")
        art = work / "art"
        attrs = {"dataset_root": str(root), "layout": "voc", "class_names": list(VOC_CLASSES), "num_classes": K,
                 "ignore_index": 255, "scales": [1.0], "flip": False, "high_thre": 0.7, "low_thre": 0.25,
                 "config": {"model": {"backbone": "vit_tiny_patch16_224"}}}
        with ArtifactWriter(art, "train", attrs) as w:
            for i in self.ids:
                mask = reader.load_mask(i)
                keys = np.nonzero(self.tags[i])[0] + 1
                cam = np.stack([(mask == k).astype(np.float32) * 0.9 for k in keys]) if len(keys) else \
                    np.zeros((0, *mask.shape), np.float32)
                w.add(i, cam, keys, mask)
        self.h5 = (art / "cams_train.h5").read_bytes()
        self.pred = {i: (art / "masks_train" / f"{i}.png").read_bytes() for i in self.ids}
        self.manifest = (art / "manifest_train.json").read_bytes()

    def dataset(self, root: Path, *, images: str = "jpeg", labels: bool = True) -> Path:
        """A VOC copy of the corpus at ``root`` (images as JPEG, or PNG bytes under the .jpg names)."""
        (root / "ImageSets" / "Segmentation").mkdir(parents=True)
        (root / "JPEGImages").mkdir()
        (root / "SegmentationClassAug").mkdir()
        source = self.jpeg if images == "jpeg" else self.png
        for i in self.ids:
            (root / "JPEGImages" / f"{i}.jpg").write_bytes(source[i])
            (root / "SegmentationClassAug" / f"{i}.png").write_bytes(self.mask[i])
        (root / "ImageSets" / "Segmentation" / "train.txt").write_bytes(self.split)
        if labels:
            (root / "cls_labels_onehot.npy").write_bytes(self.labels)
        return root

    def artifact(self, art: Path, root: Path, *, h5: bytes | None = None, png: bool = True) -> Path:
        """An artifact folder: ``cams_train.h5`` (``h5`` bytes, default the pristine file), the PNG masks and the
        manifest, its dataset_root pointing at ``root``."""
        art.mkdir(parents=True)
        if h5 is not None:
            (art / "cams_train.h5").write_bytes(h5)
        if png:
            (art / "masks_train").mkdir()
            for i in self.ids:
                (art / "masks_train" / f"{i}.png").write_bytes(self.pred[i])
        manifest = json.loads(self.manifest)
        manifest["dataset_root"] = str(root)
        (art / "manifest_train.json").write_text(json.dumps(manifest))
        return art


@pytest.fixture(scope="module")
def corpus(voc_root, tmp_path_factory) -> Corpus:
    return Corpus(voc_root, tmp_path_factory.mktemp("fuzz_corpus"))


# -- mutations ----------------------------------------------------------------------------------------------------

MUTATIONS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "truncate": lambda b, r: b[: int(r.integers(0, len(b)))],
    "truncate_head": lambda b, r: b[: int(r.integers(0, min(len(b), 300)))],
    "truncate_tail": lambda b, r: b[: len(b) - int(r.integers(1, min(len(b), 64)))],
    "flip1": lambda b, r: _flip(b, r, 1),
    "flip8": lambda b, r: _flip(b, r, 8),
    "flip64": lambda b, r: _flip(b, r, 64),
    "flip_head": lambda b, r: _flip(b, r, 4, limit=600),
    "zero_block": lambda b, r: _zero(b, r),
    "swap_blocks": lambda b, r: _swap(b, r),
    "junk_tail": lambda b, r: b + r.integers(0, 256, int(r.integers(1, 4096)), dtype=np.uint8).tobytes(),
}


def _flip(data: bytes, rng: np.random.Generator, n: int, limit: int | None = None) -> bytes:
    arr = np.frombuffer(data, np.uint8).copy()
    pos = rng.integers(0, min(len(arr), limit or len(arr)), n)
    arr[pos] ^= (1 << rng.integers(0, 8, n)).astype(np.uint8)
    return arr.tobytes()


def _zero(data: bytes, rng: np.random.Generator) -> bytes:
    arr = np.frombuffer(data, np.uint8).copy()
    start = int(rng.integers(0, len(arr)))
    arr[start: start + int(rng.integers(1, 2048))] = 0
    return arr.tobytes()


def _swap(data: bytes, rng: np.random.Generator) -> bytes:
    n = int(rng.integers(16, 512))
    a, b = sorted(int(x) for x in rng.integers(0, max(1, len(data) - n), 2))
    if b - a < n:
        return data[::-1]
    return data[:a] + data[b: b + n] + data[a + n: b] + data[a: a + n] + data[b + n:]


# -- what a correct result looks like ------------------------------------------------------------------------------


def _check_rgb(size: tuple[int, int] | None) -> Callable[[object], None]:
    def check(img: object) -> None:
        assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert img.shape[0] > 0 and img.shape[1] > 0
        if size is not None:
            assert img.shape[:2] == size
    return check


def _check_mask(mask: object) -> None:
    assert isinstance(mask, np.ndarray) and mask.ndim == 2 and mask.dtype == np.uint8 and mask.size
    assert (((mask >= 0) & (mask < K)) | (mask == 255)).all()


def _check_tags(tags: object) -> None:
    assert isinstance(tags, np.ndarray) and tags.dtype == np.float32 and tags.shape == (K - 1,)
    assert np.isfinite(tags).all() and tags.min() >= 0 and tags.max() <= 1


def _read_images(root: Path, ids: list[str]) -> None:
    reader = expect_ok_or_seco(lambda: build_reader("voc", root, "train", require_tags=False))
    if isinstance(reader, BaseException):
        return
    r = build_reader("voc", root, "train", require_tags=False)
    for i in ids:
        size: list[tuple[int, int]] = []
        expect_ok_or_seco(lambda: r.image_size(i), lambda s: size.append(s))
        expect_ok_or_seco(lambda: r.load_image(i), _check_rgb(size[0] if size else None))


def _read_masks(root: Path, ids: list[str]) -> None:
    r = build_reader("voc", root, "train")
    for i in ids:
        expect_ok_or_seco(lambda: r.load_mask(i), _check_mask)
    no_labels = build_reader("voc", root, "train", require_tags=False)
    no_labels.labels_file, no_labels._tags = None, {}  # tags derived from the (damaged) masks
    for i in ids:
        expect_ok_or_seco(lambda: no_labels.tags(i), _check_tags)
    gt = expect_ok_or_seco(lambda: open_ground_truth(root, "train"))
    assert gt is None or isinstance(gt, SecoError)


def _read_labels(root: Path, ids: list[str]) -> None:
    def check(reader: object) -> None:
        for i in ids:
            _check_tags(reader.tags(i))  # type: ignore[attr-defined]
    expect_ok_or_seco(lambda: build_reader("voc", root, "train"), check)
    expect_ok_or_seco(lambda: load_tags_file(root / "cls_labels_onehot.npy"),
                      lambda t: [_check_tags(v) if v.shape == (K - 1,) else None for v in t.values()])


def _read_split(root: Path, ids: list[str]) -> None:
    def check(reader: object) -> None:
        assert reader.ids and all(id_problem(i) is None for i in reader.ids)  # type: ignore[attr-defined]
    expect_ok_or_seco(lambda: build_reader("voc", root, "train", require_images=False, require_tags=False), check)


def _read_artifact(art: Path, root: Path, ids: list[str]) -> None:
    """Every reading path of an artifact folder: ArtifactFile, open_pseudo_labels (h5, and PNGs), evaluate."""
    h5 = art / "cams_train.h5"
    if h5.is_file():
        def use(f: ArtifactFile) -> None:
            have = expect_ok_or_seco(f.ids)
            if isinstance(have, SecoError):
                return
            for i in sorted(f.ids()) + ["not-there"]:
                expect_ok_or_seco(lambda: f.load_mask(i), lambda m: _check_mask_shape(m))
                expect_ok_or_seco(lambda: f.load_cam(i), _check_cam)
            gt = open_ground_truth(root, "train")
            expect_ok_or_seco(lambda: evaluate_masks(f, gt))
            f.close()
        expect_ok_or_seco(lambda: ArtifactFile(h5), use)
        expect_ok_or_seco(lambda: open_pseudo_labels(h5, data_root=root, with_cams=True), _use_dataset)
    expect_ok_or_seco(lambda: open_pseudo_labels(art, "train", data_root=root), _use_dataset)
    if (art / "masks_train").is_dir():
        folder = PngMaskFolder(art / "masks_train")
        for i in ids:
            expect_ok_or_seco(lambda: folder.load_mask(i), _check_mask_shape)
        expect_ok_or_seco(lambda: evaluate_masks(folder, open_ground_truth(root, "train")))


def _check_mask_shape(mask: object) -> None:
    # a mask source returns what the file holds (values are checked by evaluate_masks); shape and type must hold
    assert isinstance(mask, np.ndarray) and mask.ndim == 2 and mask.dtype.kind in "iu" and mask.size


def _check_cam(item: object) -> None:
    cam, keys = item  # type: ignore[misc]
    assert cam.dtype == np.float32 and cam.ndim == 3 and keys.dtype == np.int64 and keys.shape == (cam.shape[0],)


def _use_dataset(ds: object) -> None:
    for index in range(len(ds)):  # type: ignore[arg-type]
        def check(item: object) -> None:
            image, mask = item[:2]  # type: ignore[index]
            assert image.dtype.is_floating_point is False and image.shape[0] == 3
            assert mask.shape == image.shape[1:]
            valid = ((mask >= 0) & (mask < K)) | (mask == 255)
            assert bool(valid.all())
        expect_ok_or_seco(lambda: ds[index], check)  # type: ignore[index]


# -- the random cases ----------------------------------------------------------------------------------------------

TARGETS = ("jpeg", "png", "mask", "labels", "split", "h5", "pred_png", "manifest")


def run_case(corpus: Corpus, tmp: Path, target: str, mutation: str, seed: int) -> None:
    """Damage one file of a fresh copy (``target``, with ``mutation`` seeded by ``seed``) and read it back."""
    rng = np.random.default_rng([TARGETS.index(target), list(MUTATIONS).index(mutation), seed])
    damage = MUTATIONS[mutation]
    i = corpus.ids[int(rng.integers(0, len(corpus.ids)))]
    root = corpus.dataset(tmp / "data", images="png" if target == "png" else "jpeg")
    with time_guard():
        if target in ("jpeg", "png"):
            path = root / "JPEGImages" / f"{i}.jpg"
            path.write_bytes(damage(path.read_bytes(), rng))
            _read_images(root, corpus.ids)
        elif target == "mask":
            path = root / "SegmentationClassAug" / f"{i}.png"
            path.write_bytes(damage(path.read_bytes(), rng))
            _read_masks(root, corpus.ids)
        elif target == "labels":
            path = root / "cls_labels_onehot.npy"
            path.write_bytes(damage(path.read_bytes(), rng))
            _read_labels(root, corpus.ids)
        elif target == "split":
            path = root / "ImageSets" / "Segmentation" / "train.txt"
            path.write_bytes(damage(path.read_bytes(), rng))
            _read_split(root, corpus.ids)
        elif target == "h5":
            art = corpus.artifact(tmp / "art", root, h5=damage(corpus.h5, rng), png=False)
            _read_artifact(art, root, corpus.ids)
        elif target == "pred_png":
            art = corpus.artifact(tmp / "art", root)
            path = art / "masks_train" / f"{i}.png"
            path.write_bytes(damage(path.read_bytes(), rng))
            _read_artifact(art, root, corpus.ids)
        elif target == "manifest":
            art = corpus.artifact(tmp / "art", root, png=True)
            path = art / "manifest_train.json"
            path.write_bytes(damage(path.read_bytes(), rng))
            expect_ok_or_seco(lambda: read_manifest(art, "train"), lambda m: isinstance(m, dict) or m is None)
            _read_artifact(art, root, corpus.ids)


def _cases(seeds: range) -> list[tuple[str, str, int]]:
    return [(t, m, s) for t in TARGETS for m in MUTATIONS for s in seeds]


QUICK = _cases(range(2))  # 8 targets x 10 mutations x 2 seeds = 160 cases
MORE = _cases(range(2, 12))  # 800 more


@pytest.mark.parametrize("target, mutation, seed", QUICK)
def test_fuzz_quick(corpus, tmp_path, target, mutation, seed):
    run_case(corpus, tmp_path, target, mutation, seed)


@pytest.mark.slow
@pytest.mark.fuzz_extended
@pytest.mark.parametrize("target, mutation, seed", MORE)
def test_fuzz_more(corpus, tmp_path, target, mutation, seed):
    run_case(corpus, tmp_path, target, mutation, seed)


# -- odd files, made by hand ---------------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (valid CRC), with one tiny IDAT: the header is all PIL reads
    at open, so huge or 0 dimensions reach the checks without allocating anything."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
            + chunk(b"IEND", b""))


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its SOF header edited to claim ``width`` x ``height``."""
    data = bytearray(jpeg)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            data[at + 5: at + 9] = struct.pack(">HH", height, width)
            return bytes(data)
    raise AssertionError("no SOF marker")


def _bmp_with_size(width: int, height: int) -> bytes:
    img = Image.new("RGB", (4, 4), (10, 20, 30))
    buf = io.BytesIO()
    img.save(buf, format="BMP")
    data = bytearray(buf.getvalue())
    data[18:26] = struct.pack("<ii", width, height)  # BITMAPINFOHEADER width, height
    return bytes(data)


def _saved(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


ODD_IMAGES: dict[str, tuple[Callable[[bytes], bytes], str | None]] = {
    # name: (bytes from the pristine JPEG, the message expected; None = must read)
    "png_0_width": (lambda j: _png_header_only(0, 5), "is unreadable"),
    "png_0_height": (lambda j: _png_header_only(5, 0), "is unreadable"),
    "bmp_0_width": (lambda j: _bmp_with_size(0, 4), "image"),
    "bmp_0_height": (lambda j: _bmp_with_size(4, 0), "image"),
    "png_bomb_error": (lambda j: _png_header_only(100_000, 100_000), "too large to decode safely"),
    "png_bomb_warning": (lambda j: _png_header_only(10_000, 10_000), "too large to decode safely"),
    "jpeg_bomb": (lambda j: _jpeg_with_size(j, 65_000, 65_000), "too large to decode safely"),
    "jpeg_small_header": (lambda j: _jpeg_with_size(j, 7, 5), None),  # decodes what the header says (or fails)
    "empty_file": (lambda j: b"", "is unreadable"),
    "text_file": (lambda j: b"not an image\n" * 10, "is unreadable"),
    "float_tiff": (lambda j: _saved(Image.fromarray(np.ones((5, 7), np.float32)), "TIFF"), "mode F"),
    "lab_tiff": (lambda j: _saved(Image.open(io.BytesIO(j)).convert("LAB"), "TIFF"), None),
    "ycbcr_jpeg": (lambda j: _saved(Image.open(io.BytesIO(j)).convert("YCbCr"), "JPEG"), None),
    "i16_big_endian_tiff": (lambda j: _saved(Image.fromarray(np.full((5, 7), 512, ">u2")), "TIFF"), None),
    "gif": (lambda j: _saved(Image.open(io.BytesIO(j)), "GIF"), None),
    "webp": (lambda j: _saved(Image.open(io.BytesIO(j)), "WEBP"), None),
    "tiff_rgba": (lambda j: _saved(Image.open(io.BytesIO(j)).convert("RGBA"), "TIFF"), None),
}


@pytest.mark.parametrize("name", list(ODD_IMAGES))
def test_odd_images(corpus, tmp_path, name):
    make, expected = ODD_IMAGES[name]
    root = corpus.dataset(tmp_path / "data")
    i = corpus.ids[0]
    path = root / "JPEGImages" / f"{i}.jpg"
    path.write_bytes(make(corpus.jpeg[i]))
    filters, limit = list(__import__("warnings").filters), Image.MAX_IMAGE_PIXELS
    r = build_reader("voc", root, "train")
    with time_guard():
        outcomes = [expect_ok_or_seco(lambda: r.image_size(i)), expect_ok_or_seco(lambda: r.load_image(i),
                                                                                    _check_rgb(None))]
    assert __import__("warnings").filters == filters and Image.MAX_IMAGE_PIXELS == limit  # no state outlives it
    if expected is None:
        assert outcomes[1] is None or name == "jpeg_small_header", outcomes[1]
    else:
        assert outcomes[1] is not None and expected in str(outcomes[1]) and str(path) in str(outcomes[1])


ODD_MASKS: dict[str, tuple[Callable[[np.ndarray], Image.Image], str | None]] = {
    "P_value_30": (lambda m: _p(np.where(m == 0, 30, m)), "has values [30] outside 0..20 and 255; the PNG's palette"),
    "L_value_254": (lambda m: Image.fromarray(np.where(m == 0, 254, m).astype(np.uint8)), "has values [254]"),
    "I16_value_300": (lambda m: Image.fromarray(np.where(m == 0, 300, m.astype(np.int32)).astype(np.uint16)),
                      "has values [300]"),
    "I16_in_range": (lambda m: Image.fromarray(m.astype(np.uint16)), None),
    "I_negative": (lambda m: Image.fromarray(np.where(m == 0, -1, m.astype(np.int32))), "has values [-1]"),
    "RGB": (lambda m: Image.fromarray(m).convert("RGB"), "has mode RGB"),
    "LA": (lambda m: Image.fromarray(m).convert("LA"), "has mode LA"),
    "F": (lambda m: Image.fromarray(m.astype(np.float32)), "has mode F"),
    "1bit": (lambda m: Image.fromarray(m > 0), "has mode 1"),
    "half_size": (lambda m: Image.fromarray(m[::2, ::2]), "(WxH) but its image is"),
}


def _p(arr: np.ndarray) -> Image.Image:
    """A palette PNG image whose indices are ``arr``."""
    img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr, np.uint8).tobytes())
    img.putpalette(voc_palette())  # a full palette: PIL would renumber the indices of a short one on saving
    return img


@pytest.mark.parametrize("name", list(ODD_MASKS))
def test_odd_masks(corpus, tmp_path, name):
    make, expected = ODD_MASKS[name]
    root = corpus.dataset(tmp_path / "data")
    i = corpus.ids[0]
    path = root / "SegmentationClassAug" / f"{i}.png"
    with Image.open(path) as m:
        original = np.asarray(m)
    img = make(original)
    img.save(path, format="TIFF" if img.mode in ("I", "F") else "PNG")  # PNG cannot hold 'I' or 'F'
    r = build_reader("voc", root, "train")
    with time_guard():
        outcome = expect_ok_or_seco(lambda: r.load_mask(i), _check_mask)
    if expected is None:
        assert outcome is None
        np.testing.assert_array_equal(r.load_mask(i), original)
    else:
        assert outcome is not None and expected in str(outcome) and str(path) in str(outcome), outcome


class _Other:
    """A class a labels file must never be able to name."""


ODD_LABELS: dict[str, tuple[object, str | None]] = {
    "matrix": ({"$0": np.ones((4, 5), np.float32)}, "has shape (4, 5)"),
    "column": ({"$0": np.ones((20, 1), np.float32)}, None),
    "text": ({"$0": np.array(["a"] * 20)}, "non-numeric label vector"),
    "complex": ({"$0": np.ones(20, np.complex64)}, "non-numeric label vector"),
    "nan": ({"$0": np.full(20, np.nan, np.float32)}, "values outside 0..1"),
    "two": ({"$0": np.full(20, 2.0, np.float32)}, "values outside 0..1"),
    "short": ({"$0": np.ones(19, np.float32)}, "has length 19"),
    "bytes_keys": ({b"$0": np.ones(20, np.float32)}, None),
    "int_vector": ({"$0": np.ones(20, np.int64)}, None),
    "list": ([1, 2, 3], "holds a list"),
    "int": (7, "holds a int"),
    "none": (None, "holds a NoneType"),
    "empty_dict": ({}, "are missing from"),
    "other_class": ({"$0": _Other()}, "which a labels file never needs"),
    "os_system": (None, "which a labels file never needs"),
    "plain_array": (np.ones((3, 20), np.float32), "not a pickled"),
}


@pytest.mark.parametrize("name", list(ODD_LABELS))
def test_odd_labels(corpus, tmp_path, name):
    obj, expected = ODD_LABELS[name]
    root = corpus.dataset(tmp_path / "data")
    path = root / "cls_labels_onehot.npy"
    if isinstance(obj, dict):  # every id gets a good vector, "$0" stands for the first id
        good = {k: v for k, v in corpus.tags.items()}
        for key, value in obj.items():
            first = corpus.ids[0].encode() if isinstance(key, bytes) else corpus.ids[0]
            good.pop(corpus.ids[0])
            good[first] = value
        obj = good if obj else {}
    if name == "os_system":
        # the classic code-execution pickle: never run, refused by the unpickler's allow-list
        path.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    elif name == "plain_array":
        np.save(path, obj)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2 if name == "int_vector" else 4))
    with time_guard():
        outcome = expect_ok_or_seco(lambda: build_reader("voc", root, "train"),
                                    lambda r: [_check_tags(r.tags(i)) for i in corpus.ids])
    assert not (tmp_path / "pwned").exists()
    if expected is None:
        assert outcome is None
    else:
        assert outcome is not None and expected in str(outcome) and str(path) in str(outcome), outcome


def _edit_h5(path: Path, how: str, image_id: str) -> None:
    with h5py.File(path, "r+") as f:
        if how == "no_version":
            del f.attrs["format_version"]
        elif how == "version_text":
            f.attrs["format_version"] = "one"
        elif how == "version_99":
            f.attrs["format_version"] = 99
        elif how == "config_not_json":
            f.attrs["config"] = "{not json"
        elif how == "num_classes_text":
            f.attrs["num_classes"] = "many"
        elif how == "masks_a_dataset":
            del f["masks"]
            f["masks"] = np.zeros(3)
        elif how == "mask_float":
            del f["masks"][image_id]
            f["masks"][image_id] = np.zeros((5, 5), np.float32)
        elif how == "mask_3d":
            del f["masks"][image_id]
            f["masks"][image_id] = np.zeros((2, 5, 5), np.uint8)
        elif how == "mask_a_group":
            del f["masks"][image_id]
            f["masks"].create_group(image_id)
        elif how == "mask_value_77":
            m = f["masks"][image_id][()]
            del f["masks"][image_id]
            f["masks"][image_id] = np.where(m == 0, 77, m).astype(np.uint8)
        elif how == "cam_no_keys":
            del f["cams"][image_id].attrs["keys"]
        elif how == "cam_keys_wrong_length":
            f["cams"][image_id].attrs["keys"] = np.arange(1, 9)
        elif how == "cam_2d":
            del f["cams"][image_id]
            f["cams"][image_id] = np.zeros((5, 5), np.float16)
            f["cams"][image_id].attrs["keys"] = np.arange(1, 6)


ODD_H5 = {
    "no_version": "is not a seco_labels artifact",
    "version_text": "is unreadable or damaged",
    "version_99": "has format version 99",
    "config_not_json": "is unreadable or damaged",
    "num_classes_text": "records num_classes = 'many'",
    "masks_a_dataset": "is not a seco_labels artifact",
    "mask_float": "not a (H, W) uint8 mask",
    "mask_3d": "not a (H, W) uint8 mask",
    "mask_a_group": "not a dataset",
    "mask_value_77": "has values [77]",
    "cam_no_keys": "is unreadable or damaged",
    "cam_keys_wrong_length": "not (k, H, W) floats with k class keys",
    "cam_2d": "not (k, H, W) floats with k class keys",
}


@pytest.mark.parametrize("how", list(ODD_H5))
def test_odd_artifacts(corpus, tmp_path, how):
    root = corpus.dataset(tmp_path / "data")
    art = corpus.artifact(tmp_path / "art", root, h5=corpus.h5, png=False)
    i = corpus.ids[0]
    _edit_h5(art / "cams_train.h5", how, i)
    messages: list[str] = []

    def note(outcome: BaseException | None) -> None:
        if outcome is not None:
            messages.append(str(outcome))

    with time_guard():
        def use(f: ArtifactFile) -> None:
            note(expect_ok_or_seco(lambda: f.load_mask(i), _check_mask_shape))
            note(expect_ok_or_seco(lambda: f.load_cam(i), _check_cam))
            note(expect_ok_or_seco(lambda: evaluate_masks(f, open_ground_truth(root, "train"))))
        note(expect_ok_or_seco(lambda: ArtifactFile(art / "cams_train.h5"), use))
        ds = expect_ok_or_seco(lambda: open_pseudo_labels(art, data_root=root, with_cams=True), _use_dataset)
        note(ds)
        try:
            open_pseudo_labels(art, data_root=root, with_cams=True)[0]
        except SecoError as e:
            messages.append(str(e))
    assert any(ODD_H5[how] in m for m in messages), messages
    assert all(str(art / "cams_train.h5") in m or "mask of" in m for m in messages), messages
