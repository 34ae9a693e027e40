"""Image files and ids: the id check, decoding with errors that name the file, header-only sizes, RGB conversion.

Every dataset image, mask and prediction is opened through :func:`decode_image` or :func:`read_image_size`, so a
missing, corrupt, truncated, empty or oversized file is a DataError naming it; every id is checked by
:func:`check_image_id` before it becomes a file name.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

__all__ = ["id_problem", "check_image_id", "decode_image", "read_image_size", "image_to_rgb", "bounded_size",
           "downscale", "resize"]


def id_problem(image_id: str) -> str | None:
    """Why ``image_id`` cannot name a file (``"it contains '/'"``...), or None when it can.

    An id becomes ``<folder>/<id>.<ext>`` when images, masks and outputs are read and written, so it must stay a
    plain file name: no path separator of any platform, no leading '.' (``..``, hidden files), no NUL, not empty.
    """
    if not image_id.strip():
        return "it is empty"
    if "\x00" in image_id:
        return "it contains a NUL character"
    if "/" in image_id or "\\" in image_id:
        return "it contains '/'" if "/" in image_id else "it contains a backslash"
    if image_id.startswith("."):
        return "it starts with '.'"
    return None


def check_image_id(image_id: str, where: str = "", fix: str = "or remove the line") -> None:
    """Refuse an id that cannot name a file (see :func:`id_problem`); ``where`` prefixes the message, ``fix``
    ends it (what else the user can do).

    The one id check of the package: readers apply it to every split-list line, the artifact writer to every id
    it writes, so no id reaches a path outside the dataset or the output folder.

    Raises:
        DataError: names the id, what is wrong with it and what to do.
    """
    problem = id_problem(image_id)
    if problem is not None:
        raise DataError(
            f"{where}image id {image_id!r} cannot name a file ({problem}): ids must not contain '/', '\\' or NUL, "
            f"start with '.' or be empty; use the image's file name without folder or extension "
            f"(e.g. 2007_000032), {fix}"
        )


#: what to do about an unreadable dataset image or mask (the default end of the messages below)
_HINT = "Re-copy the file, or remove its id from the split list"


def _open_image(path: Path, what: str, hint: str, *, load: bool) -> Image.Image:
    """``Image.open`` (and with ``load`` the full decode), every failure a DataError naming the file.

    PIL warns (DecompressionBombWarning) above ``Image.MAX_IMAGE_PIXELS`` and raises above twice that; both are
    refused here, with the warning turned into an error only inside this call (``catch_warnings`` restores the
    filters on exit, so no global state outlives it).
    """
    img = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if load:
                img.load()  # decode now (and release the file): a truncated file must fail here, not as a grey strip
    except FileNotFoundError:
        raise DataError(f"{what} {path} not found; check --data-root") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if img is not None:
            img.close()
        raise DataError(
            f"{what} {path} is too large to decode safely ({e}); downscale it (or raise PIL.Image.MAX_IMAGE_PIXELS "
            f"if the image is genuine). {hint}"
        ) from None
    except Exception as e:  # PIL's plugins fail on corrupt input with almost any type (EOFError, struct.error, ...)
        if img is not None:
            img.close()
        raise DataError(f"{what} {path} is unreadable; it may be corrupt or truncated ({e}). {hint}") from None
    if img.width < 1 or img.height < 1:
        img.close()
        raise DataError(f"{what} {path} has no pixels ({img.width}x{img.height}); it is corrupt. {hint}")
    return img


def decode_image(path: Path, what: str, hint: str = _HINT) -> Image.Image:
    """Open and fully decode an image file; any decoder failure becomes a DataError naming the file.

    ``what`` names the file's role in the message ("image", "mask"), ``hint`` says what to do.

    Raises:
        DataError: missing, unreadable, truncated, empty (a 0 dimension) or larger than PIL's decompression-bomb
            limit (``Image.MAX_IMAGE_PIXELS``).
    """
    return _open_image(Path(path), what, hint, load=True)


def read_image_size(path: Path, what: str, hint: str = _HINT) -> tuple[int, int]:
    """(H, W) of an image file from its header, without decoding the pixels; errors as :func:`decode_image`."""
    with _open_image(Path(path), what, hint, load=False) as img:
        return img.height, img.width


def image_to_rgb(img: Image.Image, path: Path | str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded image; ``path`` names the file in errors.

    RGB is returned as is; grey (L), 1-bit, LA, RGBA, CMYK, YCbCr and palette (P, PA, with or without
    transparency) images are converted by PIL (alpha dropped). 16-bit grey (``I;16`` in any byte order) keeps its
    8 high bits (``value >> 8``), and 32-bit integer grey (``I``, what PIL makes of 16-bit PNGs and TIFFs) is
    read as 16-bit data: clipped to 0..65535, then ``>> 8``; PIL's own conversion would clip both to 0..255,
    i.e. turn nearly every pixel white. 16-bit RGB(A) PNGs are reduced to 8 bits by PIL when read.

    Raises:
        DataError: a float ('F') image (its value range is unknown, so no scaling is right: save it as 8-bit),
            or a mode PIL cannot convert to RGB (names the file and the mode).
    """
    mode = img.mode
    if mode == "RGB":
        return np.array(img)  # writable, unlike np.asarray
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(img)
        if mode == "I":
            grey = np.clip(grey, 0, 65535)
        grey8 = (grey.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    if mode == "F":
        raise DataError(
            f"image {path} has 32-bit float pixels (mode F), whose value range is unknown; save it as an 8-bit "
            "RGB or grey image (PNG or JPEG)"
        )
    try:
        return np.array(img.convert("RGB"))
    except (ValueError, OSError) as e:
        raise DataError(f"image {path} has mode {mode}, which cannot be converted to RGB ({e}); save it as an "
                        "8-bit RGB image") from None


def bounded_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(H, W) of an image of ``size`` (H, W) downscaled so that its long side is at most ``max_side``, the aspect
    kept (each side rounded, at least 1); ``size`` itself when it fits or ``max_side`` is 0 (``data.max_side``)."""
    h, w = int(size[0]), int(size[1])
    if max_side <= 0 or max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def downscale(array: np.ndarray, max_side: int, *, labels: bool = False) -> np.ndarray:
    """An (H, W, 3) uint8 image or (H, W) uint8 mask (``labels``) with its long side bounded by ``max_side``
    (:func:`bounded_size`): images resampled with Lanczos, which PIL widens by the scale factor when it shrinks
    (antialiased); masks with nearest neighbour, so every pixel keeps a class value. Unchanged when it fits."""
    return resize(array, bounded_size(array.shape[:2], max_side), labels=labels)


def resize(array: np.ndarray, size: tuple[int, int], *, labels: bool = False) -> np.ndarray:
    """An (H, W, 3) uint8 image or (H, W) uint8 mask (``labels``) resampled to ``size`` (H, W): images with Lanczos
    (antialiased when shrinking), masks with nearest neighbour. The array itself when it has that size."""
    h, w = size
    if (h, w) == array.shape[:2]:
        return array
    resample = Image.Resampling.NEAREST if labels else Image.Resampling.LANCZOS
    return np.array(Image.fromarray(np.ascontiguousarray(array)).resize((w, h), resample=resample))
