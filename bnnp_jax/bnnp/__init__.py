"""The Bayesian Neural Network Process (SPEC sections 4-7): the amortised
linear layer (``amortised_layer``), the network-wide path sampler (``path``),
the model and its public functions (``model``), the objectives, the BNAM
variant and the warm start."""
