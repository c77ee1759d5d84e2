"""MetaPrior experiments (SPEC section 13): toy problems, digits, few-shot,
and the MetaPrior-generated BNNP prior study; ``experiments`` is the CLI entry."""
