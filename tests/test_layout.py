"""The package's shape (README, "Design"): one front door whose names all
resolve, ``__all__`` in every public module, at most 12 flat modules, and
imports that run one way through the layers. Pure reading: nothing compiles."""

import ast
import importlib
import pkgutil
from pathlib import Path

import bnnp_jax

PACKAGE = Path(bnnp_jax.__file__).parent

# Layer of each top-level part; a module may import its own layer or lower ones.
# The flat helpers (config, validation, metrics) may be used by any layer and use only core.
LAYERS = {
    "core": 0,
    "data": 1, "priors": 1, "metaprior": 1,
    "bnnp": 2, "neural_processes": 2,
    "inference": 3, "training": 3,
    "studies": 4,
    "cli": 5, "__init__": 5,
}
HELPERS = {"config", "validation", "metrics"}


def _modules():
    return [m.name for m in pkgutil.walk_packages(bnnp_jax.__path__, "bnnp_jax.")]


def test_front_door_names_resolve():
    assert len(bnnp_jax.__all__) == len(set(bnnp_jax.__all__))
    for name in ("init", "posterior_samples", "predict", "prior_samples", "pp_avi", "avi", "npml",
                 "baseline_fit", "baseline_predict", "baseline_elbo", "load_run", "numpyro_model"):
        assert name in bnnp_jax.__all__
    for name in bnnp_jax.__all__:
        assert getattr(bnnp_jax, name) is not None


def test_every_public_module_declares_all_and_its_names_resolve():
    for name in _modules():
        module = importlib.import_module(name)
        if name.endswith("__init__") or Path(module.__file__).name == "__init__.py":
            continue
        assert hasattr(module, "__all__"), f"{name} has no __all__"
        for attr in module.__all__:
            assert hasattr(module, attr), f"{name}.__all__ names missing {attr!r}"


def test_flat_top_level():
    flat = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(flat) <= 12, flat
    assert not [f for f in flat if f.startswith("metaprior")]


def _layer(parts: list[str]) -> int | None:
    head = parts[0]
    return None if head in HELPERS else LAYERS[head]


def test_imports_run_one_way():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        own = _layer(list(rel))
        if own is None:  # a helper: core only
            own = 0
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bnnp_jax"):
                targets = [node.module.split(".")[1:] + [a.name] for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1:] for a in node.names if a.name.startswith("bnnp_jax.")]
            else:
                continue
            for t in targets:
                if not t:
                    continue
                layer = _layer(t)
                if layer is not None and layer > own:
                    bad.append(f"{'/'.join(rel)} imports {'.'.join(t)}")
    assert not bad, bad


def test_one_activation_table_serves_every_model():
    from bnnp_jax.bnnp.model import BNNPConfig
    from bnnp_jax.core.networks import ACTIVATIONS
    from bnnp_jax.metaprior.model import MetaPriorConfig

    for name in ACTIVATIONS:
        BNNPConfig(x_dim=1, y_dim=1, hidden=(4,), activation=name)
        MetaPriorConfig(widths=(1, 4, 1), activation=name)
