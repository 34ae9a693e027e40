"""Scripts that measure the toolkit's speed, memory and quality (docs/benchmarks.md). Run each from the repository
root as a module, e.g. ``python -m benchmarks.cooc --help``; tests import them as ``benchmarks.<name>``.

- ``ablation``: SeCo's ablation variants on any dataset (the real ``seco`` commands), tabulated;
- ``cooc``: a co-occurrence benchmark a CPU can learn (a subpackage: dataset, stage 1, scores, runs);
- ``train_step``, ``export``, ``compile_step``, ``distributed``, ``gpu_check``: timings of a training step, an
  export, ``train.compile``, torchrun scaling, and the first run on a GPU;
- ``commands``: how the benchmarks launch ``seco`` commands.

Not part of the installed package (pyproject.toml packages only ``seco_labels``).
"""
