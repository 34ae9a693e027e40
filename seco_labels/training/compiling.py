"""``train.compile``: regional torch.compile of the SeCo network's ViT blocks, and its failures as configuration
errors."""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Iterator

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..models import SeCoNet

__all__ = ["compile_encoders", "compile_errors"]


def compile_encoders(model: SeCoNet) -> None:
    """``train.compile``: ``torch.compile`` every transformer block of the student's and the local teacher's ViT
    encoders, in place (regional compilation).

    The blocks of a ViT run the same code, so dynamo compiles it once per calling state and reuses the graph for
    every block, with the block's parameters as inputs: three graphs in a training step (the student with and
    without gradients, the teacher), each in seconds. Compiling the whole encoder instead traced all its blocks
    into each graph and spent 4-10 minutes on the demo preset on a CPU (docs/benchmarks.md, ``train.compile``). The
    patch embedding, the positional embedding and the final norm stay eager: a few operations per call.

    ``nn.Module.compile`` compiles the module's call, not a wrapper module: parameter and buffer names stay those of
    the eager model (no ``_orig_mod.`` prefix), so state dicts, checkpoints and the teacher's EMA are unchanged.
    Shapes are dynamic from the start: one block sees the batch, its flip at every CAM scale, the local crops and
    the validation images, more token counts than the recompile limit allows static graphs for.

    Raises:
        ConfigError: torch.compile does not support this Python or platform.
    """
    import torch._dynamo  # here, not at the top: a heavy import that only train.compile needs

    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(f"train.compile=true: torch.compile does not support Python {sys.version.split()[0]} "
                          f"with torch {torch.__version__} here; set train.compile=false")
    for encoder in (model.encoder, model.teacher["encoder"]):
        for block in encoder.vit.blocks:
            block.compile(dynamic=True)


@contextlib.contextmanager
def compile_errors(enabled: bool) -> Iterator[None]:
    """Under ``train.compile``, turn a failure of torch.compile itself (dynamo, inductor, the C++ compiler it runs on
    a CPU) into a :class:`ConfigError` that says to train without it; the original error is chained."""
    if not enabled:
        yield
        return
    import torch._dynamo.exc

    try:
        yield
    except torch._dynamo.exc.TorchDynamoException as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ConfigError(f"train.compile=true: torch.compile failed on this machine ({type(e).__name__}: {first}); "
                          "set train.compile=false to train without it") from e
