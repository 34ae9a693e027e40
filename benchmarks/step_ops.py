"""What one training step asks of the device, counted on any machine: the CPU twin of gpu_check's profile.

    python -m benchmarks.step_ops                   # the voc preset's step (ViT-B/16 at 448, batch 4, every term on)
    python -m benchmarks.step_ops --preset demo     # the demo preset's (tiny ViT at 128 px): seconds on a CPU
    python -m benchmarks.step_ops --json ops.json   # the counts as JSON too
    python -m benchmarks.step_ops --compile         # with train.compile (the ViT blocks compiled; seconds on a CPU)

A GPU step costs at least one kernel launch per top-level operation and stalls the host at every operation that
needs a device value on the host. Neither depends on the device, so a CPU run counts them for the GPU:

- **top-level operations**: torch.profiler's ``aten::`` events with no parent in a profile without Python frames:
  what the step's Python code calls (forward, CAMs, decomposition, losses, memories), the count of issue 28.
  The top-level operations of the backward pass (under an autograd node) and of the optimiser step (under its
  ``record_function``) are counted apart;
- **launches**: the top-level operations that run a kernel (a view such as ``reshape`` or ``select`` runs none),
  plus the kernels torch.compile generated (``cpp_fused_*`` on a CPU, each a kernel launch on a GPU, where they are
  Triton kernels). Compiled code calls far fewer aten operations, so under ``--compile`` the launches are the fair
  count;
- **sync-forcing operations**: the outermost ``.item()`` / ``float()`` / ``bool()`` (``aten::_local_scalar_dense``),
  ``nonzero``, ``unique`` and ``masked_select`` (data-dependent shapes), plus the host reads the CPU profiler
  cannot see (``.tolist()``, ``.numpy()``, ``.cpu()``), each with the seco_labels function or line that asked for
  it. Work on tensors a GPU run keeps on the host (``.cpu()`` copies, CPU generators' draws, the batch's
  ``HOST_KEYS``) is followed by :class:`_HostTensors` and not counted: it syncs nothing there.

The step is :meth:`~seco_labels.training.trainer.Trainer.train_step` at the step where every loss term is on,
after one untimed warm-up step, on the bundled demo images with random weights. Issue 28's targets: at most 1,400
top-level operations and 5 sync-forcing ones per voc-preset step.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import click  # noqa: E402
import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402

import seco_labels  # noqa: E402
from benchmarks.gpu_check import DEMO, check_config  # noqa: E402
from seco_labels.method.objective import HOST_KEYS, steady_step  # noqa: E402
from seco_labels.runtime.device import batch_to_device  # noqa: E402
from seco_labels.training.trainer import Trainer  # noqa: E402

#: aten operations that make the host wait for the device: a scalar read, or an output whose shape is data
SYNC_OPS = frozenset({"aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2", "aten::unique_dim",
                      "aten::unique_consecutive", "aten::masked_select", "aten::equal"})
#: aten kernels whose CPU implementation reads scalars that stay on the device on a GPU (the fused AdamW's step
#: counts): no sync there, so their reads are not counted
CPU_ONLY_READS = frozenset({"aten::_fused_adamw_", "aten::_fused_adam_"})
#: tensor methods that copy to the host without an aten event on a CPU (on a GPU each is a device-to-host copy)
HOST_READS = frozenset({"tolist", "numpy", "cpu"})
BACKWARD_PREFIX = "autograd::engine::evaluate_function: "
#: aten operations that run no kernel of their own: views, metadata and allocation (an operation that copies, such
#: as ``reshape`` of a non-contiguous tensor or ``to`` of another dtype, runs one through a nested operation)
NO_KERNEL_OPS = frozenset("aten::" + n for n in (
    "view", "reshape", "_reshape_alias", "_unsafe_view", "flatten", "unflatten", "view_as", "permute", "transpose",
    "t", "unsqueeze", "squeeze", "select", "slice", "narrow", "unbind", "split", "split_with_sizes", "chunk",
    "expand", "expand_as", "as_strided", "alias", "detach", "detach_", "movedim", "diagonal", "contiguous", "to",
    "empty", "empty_strided", "empty_like", "lift_fresh", "resolve_conj", "resolve_neg",
    "_has_compatible_shallow_copy_type"))
#: the name of a kernel that torch.compile generated, as the CPU profiler sees it (inductor's
#: ``cpp.enable_kernel_profile``): ``graph_<n>_cpp_fused_<ops>_<i>``
COMPILED_KERNEL = "_cpp_fused_"
#: the package's folder: a frame is the package's when its file lies here (a checkout may itself be named
#: seco_labels, so the name alone does not tell)
PACKAGE_DIR = Path(seco_labels.__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def _package_file(path: str) -> str | None:
    """``seco_labels/<file>`` when ``path`` (absolute, or as the profiler shortens it) is a file of the package,
    else None."""
    if os.path.isabs(path):
        p = Path(path).resolve()
        return f"seco_labels/{p.relative_to(PACKAGE_DIR).as_posix()}" if p.is_relative_to(PACKAGE_DIR) else None
    cut = path.replace(os.sep, "/").rfind("seco_labels/")
    if cut < 0:
        return None
    rel = path.replace(os.sep, "/")[cut:]
    return rel if (PACKAGE_DIR.parent / rel).is_file() else None


@dataclass
class StepOps:
    """The counts of one step (see the module docstring)."""

    top_level: int = 0  #: top-level aten operations of the step's own code (forward, losses, memories)
    launches: int = 0  #: kernels the step's own code runs: top-level operations that run one, and compiled kernels
    compiled: int = 0  #: of ``launches``, kernels torch.compile generated
    backward: int = 0  #: top-level aten operations of the backward pass (under an autograd node)
    backward_launches: int = 0  #: kernels the backward pass runs, counted as ``launches``
    optimizer: int = 0  #: top-level aten operations of the optimiser step
    nested: int = 0  #: every aten event, nested ones included
    backward_nodes: int = 0  #: autograd nodes the backward pass evaluated
    syncs: int = 0  #: sync-forcing operations, host reads included
    top_ops: dict[str, int] = field(default_factory=dict)  #: the most frequent top-level operations
    op_sites: dict[str, int] = field(default_factory=dict)  #: top-level operations by the package function calling
    sync_sites: dict[str, int] = field(default_factory=dict)  #: ``file:line (operation)`` -> count
    seconds: float = float("nan")  #: the profiled step's wall time (profiler overhead included)


def _category(event) -> str:
    """Where an aten event sits: ``nested`` (inside another aten operation), ``host`` (work a GPU run does on host
    tensors, :class:`_HostTensors`), ``backward`` (under an autograd node), ``optimizer`` (under the optimiser's
    ``record_function``) or ``step`` (called by the step's own code: issue 28's top-level operations, those with
    no parent in a profile without Python frames)."""
    found = "step"
    parent = event.cpu_parent
    while parent is not None:
        name = parent.name
        if name.startswith("aten::"):
            return "nested"
        if name.startswith("host::"):
            found = "host"
        elif name.startswith(BACKWARD_PREFIX):
            found = "backward" if found == "step" else found
        elif name.startswith("Optimizer.step"):
            found = "optimizer" if found == "step" else found
        parent = parent.cpu_parent
    return found


def _runs_kernel(event) -> bool:
    """Whether an aten event runs a kernel: it is not in :data:`NO_KERNEL_OPS`, or an operation it calls is not."""
    return event.name not in NO_KERNEL_OPS or any(_runs_kernel(c) for c in event.cpu_children
                                                  if c.name.startswith("aten::"))


def _site(event) -> str:
    """The innermost function of the package that ``event`` ran under: its profiler event's name,
    ``seco_labels/<file>(<line of def>): <function>``."""
    parent = event.cpu_parent
    while parent is not None:
        file, _, rest = parent.name.partition("(")  # Python frames: "path/to/file.py(line): function"
        if rest and (where := _package_file(file)):
            return f"{where}({rest}"
        parent = parent.cpu_parent
    return "outside seco_labels"


class _HostTensors(TorchFunctionMode):
    """Follows which tensors would live on the host in a GPU run, and counts the host reads of device tensors.

    On a CPU every tensor is on the host, so the twin tells them apart as a GPU run would place them: a host copy
    (``.cpu()``, here a clone so that the original stays a device tensor), a factory call without a ``device``
    (``torch.randperm(n, generator=cpu_generator)``) and anything computed from host tensors alone is on the host;
    everything else is on the device. Calls on host tensors alone run under a ``host::`` profiler range, whose
    sync-forcing operations are not syncs on a GPU. :data:`HOST_READS` of device tensors are counted by site.
    """

    FACTORIES = frozenset({"arange", "empty", "full", "ones", "zeros", "rand", "randn", "randint", "randperm",
                           "tensor", "as_tensor", "linspace"})

    def __init__(self, host: list[torch.Tensor]) -> None:
        super().__init__()
        # ids of the host tensors, kept alive for the one profiled step so that no id is reused
        self.kept: list[torch.Tensor] = []
        self.host: set[int] = set()
        for t in host:
            self._add(t)
        self.sites: Counter[str] = Counter()

    def _add(self, t: torch.Tensor) -> None:
        self.kept.append(t)
        self.host.add(id(t))

    def _where(self) -> str:
        frames = [(where, f.lineno) for f in traceback.extract_stack()[:-2] if (where := _package_file(f.filename))]
        return f"{frames[-1][0]}({frames[-1][1]})" if frames else "outside seco_labels"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tensors = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        on_host = all(id(t) in self.host for t in tensors) if tensors else \
            name in self.FACTORIES and kwargs.get("device") is None
        if name in HOST_READS and not on_host:
            self.sites[f"{self._where()} ({name})"] += 1
        if name == "cpu":
            out = func(*args, **kwargs).clone()
            self._add(out)
            return out
        if not on_host or name == "to":  # .to(device) of a host tensor: a copy to the device, no sync
            return func(*args, **kwargs)
        with torch.profiler.record_function(f"host::{name}"):
            out = func(*args, **kwargs)
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


def count_step(trainer: Trainer, batch: dict, top: int = 15, warmup: int = 0, stack: bool = True) -> StepOps:
    """Profile one :meth:`Trainer.train_step` on ``batch`` and count what it launched and where it synced, as a GPU
    run would: the batch's :data:`HOST_KEYS` count as host tensors (the trainer leaves them on the CPU), and PAR
    propagates in its gathered form (on a CPU it takes the per-neighbour one, faster there; ``PAR.gather``).
    ``warmup`` steps run first, in that form, unprofiled: lazy initialisation (and compilation) is not the steady
    state. ``stack``: see :func:`count_ops`."""
    form, trainer.par.gather = trainer.par.gather, True
    try:
        for _ in range(warmup):
            trainer.train_step(batch)
        with _compiled_outside_mode(trainer.model):
            return count_ops(lambda: trainer.train_step(batch), host=[batch[k] for k in HOST_KEYS if k in batch],
                             top=top, stack=stack)
    finally:
        trainer.par.gather = form


@contextlib.contextmanager
def _compiled_outside_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model``'s compiled submodules (``train.compile``) with :class:`_HostTensors` off: dynamo guards on the
    torch-function mode stack, so under the mode every compiled call would compile again (past the recompile limit,
    then run eagerly). Their tensors are all on the device, so the mode has nothing to follow there."""
    compiled = [(m, m._compiled_call_impl) for m in model.modules()
                if getattr(m, "_compiled_call_impl", None) is not None]

    def outside_mode(call: Callable) -> Callable:
        def run(*args, **kwargs):
            if torch._C._len_torch_function_stack() == 0:
                return call(*args, **kwargs)
            with torch.overrides._pop_mode_temporarily():
                return call(*args, **kwargs)
        return run

    for m, call in compiled:
        m._compiled_call_impl = outside_mode(call)
    try:
        yield
    finally:
        for m, call in compiled:
            m._compiled_call_impl = call


