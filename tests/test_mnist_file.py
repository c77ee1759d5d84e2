"""Real MNIST from a user-supplied file (issue 18 item 4): a Keras-layout ``.npz`` or a
directory of MNIST's four IDX files (plain or gzipped). Nothing is downloaded: the fixtures
are tiny files written here in MNIST's exact formats (IDX: big-endian magic 0x00000803 /
0x00000801, uint32 dimensions, uint8 data; npz: keras' ``mnist.npz`` arrays and dtypes)."""

import gzip
import json
import struct

import numpy as np
import pytest

from bnnp_jax import cli
from bnnp_jax.data import images
from bnnp_jax.studies.metaprior.digits import load_data

SIDE = 6


def fake_mnist(n_train=40, n_test=20, side=SIDE, seed=0):
    """uint8 images ``[N, side, side]`` and uint8 labels, every class present."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[f"x_{split}"] = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        out[f"y_{split}"] = (np.arange(n) % 10).astype(np.uint8)[rng.permutation(n)]
    return out


def idx_bytes(a: np.ndarray) -> bytes:
    """MNIST's IDX format: 0x00 0x00, type 0x08 (unsigned byte), ndim, big-endian uint32 dims, data."""
    assert a.dtype == np.uint8
    return struct.pack(f">BBBB{a.ndim}I", 0, 0, 0x08, a.ndim, *a.shape) + a.tobytes()


def write_idx_dir(directory, arrays, gz=False, dotted=False):
    directory.mkdir(parents=True, exist_ok=True)
    for key, name in images.MNIST_IDX_FILES.items():
        if dotted:  # the "train-images.idx3-ubyte" spelling of some mirrors
            name = name.replace("-idx", ".idx")
        raw = idx_bytes(arrays[key])
        (directory / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(raw) if gz else raw)
    return directory


@pytest.fixture(scope="module")
def mnist():
    return fake_mnist()


@pytest.fixture
def sources(tmp_path, mnist):
    """Every accepted form of the same data."""
    np.savez(tmp_path / "mnist.npz", **mnist)
    np.savez_compressed(tmp_path / "mnist_compressed.npz", **mnist)
    out = {"npz": tmp_path / "mnist.npz", "npz_compressed": tmp_path / "mnist_compressed.npz",
           "idx": write_idx_dir(tmp_path / "idx", mnist), "idx_gz": write_idx_dir(tmp_path / "idx_gz", mnist, gz=True),
           "idx_dotted": write_idx_dir(tmp_path / "idx_dotted", mnist, dotted=True)}
    mixed = write_idx_dir(tmp_path / "mixed", mnist)  # some files gzipped, some not
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (mixed / (name + ".gz")).write_bytes(gzip.compress((mixed / name).read_bytes()))
        (mixed / name).unlink()
    out["idx_mixed"] = mixed
    return out


def test_fixture_is_mnist_idx_format(tmp_path, mnist):
    d = write_idx_dir(tmp_path / "d", mnist)
    raw = (d / "train-images-idx3-ubyte").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and struct.unpack(">3I", raw[4:16]) == (40, SIDE, SIDE)
    assert len(raw) == 16 + 40 * SIDE * SIDE
    raw = (d / "t10k-labels-idx1-ubyte").read_bytes()
    assert raw[:8] == b"\x00\x00\x08\x01" + (20).to_bytes(4, "big") and len(raw) == 8 + 20


