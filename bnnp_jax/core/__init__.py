"""Core maths, shared by every model: per-unit Gaussians in precision form
(``gaussian``), the LAPACK workarounds (``linalg``) and their checker
(``lapack_order``), the Bayesian linear-regression
layer posterior in its primal (``blr``), square-root (``blr_qr``) and dual
(``blr_dual``) forms, within-task minibatching (``minibatch``), the one forward
pass and activation table (``networks``) and the chunked training driver
(``driver``). Imports nothing else from the package."""
