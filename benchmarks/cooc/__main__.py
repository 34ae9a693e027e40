"""``python -m benchmarks.cooc``: the benchmark's commands (:mod:`benchmarks.cooc.cli`)."""

from .cli import main

main()
