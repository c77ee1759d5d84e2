"""Meta-training runs: the run config (``config``), the per-model adapters
(``models``), the loop (``loop``), checkpoints, held-out evaluation, the run
report and its plots."""