def count_ops(fn: Callable[[], object], host: list[torch.Tensor] = (), top: int = 15, stack: bool = True
              ) -> StepOps:
    """Profile one call of ``fn`` and count what it launched and where it synced (the module docstring);
    ``host``: the tensors it is given that a GPU run keeps on the CPU. ``stack=False`` profiles without Python
    frames: the same counts, much cheaper, but the functions behind operations and syncs are not named (host reads
    keep their lines)."""
    reads = _HostTensors(list(host))
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_stack=stack) as prof, reads:
        fn()
    seconds = time.perf_counter() - start
    events = prof.events()
    ops = StepOps(seconds=seconds)
    names: Counter[str] = Counter()
    callers: Counter[str] = Counter()
    sites: Counter[str] = Counter(reads.sites)
    for e in events:
        if e.name.startswith("aten::"):
            ops.nested += 1
            category = _category(e)
            if category == "step":
                ops.top_level += 1
                ops.launches += _runs_kernel(e)
                names[e.name] += 1
                callers[_site(e)] += 1
            elif category == "backward":
                ops.backward += 1
                ops.backward_launches += _runs_kernel(e)
            elif category == "optimizer":
                ops.optimizer += 1
        elif e.name.startswith(BACKWARD_PREFIX):
            ops.backward_nodes += 1
        elif COMPILED_KERNEL in e.name and (category := _category(e)) in ("step", "backward"):
            if category == "step":
                ops.compiled += 1
            else:
                ops.backward_launches += 1
        if e.name in SYNC_OPS:
            parent, outermost = e.cpu_parent, True
            while parent is not None:
                outermost &= parent.name not in SYNC_OPS | CPU_ONLY_READS and not parent.name.startswith("host::")
                parent = parent.cpu_parent
            if outermost:
                sites[f"{_site(e)} ({e.name.removeprefix('aten::')})"] += 1
    ops.launches += ops.compiled
    ops.syncs = sum(sites.values())
    ops.top_ops = dict(names.most_common(top))
    ops.op_sites = dict(callers.most_common(top))
    ops.sync_sites = dict(sites.most_common())
    return ops


