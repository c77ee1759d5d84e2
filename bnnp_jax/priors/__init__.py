"""Weight priors (SPEC section 3): the per-unit Gaussian kinds ``unitwise``,
``diagonal`` and ``shared`` with their trainability masks (``weight_prior``), and
the MetaPrior-generated prior (``metaprior_prior``)."""
