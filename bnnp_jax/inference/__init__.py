"""Inference baselines on one dataset under a given prior (SPEC sections 8
and 10): the shared BNN model and its numpyro form (``model``), NUTS, Gaussian VI,
GIVI, the per-task and amortised BNNP, AIS/BDMC evidence, and one ``registry``
of fit/predict/elbo per method. Gaussian VI is two modules: ``gaussian_family`` (the
block-diagonal family q) and ``gaussian_vi`` (fitting it); MFVI to FCVI are its layouts."""