def step_trainer(preset: str, run_dir: Path, crop: int | None = None, depth: int | None = None,
                 compile: bool = False) -> tuple[Trainer, dict]:
    """A trainer of ``preset`` on the demo images (fp32, CPU, random weights; ``depth``: ViT blocks instead of the
    preset's, for tests; ``compile``: ``train.compile``, its kernels named in the profile) at the step where every
    term is on, and its first batch."""
    cfg = check_config(preset == "demo", "cpu", "off", DEMO)
    cfg.train.compile = compile
    if compile:
        from torch._inductor import config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # a profiler event per generated kernel
    if crop:
        cfg.data.crop_size = crop
    if depth:
        cfg.model.backbone_kwargs = {**cfg.model.backbone_kwargs, "depth": depth}
    torch.manual_seed(0)
    trainer = Trainer(cfg.validate(), run_dir=run_dir, quiet=True)
    trainer.step = steady_step(cfg)
    batch = batch_to_device(next(iter(trainer.train_loader())), trainer.device, HOST_KEYS)
    return trainer, batch


def format_ops(ops: StepOps, title: str) -> str:
    lines = [f"## {title}", "", "| count | per step |", "|---|---:|",
             f"| top-level aten operations of the step's code (target <= 1,400, voc preset) | {ops.top_level:,} |",
             f"| kernels the step's code runs (top-level operations that run one, and compiled kernels) | "
             f"{ops.launches:,} |",
             f"| of these, kernels torch.compile generated | {ops.compiled:,} |",
             f"| sync-forcing operations (target <= 5) | {ops.syncs:,} |",
             f"| top-level aten operations of the backward pass | {ops.backward:,} |",
             f"| kernels the backward pass runs (as above) | {ops.backward_launches:,} |",
             f"| top-level aten operations of the optimiser step | {ops.optimizer:,} |",
             f"| aten operations, nested included | {ops.nested:,} |",
             f"| backward autograd nodes | {ops.backward_nodes:,} |", "",
             "| most frequent top-level operation | count |", "|---|---:|",
             *(f"| `{k}` | {v} |" for k, v in ops.top_ops.items()), "",
             "| package function with the most top-level operations | count |", "|---|---:|",
             *(f"| `{k}` | {v} |" for k, v in ops.op_sites.items()), "",
             "| where the step syncs | count |", "|---|---:|",
             *(f"| `{k}` | {v} |" for k, v in ops.sync_sites.items())]
    return "\n".join(lines) + "\n"


@click.command(help=__doc__)
@click.option("--preset", type=click.Choice(["voc", "demo"]), default="voc", show_default=True)
@click.option("--crop", type=int, default=None, help="crop size instead of the preset's (the counts barely move)")
@click.option("--top", type=int, default=15, show_default=True, help="top-level operations listed")
@click.option("--compile", "compile_", is_flag=True, help="with train.compile (the ViT blocks compiled)")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the counts here")
def main(preset: str, crop: int | None, top: int, compile_: bool, json_file: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="seco-step-ops-") as tmp:
        trainer, batch = step_trainer(preset, Path(tmp), crop, compile=compile_)
        ops = count_step(trainer, batch, top, warmup=1)  # the warm-up step compiles every calling state
    cfg = trainer.cfg
    title = (f"{preset} preset: {cfg.model.backbone} at {cfg.data.crop_size} px, batch {cfg.data.batch_size}, "
             f"step {trainer.step}, train.compile={str(compile_).lower()}, torch {torch.__version__}")
    click.echo(format_ops(ops, title))
    if json_file:
        json_file.write_text(json.dumps({"preset": preset, "crop": cfg.data.crop_size, "compile": compile_,
                                         **asdict(ops)}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
