"""Experiments built on the library (SPEC section 11), one module per study;
the MetaPrior experiments are under ``studies.metaprior``."""
