"""Checkpoints stay restorable: a checkpoint holds the training state's leaves
in flattening order, so the state's pytree (parameter and optimiser leaves,
their paths, shapes and dtypes) is pinned here, and a checkpoint file kept as a
fixture (``data/tiny_bnnp_ckpt.pkl``, a perturbed fresh state of
``data/tiny_bnnp.yaml``) must restore bit for bit."""

import hashlib
from pathlib import Path

import jax
import numpy as np
import pytest

from bnnp_jax.training import checkpoint, config as run_config, loop as train

HERE = Path(__file__).parent
ROOT = HERE.parent

# sha256 of "path(shape):dtype;..." over the flattened TrainState. A change here
# makes every existing run directory unrestorable: change it only on purpose.
PINNED = {
    "configs/sawtooth_s16.yaml": (78, "61fa30c6f4c50a3e"),
    "configs/sawtooth_bnam_quick.yaml": (198, "8fe951df55585e20"),
    "configs/sawtooth_tnp_quick.yaml": (141, "b79214cfeeeb5e86"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_training_state_structure_is_pinned(name):
    cfg = run_config.load(ROOT / name)
    with jax.enable_x64(cfg.arch.dtype == "float64"):
        state, _ = train.init_state(cfg)
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    sig = ";".join(f"{jax.tree_util.keystr(p)}{tuple(l.shape)}:{l.dtype}" for p, l in flat)
    assert (len(flat), hashlib.sha256(sig.encode()).hexdigest()[:16]) == PINNED[name]


def test_checkpoint_from_the_earlier_layout_restores():
    cfg = run_config.load(HERE / "data" / "tiny_bnnp.yaml")
    template, _ = train.init_state(cfg)
    step, state, extra = checkpoint.restore(HERE / "data" / "tiny_bnnp_ckpt.pkl", template)
    assert step == 3 and extra == {"loss": 1.5}
    total = sum(float(np.sum(np.asarray(leaf, dtype=np.float64))) for leaf in jax.tree_util.tree_leaves(state))
    assert total == pytest.approx(544.7003969550133, rel=1e-6)
    assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(template)
