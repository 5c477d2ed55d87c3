"""Multi-view priors for ``ds4d generate``: where the views of the unseen sides come from.

- :mod:`.zero123pp` -- our diffusers pipeline implementing Zero123++ (reference attention,
  ramped CLIP conditioning, scaled latents); :mod:`.ref_attention` holds the attention part.
- :mod:`.loading` -- offline loading from the Hugging Face cache or a folder; ``MissingWeightsError``.
- :mod:`.layout` -- the 3x2 grid and the six views' cameras.
- :mod:`.segment` -- cut the generated views out of their flat grey background (RGBA).
- :mod:`.import_views` -- ``--prior import DIR``: the folder layout, validation and time mapping.
- :mod:`.testing` -- a tiny random pipeline with the real classes, for tests.

Heavy imports (torch, diffusers, transformers) happen in the submodules, not here.
"""
