"""The Bayesian Neural Network Process (SPEC sections 4-7): the amortised
linear layer, the model and its network-wide path sampler (``model``), the
objectives, the BNAM variant and the warm start."""