@pytest.mark.parametrize("form", ["npz", "npz_compressed", "idx", "idx_gz", "idx_dotted", "idx_mixed"])
def test_dataset_round_trips(sources, mnist, form):
    x_tr, y_tr, x_te, y_te = images.load_mnist_dataset(str(sources[form]))
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    np.testing.assert_allclose(x_tr, mnist["x_train"] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x_te, mnist["x_test"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_tr, mnist["y_train"])
    np.testing.assert_array_equal(y_te, mnist["y_test"])


def test_images_only_loader_reads_an_idx_directory(sources, mnist):
    for form in ("idx", "idx_gz"):
        np.testing.assert_allclose(images.load_mnist(str(sources[form]), split="test"), mnist["x_test"] / 255.0,
                                   rtol=1e-6)


def test_flat_and_unit_range_npz(tmp_path, mnist):
    flat = {k: (v.reshape(len(v), -1) / 255.0 if k.startswith("x") else v) for k, v in mnist.items()}
    np.savez(tmp_path / "flat.npz", **flat)
    x_tr, _, _, _ = images.load_mnist_dataset(str(tmp_path / "flat.npz"))
    np.testing.assert_allclose(x_tr, mnist["x_train"] / 255.0, rtol=1e-6)


@pytest.mark.parametrize("form", ["npz", "idx_gz"])
def test_study_loader_subsamples_and_flattens(sources, mnist, form):
    x_tr, y_tr, x_te, y_te, side = load_data(0, 25, 0, str(sources[form]))
    assert (x_tr.shape, x_te.shape, side) == ((25, SIDE * SIDE), (20, SIDE * SIDE), SIDE)
    assert x_tr.dtype == np.float32 and 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    # the kept training images are training images, with their own labels
    flat = mnist["x_train"].reshape(40, -1) / 255.0
    idx = [int(np.flatnonzero(np.all(np.isclose(flat, row), axis=1))[0]) for row in x_tr]
    assert len(set(idx)) == 25
    np.testing.assert_array_equal(y_tr, mnist["y_train"][idx])
    again = load_data(0, 25, 0, str(sources["idx" if form == "npz" else "npz"]))
    np.testing.assert_array_equal(again[0], x_tr)  # same seed, same subset whatever the format


def _corrupt(tmp_path, mnist, case):
    """A bad source and the message its error must contain."""
    d = write_idx_dir(tmp_path / case, mnist)
    if case == "missing_path":
        return tmp_path / "nowhere", r"--mnist '.*nowhere': does not exist"
    if case == "missing_file":
        (d / "t10k-labels-idx1-ubyte").unlink()
        return d, r"missing file t10k-labels-idx1-ubyte \(or t10k-labels-idx1-ubyte.gz\)"
    if case == "swapped_magic":  # a labels file where the images belong
        (d / "train-images-idx3-ubyte").write_bytes(idx_bytes(mnist["y_train"]))
        return d, r"train-images-idx3-ubyte.*wrong magic number 0x00000801.*needs 0x00000803"
    if case == "garbage_magic":
        (d / "t10k-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78" + bytes(100))
        return d, r"t10k-images-idx3-ubyte is not an IDX file \(bad magic number 0x12345678"
    if case == "truncated":
        raw = idx_bytes(mnist["x_train"])
        (d / "train-images-idx3-ubyte").write_bytes(raw[:-7])
        return d, rf"promises shape \(40, {SIDE}, {SIDE}\) but holds {40 * SIDE * SIDE - 7} values"
    if case == "count_mismatch":
        (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes(mnist["y_train"][:-1]))
        return d, r"shape mismatch between images and labels: x_train holds 40 images .* y_train holds 39 labels"
    if case == "corrupt_gzip":
        (d / "train-images-idx3-ubyte").unlink()
        (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(mnist["x_train"]))[:-20])
        return d, r"train-images-idx3-ubyte.gz: corrupt gzip file"
    if case == "test_size":
        (d / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(fake_mnist(side=SIDE + 1)["x_test"]))
        return d, r"test images are \(7, 7\) but training images are \(6, 6\)"
    if case == "labels_range":
        y = mnist["y_test"].copy()
        y[3] = 11
        (d / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(y))
        return d, r"labels must be integers 0..9.*got 11 at index 3"
    if case == "single_idx_file":
        return d / "train-images-idx3-ubyte", r"is a single IDX file; pass the directory"
    npz = {k: v.copy() for k, v in mnist.items()}
    path = tmp_path / f"{case}.npz"
    if case == "npz_nan":
        npz["x_train"] = npz["x_train"] / 255.0
        npz["x_train"][5, 1, 2] = np.nan
        match = r"--mnist '.*npz_nan.npz': array 'x_train': contains 1 non-finite value.*first at index \(5, 1, 2\)"
    elif case == "npz_missing_array":
        del npz["y_test"]
        match = r"lacks arrays \['y_test'\]"
    elif case == "npz_mismatch":
        npz["y_test"] = npz["y_test"][:7]
        match = r"array 'x_test': shape mismatch between images and labels: x_test holds 20 images"
    elif case == "npz_bad_rank":
        npz["x_train"] = npz["x_train"][:, :, :5].reshape(40, -1)  # 30 pixels: not a square
        match = r"flat images \[N, D\] need a square D, got shape \(40, 30\)"
    elif case == "not_npz":
        path.write_text("x,y\n1,2\n")
        return path, r"neither an .npz archive nor an MNIST directory"
    else:
        raise AssertionError(case)
    np.savez(path, **npz)
    return path, match


CASES = ["missing_path", "missing_file", "swapped_magic", "garbage_magic", "truncated", "count_mismatch",
         "corrupt_gzip", "test_size", "labels_range", "single_idx_file", "npz_nan", "npz_missing_array",
         "npz_mismatch", "npz_bad_rank", "not_npz"]


@pytest.mark.parametrize("case", CASES)
def test_bad_sources_raise_clear_errors(tmp_path, mnist, case):
    path, match = _corrupt(tmp_path, mnist, case)
    with pytest.raises(ValueError, match=match) as e:
        load_data(0, 0, 0, str(path))
    assert str(e.value).startswith("--mnist ")
    assert str(path) in str(e.value) or path.name in str(e.value) or "-idx" in str(e.value)


TINY = """
seed: 0
n_train: 0
n_test: 0
hidden: [8]
model: {code_dim: 3, hyper_hidden: [8], activation: relu}
fit: {steps: 3, lr: 0.01, num_samples: 1, batch_size: 16, chunk: 3}
baseline: {activation: relu}
baseline_fit: {steps: 3, lr: 0.01, num_samples: 1, batch_size: 16, chunk: 3}
eval_samples: 2
"""


def test_digits_experiment_runs_on_an_mnist_directory_through_the_cli(tmp_path, mnist, capsys):
    """``bnnp metaprior digits --mnist DIR`` end to end on the gzipped IDX fixture."""
    src = write_idx_dir(tmp_path / "MNIST" / "raw", mnist, gz=True)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    code = cli.main(["metaprior", "digits", "--mnist", str(src), "--config", str(cfg), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "mnist" and (results["n_train"], results["n_test"]) == (40, 20)
    assert 0.0 <= results["metaprior"]["accuracy"] <= 1.0 and 0.0 <= results["mfvi"]["accuracy"] <= 1.0
    assert np.isfinite(results["metaprior"]["nll"]) and np.isfinite(results["mfvi"]["nll"])
    assert (out / "digits_codes.png").stat().st_size > 0


def test_cli_reports_a_bad_mnist_source_as_a_usage_error(tmp_path, mnist, capsys):
    d = write_idx_dir(tmp_path / "d", mnist)
    (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes(mnist["y_train"][:-3]))
    code = cli.main(["metaprior", "digits", "--mnist", str(d), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("bnnp: error: ")]
    assert len(lines) == 1 and lines[0].startswith("bnnp: error: --mnist ") and "shape mismatch" in lines[0]
    assert not (tmp_path / "out" / "results.json").exists()
