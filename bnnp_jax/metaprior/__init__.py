"""MetaPrior (SPEC section 13): unit codes and the hypernetwork (``hypernet``),
the model and its ELBO (``model``), fitting and illation (``fit``) and its
mean-field VI baseline (``mfvi``). Needs only :mod:`bnnp_jax.core`."""
