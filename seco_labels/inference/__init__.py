"""Labels out of a trained model: ``export-masks`` (CAMs and pseudo masks), ``segment`` (the SeCo decoder's masks)
and ``predict`` (masks of new images from a SeCo or smp model)."""
