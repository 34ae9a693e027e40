"""The SeCo method (docs/algorithm.md, docs/design.md §2-4): loss terms, the CRF energy and its lattice filter, CAMs,
the patch decomposition, PAR refinement, and one training step's objective."""
