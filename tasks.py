#!/usr/bin/env python3
"""tasks.py: the paper's tasks, training, and the command line of nprnn-ref.

A library first, read top to bottom, then its command line:
    task data          adding_problem, multiplication_problem, load_pixel_dataset, ...
    training           RunConfig, train_run (on-the-fly data), checkpoints, run_many
    the paper          PaperRun, paper_run, train_paper_run (fixed training sets, the
                       paper's metric, run folders that continue their history)
    fixtures           golden fixtures for other backends and their checker
    analysis           the paper's dynamical-systems argument, measured
    output             tables, curves.csv, summary.json, figures
    bench              loss_and_grads against its floor (and PyTorch)
    the command line   python tasks.py COMMAND ...

    python tasks.py adding | multiply          the main job: the adding / multiplication problem
    python tasks.py pixel | digits             pixel-by-pixel classification (mnist: an alias)
    python tasks.py sweep adding               hyperparameter sensitivity (lr x clip x seeds)
    python tasks.py paper adding|multiply|pixel   the paper's own protocol, run folders
    python tasks.py resume ROOT                continue every unfinished run of a job
    python tasks.py dynamics | gradflow | sensitivity | spectrum
                                               the paper's dynamical-systems argument
    python tasks.py export-fixtures DIR | verify-fixtures DIR --against MOD:FN
                                               golden fixtures for other backends
    python tasks.py bench                      loss_and_grads against its floor (and torch)

Run ``python tasks.py -h`` for every command and ``python tasks.py CMD -h`` for its
options. BLAS threads are set from --threads (default 1) before NumPy is imported, because
small matrix products run fastest on one thread per process; the command line also keeps
freed memory in glibc's heap (see MALLOC_SETTINGS).
"""

from __future__ import annotations

import os
import sys


def _set_blas_threads(argv) -> str:
    """Read --threads from argv and export it to every BLAS before numpy is imported."""
    n = "1"
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    if not n.isdigit() or int(n) < 1:                 # a usage error: exit status 2
        print(f"tasks.py: error: --threads must be an integer >= 1, got {n!r}",
              file=sys.stderr)
        sys.exit(2)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = n
    return n


# glibc hands freed blocks above its mmap and trim thresholds back to the kernel, so a
# loop that allocates the same (T, B, H) arrays on every call pays fresh page faults every
# time: measured, loss_and_grads at (150, 16, 100, 2) ran at 1.64x the floor instead of
# 1.23x. The command line keeps freed memory in the heap instead: mallopt for this process,
# the equivalent environment variables for the worker processes it spawns.
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": 32 << 20, "MALLOC_TRIM_THRESHOLD_": 128 << 20}


def _keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (MALLOC_SETTINGS) for this process and its
    children; return False where the C library has no mallopt (not glibc)."""
    os.environ.update({k: str(v) for k, v in MALLOC_SETTINGS.items()})
    try:
        import ctypes
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # from glibc's malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, MALLOC_SETTINGS["MALLOC_MMAP_THRESHOLD_"])
                and mallopt(M_TRIM_THRESHOLD, MALLOC_SETTINGS["MALLOC_TRIM_THRESHOLD_"]))


ALLOCATOR_NOTE = "C library defaults"
if __name__ == "__main__":
    _set_blas_threads(sys.argv[1:])
    if "--default-malloc" in sys.argv[1:]:
        ALLOCATOR_NOTE = "glibc defaults (--default-malloc)"
    else:
        ALLOCATOR_NOTE = ("freed memory kept in the heap (glibc mmap/trim thresholds "
                          "raised)" if _keep_freed_memory() else "C library defaults")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402

import nprnn_ref as nr  # noqa: E402


# ---------------------------------------------------------------------------------------
# Task data: the adding and multiplication problems, MNIST-format images, 8x8 digits
# ---------------------------------------------------------------------------------------

ADDING_BASELINE_MSE = 1.0 / 6.0        # predict 1 = E[a + b]: Var(a + b) = 2 / 12
MULTIPLY_BASELINE_MSE = 7.0 / 144.0    # predict 1/4 = E[ab]: E[a^2 b^2] - 1/16 = 1/9 - 1/16
PAPER_TOLERANCE = 0.04   # the paper's metric: a test sequence is correct when |error| < 0.04
CHECKPOINT_FORMAT = "nprnn-ref-checkpoint/1"
CHECKPOINT_CONFIG_KEYS = ("task", "scheme", "nonlinearity", "seq_len", "hidden", "lr",
                          "momentum", "clip", "batch", "seed")
_BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


# --- Sizes that fit: every run's arrays, estimated before any is allocated ---------------

def _physical_memory():
    """Bytes of physical memory of this machine, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


_ALWAYS_FITS = 1 << 28     # 256 MiB: smaller arrays are not worth asking the system about


def _gib(n_bytes):
    return f"{n_bytes / 2**30:.3g} GiB"


def check_memory(what, parts) -> int:
    """Refuse, with ValueError, work whose arrays cannot fit in physical memory.

    ``parts`` maps a description of each big array (naming the sizes it grows with) to its
    bytes; the message gives the total, the machine's physical memory and the largest
    part. Returns the total. Where the system does not report its memory, nothing is
    refused.
    """
    need, have = sum(parts.values()), _physical_memory()
    if have is not None and need > have:
        big = max(parts, key=parts.get)
        raise ValueError(f"{what} needs about {_gib(need)} of memory, more than the "
                         f"{_gib(have)} of physical memory of this machine (the largest "
                         f"part: {big}, {_gib(parts[big])})")
    return need


def run_memory(T, B, H, D, O, n_test, itemsize=8) -> dict:
    """The big arrays of a training run, in bytes, for check_memory: the parameters with
    their gradients, optimiser state and update (4 copies of H*D + H*H + H + O*H + O
    numbers); a training batch's inputs, projected inputs, hidden states and BPTT terms
    (T*B*(D + 3H)); the test set (T*n*D inputs, n*O targets) with the hidden states and
    projected inputs of one evaluation chunk (2*T*chunk*H, chunk as in ``evaluate``)."""
    n_params = H * D + H * H + H + O * H + O
    chunk = min(n_test, max(1, 4_000_000 // (T * H)))
    return {
        f"the parameters (hidden={H}), their gradients and optimiser state":
            itemsize * 4 * n_params,
        f"a training batch (seq_len T={T} x batch={B} x (D={D} + 3 x hidden={H}))":
            itemsize * T * B * (D + 3 * H),
        f"the test set (seq_len T={T} x test_size={n_test}) and its evaluation":
            itemsize * (T * n_test * D + n_test * O + 2 * T * chunk * H),
    }


def _marker_draws(n, T, rng):
    """The draws of the adding and multiplication problems: values (T, n) uniform on
    [0, 1], then the first markers (n,) in [0, T//2), then the second (n,) in [T//2, T)."""
    n = nr._check_size("n", n)
    T = nr._check_size("T", T, minimum=2)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    n_bytes = 8 * T * n * 3 + 16 * n      # values (T, n), the markers, inputs (T, n, 2)
    if n_bytes > _ALWAYS_FITS:
        check_memory(f"n={n} sequences of T={T} steps",
                     {f"the inputs (T={T} x n={n} x 3 numbers)": n_bytes})
    half = T // 2
    values = rng.uniform(0.0, 1.0, size=(T, n))              # (T, n)
    first = rng.integers(0, half, size=n)                    # a step in [0, T//2)
    second = rng.integers(half, T, size=n)                   # a step in [T//2, T)
    return values, first, second


def _marked_inputs(values, first, second):
    """x (T, n, 2) float64 from values (T, n) and the two marker steps (n,) each."""
    T, n = values.shape
    cols = np.arange(n)
    x = np.zeros((T, n, 2))                                  # (T, n, 2)
    x[:, :, 0] = values
    x[first, cols, 1] = 1.0
    x[second, cols, 1] = 1.0
    return x


def _marked_pairs(n, T, rng):
    """Values, marker positions and marked values shared by the adding and multiplication
    problems. Returns x (T, n, 2) float64 and the two marked values a, b (n,) each."""
    values, first, second = _marker_draws(n, T, rng)
    cols = np.arange(values.shape[1])
    return (_marked_inputs(values, first, second), values[first, cols],
            values[second, cols])


def adding_problem(n, T, rng):
    """n sequences of the adding problem (Hochreiter and Schmidhuber; Le et al.).

    x[t, i] = (value, marker): values i.i.d. uniform on [0, 1]; the marker is 1 at exactly
    two steps, one drawn uniformly from the first half (steps 0 .. T//2 - 1, 0-based) and
    one from the second half (T//2 .. T-1), and 0 elsewhere. target[i, 0] = the sum of the
    two marked values. Always predicting 1 gives MSE 1/6 (ADDING_BASELINE_MSE); tracking
    only one marked value gives 1/12. Draws values, then first markers, then second markers.

    Returns x (T, n, 2) float64 and target (n, 1) float64.
    """
    x, a, b = _marked_pairs(n, T, rng)
    return x, (a + b)[:, None]


def multiplication_problem(n, T, rng):
    """As adding_problem (same inputs for the same rng state), with target = the product of
    the two marked values. Always predicting 1/4 gives MSE 7/144 (MULTIPLY_BASELINE_MSE)."""
    x, a, b = _marked_pairs(n, T, rng)
    return x, (a * b)[:, None]


# --- MNIST files: IDX (raw or gzipped) or mnist.npz, validated, never downloaded --------

MNIST_IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {1: 2049, 3: 2051}       # labels (n,), images (n, rows, cols); unsigned bytes


def _path_arg(argname, path) -> str:
    """A path argument as a str (nprnn_ref's check: a str or os.PathLike, not empty)."""
    return nr._check_path(argname, path)


_NPY_MAGIC = b"\x93NUMPY"


def _read_npz(path, bad, names=None):
    """(entry names, {name: array}) of the .npz archive at ``path``, read with
    allow_pickle=False: every entry, or only those of ``names`` that it holds.

    Anything else raises ValueError starting with ``bad`` (which names the file): an empty
    file, a .npy array, a file that is not a zip archive, a damaged archive, an entry
    that is not a .npy array or that holds Python objects. A missing file raises
    FileNotFoundError.
    """
    if os.path.isdir(path):
        raise ValueError(f"{bad}: it is a folder, not an .npz archive")
    with open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
    if not head:
        raise ValueError(f"{bad}: the file is empty, not an .npz archive")
    if head == _NPY_MAGIC:
        raise ValueError(f"{bad}: it is a .npy array, not an .npz archive")
    if head[:2] != b"PK":
        raise ValueError(f"{bad}: damaged or unreadable .npz (not a zip archive: it starts "
                         f"with {head!r})")
    arrays, key = {}, None
    try:
        with np.load(path, allow_pickle=False) as z:
            files = list(z.files)
            for key in (files if names is None else [k for k in names if k in files]):
                arrays[key] = z[key]
    except (OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as e:
        where = f" (entry {key!r})" if key is not None else ""
        raise ValueError(f"{bad}: damaged or unreadable .npz{where} ({e})") from None
    for k, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{bad}: entry {k!r} is not a .npy array")
    return files, arrays


def read_idx(path, ndim):
    """Read an IDX file of unsigned bytes (raw, or gzipped when its first bytes say so).

    Checks the magic number (0x0801 for ndim 1, 0x0803 for ndim 3), and that the file
    holds exactly the number of bytes its header announces. Returns a uint8 array.
    """
    import gzip
    path = _path_arg("path", path)
    if not _is_int(ndim) or ndim not in _IDX_MAGIC:
        raise ValueError(f"ndim must be 1 (labels) or 3 (images), got {ndim!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path}: it is a folder, not an IDX file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"IDX file {path} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: damaged gzip file ({e})") from None
    want = _IDX_MAGIC[ndim]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: too short for the header of an IDX file of ndim={ndim} "
                         f"({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != want:
        raise ValueError(f"{path}: IDX magic number must be {want} (0x{want:08x}, "
                         f"{ndim}-d unsigned bytes, ndim={ndim}), got {magic} "
                         f"(0x{magic:08x})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    n_bytes = math.prod(dims)                      # Python integers: no overflow
    body = len(raw) - 4 - 4 * ndim
    if body != n_bytes:
        raise ValueError(f"{path}: header announces shape {dims} = {n_bytes} bytes of "
                         f"data, file holds {body} (truncated or damaged)")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _check_mnist_arrays(arrays, source):
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim == 2 and x.shape[1:] == (784,):
            x = x.reshape(-1, 28, 28)
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"{source}: x_{part} must have shape (n, 28, 28), "
                             f"got {tuple(x.shape)}")
        if x.dtype != np.uint8:
            raise ValueError(f"{source}: x_{part} must hold uint8 pixels 0..255, "
                             f"got dtype {x.dtype.name}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{source}: y_{part} must be a 1-d array of integer labels, "
                             f"got shape {tuple(y.shape)} dtype {y.dtype.name}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{source}: x_{part} has {x.shape[0]} images but y_{part} has "
                             f"{y.shape[0]} labels")
        if x.shape[0] == 0:
            raise ValueError(f"{source}: the {part} split is empty (x_{part} has 0 images)")
        if y.min() < 0 or y.max() > 9:
            raise ValueError(f"{source}: y_{part} labels must lie in 0..9, got "
                             f"{y.min()}..{y.max()}")
        arrays[f"x_{part}"] = x.reshape(x.shape[0], 784)
        arrays[f"y_{part}"] = y.astype(np.int64)
    return arrays


def _mnist_help(path):
    names = ", ".join(MNIST_IDX_NAMES.values())
    return (f"no MNIST files found at {path}: nothing is downloaded; put either mnist.npz "
            f"(arrays x_train, y_train, x_test, y_test) or the four IDX files ({names}, "
            "each raw or with .gz) in that folder, or pass --data path/to/mnist.npz")


def load_mnist(path):
    """Load MNIST from ``path``: a .npz file (x_train, y_train, x_test, y_test), or a folder
    holding mnist.npz or the four standard IDX files (raw or .gz).

    Returns a dict with x_train (n, 784) uint8, y_train (n,) int64, x_test, y_test.
    Raises FileNotFoundError (saying which files to put where) or ValueError (bad files).
    """
    path = _path_arg("path", path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "mnist.npz")):
        path = os.path.join(path, "mnist.npz")
    if os.path.isfile(path):
        files, arrays = _read_npz(path, f"{path}: not a readable .npz file",
                                  names=list(MNIST_IDX_NAMES))
        missing = [k for k in MNIST_IDX_NAMES if k not in files]
        if missing:
            raise ValueError(f"{path}: missing arrays {', '.join(missing)}; expected "
                             f"x_train, y_train, x_test, y_test, got "
                             f"{', '.join(files) or 'none'}")
        return _check_mnist_arrays(arrays, path)
    if not os.path.isdir(path):
        raise FileNotFoundError(_mnist_help(path))
    arrays = {}
    for key, base in MNIST_IDX_NAMES.items():
        found = [os.path.join(path, base + ext) for ext in ("", ".gz")
                 if os.path.isfile(os.path.join(path, base + ext))]
        if not found:
            raise FileNotFoundError(_mnist_help(path) + f" (missing {base}[.gz])")
        arrays[key] = read_idx(found[0], 3 if key.startswith("x") else 1)
    return _check_mnist_arrays(arrays, path)


# The pixel task's data sets, each with its default location: MNIST in the current folder
# (it cannot be installed here), Fashion-MNIST where `apt-get install
# dataset-fashion-mnist` puts it. Both have MNIST's format, sizes and file names.
PIXEL_DATASETS = {"mnist": ".", "fashion-mnist": "/usr/share/datasets/fashion-mnist"}
CLASS_NAMES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                      "Shirt", "Sneaker", "Bag", "Ankle boot"),
}
def load_pixel_dataset(name, path=None):
    """MNIST or Fashion-MNIST (the same IDX format) for the pixel task: load_mnist's
    arrays plus "name", "source" and "classes" (the label names)."""
    nr._check_choice("dataset", name, tuple(PIXEL_DATASETS))
    path = PIXEL_DATASETS[name] if path is None else _path_arg("path", path)
    try:
        d = load_mnist(path)
    except FileNotFoundError as e:
        if name == "fashion-mnist" and path == PIXEL_DATASETS[name]:
            raise FileNotFoundError(
                f"Fashion-MNIST is not at {path}: install it with "
                "`apt-get install dataset-fashion-mnist`, or pass --data") from None
        raise FileNotFoundError(str(e).replace("no MNIST files", f"no {name} files")) \
            from None
    return dict(d, name=name, source=os.fspath(path), classes=CLASS_NAMES[name])


def pixel_sequences(images, permutation=None):
    """Images (n, P) -> sequences (P, n, 1) float64 in [0, 1], one pixel per step in
    scanline order, or in the order ``permutation`` (a permutation of range(P)).

    Images are uint8 pixels 0..255 (divided by 255) or floats already scaled to [0, 1];
    anything else (other integers, which would be taken as unscaled, non-finite or
    out-of-range floats) is refused.
    """
    images = nr._as_array("images", images)    # the arrays the core takes (its policy)
    if images.ndim != 2 or 0 in images.shape:
        raise ValueError(f"images must have shape (n, P) with n, P >= 1, got "
                         f"{images.shape}")
    if images.dtype != np.uint8:
        if images.dtype.kind != "f":
            raise TypeError(f"images must hold uint8 pixels 0..255 or floats in [0, 1], "
                            f"got dtype {images.dtype.name}")
        if not np.all((images >= 0) & (images <= 1)):      # False for NaN too
            bad = images[~((images >= 0) & (images <= 1))][0]
            raise ValueError(f"images of dtype {images.dtype.name} must lie in [0, 1] "
                             f"(pixels already scaled), got {bad}")
    if permutation is not None:
        P = images.shape[1]
        perm = np.asarray(permutation) if isinstance(permutation, (np.ndarray, list, tuple,
                                                                   range)) else None
        if perm is None or perm.dtype.kind not in "iu":
            raise TypeError(f"permutation must be an array of integers, a permutation of "
                            f"range(P={P}), got {type(permutation).__name__}"
                            + ("" if perm is None else f" of dtype {perm.dtype.name}"))
        if perm.shape != (P,) or not np.array_equal(np.sort(perm), np.arange(P)):
            raise ValueError(f"permutation must be a permutation of range(P={P}), got "
                             f"shape {perm.shape}"
                             + ("" if perm.shape != (P,) else " with repeated or "
                                "out-of-range entries"))
        images = images[:, perm]
    return (images.T[:, :, None] / 255.0 if images.dtype == np.uint8
            else images.T[:, :, None].astype(np.float64))


def load_digits_data(rng, test_fraction=0.2):
    """scikit-learn's bundled 8x8 digits (1797 images, no download) as 64-pixel rows scaled
    to [0, 1] and split once by ``rng``: returns x_train (n, 64) float64, y_train, x_test,
    y_test."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or \
            not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits task needs scikit-learn: pip install scikit-learn") \
            from None
    d = load_digits()
    x = d.data / 16.0                                          # (1797, 64) in [0, 1]
    y = d.target.astype(np.int64)
    order = rng.permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    if not 1 <= n_test < len(y):
        raise ValueError(f"test_fraction={test_fraction!r} leaves {n_test} of the {len(y)} "
                         "images for testing; both splits need at least one")
    te, tr = order[:n_test], order[n_test:]
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}


# ---------------------------------------------------------------------------------------
# Training: a typed run configuration, the training loop, checkpoints, parallel runs
# ---------------------------------------------------------------------------------------

# --- Tasks as seen by the training loop -----------------------------------------------

TASKS = ("adding", "multiply", "pixel", "digits")   # one name per task: the command's own


class _TaskDefault:
    """RunConfig's default test_size: 1000 sequences or images, or the whole test split of
    the digits (359 images, fewer than 1000)."""

    def __repr__(self):
        return "<1000, or all the digits' test images>"


_TEST_SIZE_DEFAULT = _TaskDefault()


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and \
        not isinstance(v, (bool, np.bool_))


def _finite(v) -> bool:
    """v is a number that a float holds finitely (not bool, nan, inf, nor an integer too
    large for a float)."""
    try:
        return _is_number(v) and math.isfinite(float(v))
    except OverflowError:
        return False


def _one_of(v, names) -> bool:
    return isinstance(v, str) and v in names


def _check_run_fields(c, where="RunConfig") -> None:
    """The checks of RunConfig (and of a checkpoint's config, ``where`` naming it): each
    field's type and range, and the fields that belong to the task."""
    def need(ok, field, want):
        if not ok:
            raise ValueError(f"{where}: {field} must be {want}, got {c[field]!r}")
    regression = c["task"] in ("adding", "multiply")
    need(_one_of(c["scheme"], nr.SCHEMES), "scheme", f"one of {', '.join(nr.SCHEMES)}")
    need(_is_int(c["seed"]) and c["seed"] >= 0, "seed", "an integer >= 0")
    for k in ("hidden", "batch"):
        need(_is_int(c[k]) and c[k] >= 1, k, "an integer >= 1")
    need(_finite(c["lr"]) and c["lr"] > 0, "lr", "a finite number > 0")
    need(_finite(c["momentum"]) and c["momentum"] >= 0, "momentum", "a finite number >= 0")
    need(c["clip"] is None or _finite(c["clip"]) and c["clip"] > 0, "clip",
         "None (no clipping) or a finite number > 0")
    need(_one_of(c["inputs"], nr.INPUT_RECIPES), "inputs",
         f"one of {', '.join(nr.INPUT_RECIPES)}")
    need(isinstance(c["permuted"], (bool, np.bool_)) and not (regression and c["permuted"]),
         "permuted", "False for the adding and multiplication problems" if regression
         else "True or False")
    need(c["train_size"] is None or not regression and _is_int(c["train_size"])
         and c["train_size"] >= 1, "train_size", "None for the adding and multiplication "
         "problems" if regression else "None (all the training images) or an integer >= 1")
    need(_one_of(c["dataset"], PIXEL_DATASETS) if c["task"] == "pixel" else
         c["dataset"] is None,
         "dataset", f"one of {', '.join(PIXEL_DATASETS)}" if c["task"] == "pixel"
         else "None (only the pixel task has data sets)")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run of the experiment commands (adding, multiply, pixel, digits, sweep):
    training by SGD on freshly drawn sequences (adding, multiply) or on an image set
    visited once per epoch (pixel, digits).

    Streams from the seed: init (seed, 0), training batches (seed, 1), test set (seed, 2),
    pixel/digits epoch order (seed, 3, epoch); so every scheme of a seed sees the same data.
    """
    task: str                       # one of TASKS
    scheme: str                     # a key of nprnn_ref.SCHEMES
    seed: int = 0
    hidden: int = 100
    batch: int = 16
    lr: float = 0.01
    momentum: float = 0.0
    clip: float | None = 10.0       # global-norm clipping threshold; None: no clipping
    inputs: str = "paper"           # a key of nprnn_ref.INPUT_RECIPES
    seq_len: int | None = None      # adding, multiply
    steps: int | None = None        # adding, multiply (pixel, digits: instead of epochs)
    epochs: int | None = None       # pixel, digits
    eval_every: int | None = None   # None: 500 steps (adding, multiply) or one epoch
    test_size: int | None = _TEST_SIZE_DEFAULT  # 1000 (digits: its 359 test images);
    #                                   None: the whole test split (pixel, digits)
    target_mse: float = 0.01        # adding, multiply: solved when test MSE < target_mse
    dataset: str | None = None      # pixel: a key of PIXEL_DATASETS
    data: str | None = None         # pixel: where the files are (None: the default place)
    permuted: bool = False          # pixel, digits: a fixed pixel permutation (seed 0)
    train_size: int | None = None   # pixel, digits: the first N training images
    save: str | None = None         # checkpoint path, rewritten at every evaluation
    resume: str | None = None       # checkpoint to continue from
    label_hp: bool = False          # name runs with lr and clip (sweep cells)

    def __post_init__(self):
        """Every field checked (ValueError naming it); integers become Python ints."""
        nr._check_choice("task", self.task, TASKS)
        if self.test_size is _TEST_SIZE_DEFAULT:
            object.__setattr__(self, "test_size", None if self.task == "digits" else 1000)
        c = dataclasses.asdict(self)
        _check_run_fields(c)

        def need(ok, field, want):
            if not ok:
                raise ValueError(f"RunConfig: {field} must be {want}, got {c[field]!r}")
        if self.regression:
            need(_is_int(self.seq_len) and self.seq_len >= 2, "seq_len",
                 "an integer >= 2 (one marker in each half of the sequence)")
            need(_is_int(self.steps) and self.steps >= 1, "steps", "an integer >= 1")
            need(_is_int(self.test_size) and self.test_size >= 1, "test_size",
                 "an integer >= 1")
        else:
            need(self.seq_len is None, "seq_len", "None (the images set it: one step per "
                 "pixel)")
            need(self.steps is None or _is_int(self.steps) and self.steps >= 1, "steps",
                 "None or an integer >= 1")
            need(self.steps is not None or _is_int(self.epochs) and self.epochs >= 1,
                 "epochs", "an integer >= 1 (or steps given)")
            need(self.test_size is None or _is_int(self.test_size) and self.test_size >= 1,
                 "test_size", "None (the whole test split) or an integer >= 1")
        for k in ("epochs", "eval_every"):
            need(c[k] is None or _is_int(c[k]) and c[k] >= 1, k, "None or an integer >= 1")
        need(_finite(self.target_mse) and self.target_mse > 0, "target_mse", "a finite number > 0")
        need(self.data is None or self.task == "pixel" and isinstance(self.data, str),
             "data",
             "None or a path (str) of the pixel task's files")
        for k in ("save", "resume"):
            need(c[k] is None or isinstance(c[k], str), k, "None or a path (str)")
        need(isinstance(self.label_hp, (bool, np.bool_)), "label_hp", "True or False")
        for k, v in c.items():                     # numpy scalars as Python numbers
            if isinstance(v, (np.integer, np.bool_, np.floating)):
                object.__setattr__(self, k, v.item())

    @property
    def regression(self) -> bool:
        return self.task in ("adding", "multiply")


def _load_task_data(cfg: RunConfig):
    """The images of a pixel or digits run (None for the adding and multiplication
    problems, whose sequences are drawn)."""
    if cfg.task == "pixel":
        return load_pixel_dataset(cfg.dataset, cfg.data)
    if cfg.task == "digits":
        return load_digits_data(np.random.default_rng(0))
    return None


def check_run(cfg: RunConfig, data=None) -> dict:
    """A run's sizes, checked before anything big is allocated: the training and test set
    sizes asked for against the images (``data`` as load_pixel_dataset or
    load_digits_data return them; None for adding and multiply), the batch against the
    training set, and the run's arrays against physical memory (check_memory). Returns
    {"T", "n_train" (None: drawn on the fly), "n_test"}; ValueError names what is too big.
    """
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"cfg must be a RunConfig, got {type(cfg).__name__}")
    if cfg.regression:
        T, n_train, n_test, D, O = cfg.seq_len, None, cfg.test_size, 2, 1
    else:
        if not isinstance(data, dict) or not {"x_train", "y_train", "y_test"} <= set(data):
            raise TypeError(f"data must be the dict of images of the {cfg.task} task, got "
                            f"{type(data).__name__}")
        source = data.get("source", "scikit-learn's 8x8 digits")
        have_train, have_test = len(data["y_train"]), len(data["y_test"])
        for k, have, what in (("train_size", have_train, "training"),
                              ("test_size", have_test, "test")):
            if getattr(cfg, k) is not None and getattr(cfg, k) > have:
                raise ValueError(f"{k}={getattr(cfg, k)} is more than the {have} {what} "
                                 f"images of {source}")
        n_train, n_test = cfg.train_size or have_train, cfg.test_size or have_test
        if cfg.batch > n_train:
            raise ValueError(f"batch {cfg.batch} is larger than the training set "
                             f"({n_train} images)")
        T, D, O = data["x_train"].shape[1], 1, 10
    check_memory(f"the run {run_label(cfg)} of {cfg.task}",
                 run_memory(T, cfg.batch, cfg.hidden, D, O, n_test))
    return {"T": T, "n_train": n_train, "n_test": n_test}


class _Task:
    """What the training loop needs: sizes, loss, a batch for each step, a test set."""

    def __init__(self, cfg: RunConfig):
        nr._check_choice("task", cfg.task, TASKS)
        self.name, self._seed = cfg.task, cfg.seed
        if cfg.regression:
            self._init_marked(cfg)
        else:
            self._init_images(cfg)

    def _init_marked(self, cfg):
        self.gen = adding_problem if cfg.task == "adding" else multiplication_problem
        self.n_in, self.n_out, self.loss = 2, 1, "mse"
        self.T = cfg.seq_len
        self.baseline = ADDING_BASELINE_MSE if cfg.task == "adding" else MULTIPLY_BASELINE_MSE
        check_run(cfg)
        # The test set comes from its own stream, so it is the same for every scheme and
        # across --resume; the training stream is the checkpointed data rng.
        self.x_test, self.y_test = self.gen(cfg.test_size, self.T,
                                            np.random.default_rng([cfg.seed, 2]))
        self.steps_per_epoch = None

    def _init_images(self, cfg):
        self.n_in, self.n_out, self.loss = 1, 10, "xent"
        data = _load_task_data(cfg)
        n_test = check_run(cfg, data)["n_test"]
        self.perm = None
        if cfg.permuted:
            self.perm = np.random.default_rng(0).permutation(data["x_train"].shape[1])
        self.x_train, self.y_train = data["x_train"], data["y_train"]
        if cfg.train_size:
            self.x_train = self.x_train[:cfg.train_size]
            self.y_train = self.y_train[:cfg.train_size]
        self.x_test = pixel_sequences(data["x_test"][:n_test], self.perm)
        self.y_test = data["y_test"][:n_test]
        self.T = self.x_train.shape[1]
        self.steps_per_epoch = len(self.y_train) // cfg.batch
        self._epoch, self._order = None, None

    def batch_for(self, rng, step, batch):
        """The training batch of 0-based step ``step``. Regression: drawn from rng.
        Classification: epoch e visits the images in the order of a permutation seeded by
        (seed, 3, e), so a resumed run continues mid-epoch exactly."""
        if self.steps_per_epoch is None:
            return self.gen(batch, self.T, rng)
        e, k = divmod(step, self.steps_per_epoch)
        if e != self._epoch:
            self._epoch = e
            self._order = np.random.default_rng([self._seed, 3, e]).permutation(
                len(self.y_train))
        idx = self._order[k * batch:(k + 1) * batch]
        return pixel_sequences(self.x_train[idx], self.perm), self.y_train[idx]


def evaluate(params, task, nonlinearity, max_elems=4_000_000):
    """Test metrics: {"mse", "within"} for regression (within: the paper's metric, the
    fraction of test sequences with |error| < PAPER_TOLERANCE = 0.04), {"loss",
    "accuracy"} for classification, over the whole test set in chunks small enough to keep
    the cache of forward modest."""
    T, n, _ = task.x_test.shape
    H = params["W_hh"].shape[0]
    chunk = max(1, min(n, max_elems // (T * H)))
    sq, xent, correct = 0.0, 0.0, 0
    for i in range(0, n, chunk):
        xs = task.x_test[:, i:i + chunk]
        t = task.y_test[i:i + chunk]
        try:
            h, _ = nr.forward(params, xs, nonlinearity=nonlinearity)
            y = nr.readout(params, h, "last")                    # (b, O)
        except nr.NonFiniteError:           # states or read-out overflowed: the worst score
            sq, xent = math.inf, math.inf
            continue
        if task.loss == "mse":
            sq += float(np.sum((y - t) ** 2))
            correct += int(np.sum(np.abs(y - t)[:, 0] < PAPER_TOLERANCE))
        else:
            L, _ = nr.loss_fn(y, t, "xent")
            xent += float(L) * len(t)
            correct += int(np.sum(np.argmax(y, axis=1) == t))
    if task.loss == "mse":
        return {"mse": sq / (n * task.y_test.shape[1]), "within": correct / n}
    return {"loss": xent / n, "accuracy": correct / n}


# --- Files written atomically -----------------------------------------------------------
#
# Every file that tasks.py writes (checkpoints, run folders' files, job files, summaries)
# is first written to a temporary file in the same folder, named by tempfile.mkstemp with
# the writer's pid and a random suffix, so that two writers never share one, and then
# renamed over its final name with os.replace, which is atomic within a filesystem: a
# reader sees the old file or the new one, never part of one, and a writer killed midway
# leaves at most a hidden .<name>.<pid>.<random>.partial file beside it.

def _new_file_mode() -> int:
    """The mode open() gives a new file under the process's umask (mkstemp's is 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def _atomic_file(path, mode="w", **kwargs):
    """A file object open on a fresh temporary file beside ``path``; when the block ends
    without an exception it replaces ``path``, otherwise it is removed."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=".partial",
                               dir=folder)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            os.chmod(tmp, _new_file_mode())
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- Checkpoints -----------------------------------------------------------------------
# The keys of a checkpoint's config: those every version wrote (CHECKPOINT_CONFIG_KEYS),
# then those later versions added: permuted and train_size, inputs, the pixel dataset.
CHECKPOINT_CONFIG_OPTIONAL = ("permuted", "train_size", "inputs", "dataset")
TASK_SIZES = {"adding": (2, 1), "multiply": (2, 1), "pixel": (1, 10), "digits": (1, 10)}
IMAGE_STEPS = {"pixel": 784, "digits": 64}          # T of the image tasks: their pixels

_KIND_WORDS = {"int": "an integer >= 0", "num": "a number", "time": "a finite number >= 0",
               "str": "a string", "bool": "true or false", "list": "a list",
               "dict": "a JSON object"}


def _kind_ok(kind, v) -> bool:
    if kind.endswith("?"):
        return v is None or _kind_ok(kind[:-1], v)
    if kind == "int":
        return _is_int(v) and v >= 0
    if kind == "num":                       # nan and inf too: metrics of a diverging run
        return _is_number(v) and (_finite(v) or isinstance(v, float))
    if kind == "time":
        return _finite(v) and v >= 0
    return isinstance(v, {"str": str, "bool": bool, "list": list, "dict": dict}[kind])


def _check_record(d, kinds, where, optional=()):
    """A JSON object with exactly the fields of ``kinds`` (those in ``optional`` may be
    absent), each of its kind ("int", "num", "time", "str", "bool", "list", "dict"; a
    trailing "?" allows null). ValueError names ``where`` and the field."""
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(d).__name__}")
    missing = [k for k in kinds if k not in d and k not in optional]
    if missing:
        raise ValueError(f"{where} is missing {', '.join(missing)}")
    unknown = [k for k in d if k not in kinds]
    if unknown:
        raise ValueError(f"{where} has unknown fields {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(kinds)}")
    for k, kind in kinds.items():
        if k in d and not _kind_ok(kind, d[k]):
            raise ValueError(f"{where}: {k} must be {_KIND_WORDS[kind.rstrip('?')]}"
                             f"{' or null' if kind.endswith('?') else ''}, got {d[k]!r}")
    return d


def _check_checkpoint_config(config, params, where) -> dict:
    """A checkpoint's config checked field by field (RunConfig's checks), against itself
    (the scheme's nonlinearity, the task's sequence length) and against the parameters
    (hidden = the size of W_hh; D and O those of the task). Returns it in today's names
    (_saved_config). ``where`` names the config in messages."""
    if not isinstance(config, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(config).__name__}")
    missing = [k for k in CHECKPOINT_CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"{where} is missing {', '.join(missing)}")
    known = CHECKPOINT_CONFIG_KEYS + CHECKPOINT_CONFIG_OPTIONAL
    unknown = [k for k in config if k not in known]
    if unknown:
        raise ValueError(f"{where} has unknown keys {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(known)}")
    if not _one_of(config["task"], TASKS + ("mnist",)):
        raise ValueError(f"{where}: task must be one of {', '.join(TASKS)} (or the former "
                         f"'mnist'), got {config['task']!r}")
    c = _saved_config(config)
    _check_run_fields(c, where)
    f = nr.SCHEMES[c["scheme"]].nonlinearity
    if c["nonlinearity"] != f:
        raise ValueError(f"{where}: nonlinearity must be {f!r}, scheme {c['scheme']!r}'s, "
                         f"got {c['nonlinearity']!r}")
    T = IMAGE_STEPS.get(c["task"])
    if not (_is_int(c["seq_len"]) and (c["seq_len"] == T if T else c["seq_len"] >= 2)):
        raise ValueError(f"{where}: seq_len must be " + (
            f"{T} (one step per pixel of the {c['task']} task)" if T else
            "an integer >= 2") + f", got {c['seq_len']!r}")
    H, D, O, _ = nr.check_params(params)
    if c["hidden"] != H:
        raise ValueError(f"{where}: hidden={c['hidden']!r} but W_hh is {H} x {H}")
    if (D, O) != TASK_SIZES[c["task"]]:
        raise ValueError(f"{where}: the {c['task']} task has D={TASK_SIZES[c['task']][0]} "
                         f"inputs and O={TASK_SIZES[c['task']][1]} outputs, but W_hx and "
                         f"W_yh give D={D}, O={O}")
    return c


def _check_history(history, task, step, where) -> dict:
    """A training checkpoint's history (_History.state()) checked field by field; its
    evaluations must be those of the task and at steps <= the checkpoint's step."""
    _check_record(history, {"curve": "list", "best": "num?", "best_within": "num?",
                            "steps_to_target": "int?", "window": "list",
                            "train_seconds": "time", "wall_seconds": "time"}, where)
    metrics = ("test_mse", "test_within") if task in ("adding", "multiply") else \
        ("test_loss", "test_accuracy")
    kinds = {"step": "int", "train_loss": "num?", **{k: "num" for k in metrics}}
    for i, point in enumerate(history["curve"]):
        _check_record(point, kinds, f"{where}: curve[{i}]")
        if point["step"] > step:
            raise ValueError(f"{where}: curve[{i}] is at step {point['step']}, after the "
                             f"checkpoint's step {step}")
    for i, v in enumerate(history["window"]):
        if not _kind_ok("num", v):
            raise ValueError(f"{where}: window[{i}] must be a number, got {v!r}")
    return history


def save_checkpoint(path, params, velocity, step, config, rng, history=None):
    """Write a checkpoint .npz (format "nprnn-ref-checkpoint/1"), atomically.

    Keys: W_hx, W_hh, b_h, W_yh, b_y; velocity_<name> for each (zeros when velocity is
    None, which sgd_step treats identically); step (0-d int64); config (0-d str, JSON with
    the keys CHECKPOINT_CONFIG_KEYS and optionally CHECKPOINT_CONFIG_OPTIONAL, checked as
    load_checkpoint checks them); rng_state (0-d str, JSON of rng.bit_generator.state);
    format (0-d str); and, when given, history (0-d str, JSON: the run's evaluations so
    far, which a resumed run continues). Everything loads with allow_pickle=False.
    """
    path = _path_arg("path", path)
    if os.path.isdir(path):
        raise ValueError(f"path {path} is a folder, not a checkpoint file")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise FileNotFoundError(f"cannot write the checkpoint {path}: its folder does not "
                                "exist")
    nr.check_params(params)
    step = nr._check_size("step", step, minimum=0)
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    try:
        config_json = json.dumps(config, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"config must hold JSON values only ({e})") from None
    c = _check_checkpoint_config(json.loads(config_json), params, "config")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if history is not None:
        if not isinstance(history, dict):
            raise TypeError(f"history must be a dict or None, got {type(history).__name__}")
        try:
            history_json = json.dumps(history)
        except (TypeError, ValueError) as e:
            raise TypeError(f"history must hold JSON values only ({e})") from None
        _check_history(json.loads(history_json), c["task"], step, "history")
    if velocity is not None and not isinstance(velocity, dict):
        raise TypeError(f"velocity must be a dict of arrays or None, got "
                        f"{type(velocity).__name__}")
    arrays = {k: params[k] for k in nr.PARAM_NAMES}
    for k in nr.PARAM_NAMES:
        v = np.zeros_like(params[k]) if velocity is None else velocity.get(k)
        if not isinstance(v, np.ndarray) or v.shape != params[k].shape or \
                v.dtype != params[k].dtype:
            got = (f"{v.shape} {v.dtype.name}" if isinstance(v, np.ndarray) else
                   type(v).__name__)
            raise ValueError(f"velocity[{k!r}] must be an array of shape {params[k].shape} "
                             f"and dtype {params[k].dtype.name}, got {got}")
        nr._check_finite(f"velocity[{k!r}]", v)
        arrays["velocity_" + k] = v
    arrays["step"] = np.array(step, dtype=np.int64)
    arrays["config"] = np.array(config_json)
    arrays["rng_state"] = np.array(json.dumps(rng.bit_generator.state))
    arrays["format"] = np.array(CHECKPOINT_FORMAT)
    if history is not None:
        arrays["history"] = np.array(history_json)
    with _atomic_file(path, "wb") as f:                  # a unique temporary file
        np.savez(f, **arrays)


_CHECKPOINT_ARRAYS = (list(nr.PARAM_NAMES) + ["velocity_" + k for k in nr.PARAM_NAMES]
                      + ["step", "config", "rng_state"])


def _read_checkpoint_arrays(path, bad):
    """The arrays of a checkpoint file (history too, when present), format checked, and
    no entry the format does not have."""
    files, a = _read_npz(path, bad)
    if "format" not in files:
        raise ValueError(f"{bad}: no 'format' entry (keys: {', '.join(files) or 'none'})")
    fmt = a["format"]
    if fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != CHECKPOINT_FORMAT:
        got = repr(str(fmt)) if fmt.shape == () else f"an array of shape {fmt.shape}"
        raise ValueError(f"{bad}: format must be {CHECKPOINT_FORMAT!r}, got {got}")
    missing = [k for k in _CHECKPOINT_ARRAYS if k not in files]
    if missing:
        raise ValueError(f"{bad}: missing {', '.join(missing)}")
    unknown = [k for k in files if k not in _CHECKPOINT_ARRAYS + ["format", "history"]]
    if unknown:
        raise ValueError(f"{bad}: unknown entries {', '.join(map(repr, unknown))}")
    return {k: a[k] for k in _CHECKPOINT_ARRAYS + ["history"] if k in files}


def _json_entry(a, key, bad):
    """A 0-d JSON string entry of a checkpoint, decoded."""
    if a[key].shape != () or a[key].dtype.kind != "U":
        raise ValueError(f"{bad}: {key} must be a 0-d JSON string, got {a[key]!r}")
    try:
        return json.loads(str(a[key]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{bad}: {key} is not valid JSON ({e})") from None


def _rng_from_state(state, bad):
    try:
        bitgen = getattr(np.random, state["bit_generator"])
        if not (isinstance(bitgen, type) and issubclass(bitgen, np.random.BitGenerator)):
            raise ValueError(state["bit_generator"])
        bg = bitgen()
        bg.state = state
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise ValueError(f"{bad}: rng_state is not a numpy bit generator state ({e!r})") \
            from None
    return np.random.Generator(bg)


def load_checkpoint(path):
    """Read and validate a checkpoint written by save_checkpoint (allow_pickle=False).

    Returns dict(params=..., velocity=..., step=int, config=dict, rng=np.random.Generator
    in the saved state, history=dict or None). Every entry is checked: the arrays, and
    every field of the config (against the parameters too) and of the history. A missing
    file raises FileNotFoundError; a damaged or foreign file ValueError naming the file
    and what is wrong.
    """
    path = _path_arg("path", path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    bad = f"{path} is not an nprnn-ref checkpoint"
    a = _read_checkpoint_arrays(path, bad)
    params = {k: a[k] for k in nr.PARAM_NAMES}
    try:
        nr.check_params(params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{bad}: bad parameters: {e}") from None
    velocity = {}
    for k in nr.PARAM_NAMES:
        v = a["velocity_" + k]
        if v.shape != params[k].shape or v.dtype != params[k].dtype or \
                not np.all(np.isfinite(v)):
            raise ValueError(f"{bad}: velocity_{k} must be finite with shape "
                             f"{params[k].shape} and dtype {params[k].dtype.name}, got "
                             f"{v.shape} {v.dtype.name}")
        velocity[k] = v
    step = a["step"]
    if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
        raise ValueError(f"{bad}: step must be a 0-d integer >= 0, got {step!r}")
    config = _json_entry(a, "config", bad)
    task = _check_checkpoint_config(config, params, f"{path}: config")["task"]
    history = _json_entry(a, "history", bad) if "history" in a else None
    if history is not None:
        _check_history(history, task, int(step), f"{path}: history")
    return {"params": params, "velocity": velocity, "step": int(step), "config": config,
            "rng": _rng_from_state(_json_entry(a, "rng_state", bad), bad),
            "history": history}


# --- The training loop -----------------------------------------------------------------

def run_label(cfg: RunConfig) -> str:
    """A short name of one run: scheme, seed, and lr/clip when they vary in a sweep."""
    s = f"{cfg.scheme} s{cfg.seed}"
    if cfg.label_hp:
        s += f" lr{cfg.lr:g} c{format(cfg.clip, 'g') if cfg.clip else 'none'}"
    return s


def _all_finite(arrays):
    return all(np.all(np.isfinite(a)) for a in arrays)


def _checkpoint_config(cfg: RunConfig, task: _Task) -> dict:
    """What a checkpoint records of its run (CHECKPOINT_CONFIG_KEYS and a few more)."""
    c = {"task": cfg.task, "scheme": cfg.scheme,
         "nonlinearity": nr.SCHEMES[cfg.scheme].nonlinearity, "seq_len": task.T,
         "hidden": cfg.hidden, "lr": cfg.lr, "momentum": cfg.momentum, "clip": cfg.clip,
         "batch": cfg.batch, "seed": cfg.seed, "permuted": cfg.permuted,
         "inputs": cfg.inputs, "train_size": cfg.train_size}
    if cfg.task == "pixel":
        c["dataset"] = cfg.dataset
    return c


def _saved_config(config: dict) -> dict:
    """A checkpoint's config in today's names: the former task name "mnist" is the pixel
    task on MNIST; checkpoints older than input recipes used each scheme's own."""
    c = dict(config)
    if c.get("task") == "mnist":
        c.update(task="pixel", dataset=c.get("dataset", "mnist"))
    c.setdefault("inputs", "scheme")
    c.setdefault("permuted", False)               # what the versions without it trained
    c.setdefault("train_size", None)
    c.setdefault("dataset", None)
    return c


def _start(cfg: RunConfig, task: _Task, ck_cfg: dict, total: int):
    """(params, velocity, first step, data rng, history or None): fresh, or from
    cfg.resume after checking that it is a checkpoint of this run."""
    if not cfg.resume:
        params = nr.init_params(task.n_in, cfg.hidden, task.n_out, cfg.scheme,
                                np.random.default_rng([cfg.seed, 0]), inputs=cfg.inputs)
        return params, None, 0, np.random.default_rng([cfg.seed, 1]), None
    ck = load_checkpoint(cfg.resume)
    saved = _saved_config(ck["config"])
    for k in CHECKPOINT_CONFIG_KEYS + CHECKPOINT_CONFIG_OPTIONAL:
        if k in ck_cfg and saved.get(k) != ck_cfg[k]:
            raise ValueError(f"checkpoint {cfg.resume} has {k}={saved.get(k)!r} but this "
                             f"run has {k}={ck_cfg[k]!r}")
    if ck["params"]["W_hh"].dtype != np.float64:
        raise ValueError(f"checkpoint {cfg.resume} holds {ck['params']['W_hh'].dtype.name} "
                         "parameters; runs train in float64")
    if ck["step"] > total:
        raise ValueError(f"checkpoint {cfg.resume} is at step {ck['step']}, beyond the "
                         f"{total} steps asked for")
    return ck["params"], ck["velocity"], ck["step"], ck["rng"], ck.get("history")


class _History:
    """A run's evaluations and what is read from them: the curve, the best test metric,
    the first step below target_mse, the paper's metric at its best, the training losses
    since the last evaluation, and time. Carried in checkpoints, so that a resumed run
    continues it."""

    def __init__(self, cfg: RunConfig, saved=None):
        self.cfg, self.key = cfg, ("mse" if cfg.regression else "accuracy")
        s = saved or {}
        self.curve = s.get("curve", [])
        self.best, self.best_within = s.get("best"), s.get("best_within")
        self.steps_to_target = s.get("steps_to_target")
        self.window = s.get("window", [])
        self.train_seconds = s.get("train_seconds", 0.0)
        self.wall_seconds = s.get("wall_seconds", 0.0)
        self.last_metric = self.curve[-1]["test_" + self.key] if self.curve else None

    def record(self, step, m, eval_every):
        """One evaluation at ``step``, with the mean of the last ``eval_every`` training
        losses (those since the last evaluation, when the step is on the grid)."""
        self.window = self.window[-eval_every:]
        train_loss = float(np.mean(self.window)) if self.window else None
        v = self.last_metric = m[self.key]
        if self.best is None or (v < self.best if self.cfg.regression else v > self.best):
            self.best = v
        if self.cfg.regression:
            if self.best_within is None or m["within"] > self.best_within:
                self.best_within = m["within"]
            if self.steps_to_target is None and v < self.cfg.target_mse:
                self.steps_to_target = step
        self.curve.append({"step": step, "train_loss": train_loss,
                           **{"test_" + k: x for k, x in m.items()}})

    def state(self) -> dict:
        return {"curve": self.curve, "best": self.best, "best_within": self.best_within,
                "steps_to_target": self.steps_to_target, "window": self.window,
                "train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds}


def train_run(cfg: RunConfig, report=None, report_every=0.5):
    """Train one network by SGD with BPTT; return (record, curve).

    The checkpoint cfg.save is rewritten at every evaluation and at the end; a run
    resumed from it (cfg.resume) continues its history, so its record and curve equal an
    uninterrupted run's, timing aside. After each step the loss and the new parameters
    are checked: anything NaN or infinite stops the run as diverged at that step.
    report(dict) is called about every report_every seconds with the progress.
    """
    t_wall0 = time.perf_counter()
    task = _Task(cfg)
    total = cfg.steps if cfg.steps else cfg.epochs * task.steps_per_epoch
    eval_every = cfg.eval_every or task.steps_per_epoch or 500
    ck_cfg = _checkpoint_config(cfg, task)
    params, velocity, start, rng, saved = _start(cfg, task, ck_cfg, total)
    hist = _History(cfg, saved)
    wall0 = hist.wall_seconds
    nonlin = nr.SCHEMES[cfg.scheme].nonlinearity
    progress = _Reporter(report, report_every, run_label(cfg), start, total,
                         "test " + hist.key, hist.train_seconds)

    def checkpoint(step):
        hist.wall_seconds = wall0 + time.perf_counter() - t_wall0
        if cfg.save:
            save_checkpoint(cfg.save, params, velocity, step, ck_cfg, rng, hist.state())

    if saved is None:
        hist.record(start, evaluate(params, task, nonlin), eval_every)
    diverged_at, step = None, start
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for step in range(start + 1, total + 1):
            t0 = time.perf_counter()
            x, target = task.batch_for(rng, step - 1, cfg.batch)
            try:                                   # an overflow is a divergence, measured
                L, grads = nr.loss_and_grads(params, x, target, loss=task.loss,
                                             output="last", nonlinearity=nonlin)
                if cfg.clip:
                    grads, _ = nr.clip_grads(grads, cfg.clip)
                params_new, velocity = nr.sgd_step(params, grads, velocity, cfg.lr,
                                                   cfg.momentum)
            except nr.NonFiniteError:
                diverged_at = step
                break
            if not _all_finite(params_new.values()):
                diverged_at = step
                break
            params = params_new
            hist.train_seconds += time.perf_counter() - t0
            hist.window.append(float(L))
            if step % eval_every == 0 or step == total:
                hist.record(step, evaluate(params, task, nonlin), eval_every)
                checkpoint(step)
                progress(step, hist, force=True)
            else:
                progress(step, hist)
    hist.wall_seconds = wall0 + time.perf_counter() - t_wall0
    done = (diverged_at - 1 if diverged_at else total) - start
    progress(start + done, hist, force=True)
    return _run_record(cfg, task, hist, total, start, done, eval_every, diverged_at), \
        hist.curve


class _Reporter:
    """Calls report(progress dict) at most every ``every`` seconds (always when forced)."""

    def __init__(self, report, every, label, start, total, metric_name, train0=0.0):
        self.report, self.every, self.label = report, every, label
        self.start, self.total, self.metric_name = start, total, metric_name
        self.train0, self.last = train0, 0.0

    def due(self, force=False) -> bool:
        """Whether a call now would report (so a caller can skip building its view)."""
        return self.report is not None and (
            force or time.perf_counter() - self.last >= self.every)

    def __call__(self, step, hist, force=False):
        now = time.perf_counter()
        if self.report is None or (not force and now - self.last < self.every):
            return
        self.last = now
        seconds = hist.train_seconds - self.train0             # this part's training time
        self.report({"run": self.label, "step": step, "total": self.total,
                     "sps": (step - self.start) / seconds if seconds > 0 else 0.0,
                     "seconds": seconds,
                     "loss": float(np.mean(hist.window[-200:])) if hist.window else None,
                     "metric": hist.last_metric, "metric_name": self.metric_name})


def _run_record(cfg, task, hist, total, start, done, eval_every, diverged_at) -> dict:
    """The record of a finished run: its configuration, final and best metrics, time."""
    key = hist.key
    final = hist.curve[-1]["test_" + key] if hist.curve else None
    record = {
        "task": cfg.task, "scheme": cfg.scheme,
        "nonlinearity": nr.SCHEMES[cfg.scheme].nonlinearity, "inputs": cfg.inputs,
        "seed": cfg.seed, "lr": cfg.lr, "momentum": cfg.momentum, "clip": cfg.clip,
        "batch": cfg.batch, "hidden": cfg.hidden, "seq_len": task.T, "steps": total,
        "start_step": start, "steps_done": done, "eval_every": eval_every,
        "test_size": int(task.x_test.shape[1]), "diverged_at": diverged_at,
        "wall_seconds": hist.wall_seconds, "train_seconds": hist.train_seconds,
        "steps_per_second": ((start + done) / hist.train_seconds
                             if hist.train_seconds > 0 else None),   # over all parts
    }
    if cfg.regression:
        record.update(final_test_mse=final, best_test_mse=hist.best,
                      final_test_within=hist.curve[-1]["test_within"] if hist.curve else None,
                      best_test_within=hist.best_within, target_mse=cfg.target_mse,
                      steps_to_target=hist.steps_to_target, baseline_mse=task.baseline)
    else:
        record.update(final_test_accuracy=final, best_test_accuracy=hist.best,
                      epochs=cfg.epochs, steps_to_target=None,
                      final_test_loss=hist.curve[-1]["test_loss"] if hist.curve else None)
    if cfg.permuted:
        record["permuted"] = True
    if cfg.task == "pixel":
        record["dataset"] = cfg.dataset
    return record


# --- Many runs: in this process, or in worker processes (one BLAS thread each) ---------

def _fmt_time(s):
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


ETA_AFTER_SECONDS = 20.0     # a run's rate is trusted once it has trained this long


class Progress:
    """Live progress of several runs: one line rewritten with \\r on a terminal, plain
    lines at most every ``every`` seconds per run otherwise.

    Each run's ETA, and the job's overall ETA, appear once the rate they rest on has
    been measured over ETA_AFTER_SECONDS of training (the first steps include warm-up):
    the job's from the remaining steps of every run in ``plan`` ({label: total steps}),
    at the mean measured rate for runs not yet started, shared among ``jobs`` processes.
    """

    def __init__(self, stream=None, every=30.0, tty=None, plan=None, jobs=1):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every, self.plan, self.jobs = every, dict(plan or {}), jobs
        self.status, self.printed, self.width, self.finished = {}, {}, 0, set()
        self.rates = {}                           # the last trusted rate of every run

    @staticmethod
    def _rate(m):
        return m["sps"] if m.get("seconds", 0.0) >= ETA_AFTER_SECONDS and m["sps"] > 0 \
            else None

    def eta(self, m):
        r = self._rate(m)
        return (m["total"] - m["step"]) / r if r else None

    def job_eta(self):
        """Seconds left for the whole plan, or None while no rate is trusted yet."""
        rates = list(self.rates.values())
        if not self.plan or not rates:
            return None
        mean_rate, left, unfinished = sum(rates) / len(rates), 0.0, 0
        for label, total in self.plan.items():
            if label in self.finished:
                continue
            unfinished += 1
            m = self.status.get(label)
            rate = (self._rate(m) or mean_rate) if m else mean_rate
            left += (total - (m["step"] if m else 0)) / rate
        return left / max(1, min(self.jobs, unfinished))

    def text(self, m):
        loss = "-" if m["loss"] is None else f"{m['loss']:.4g}"
        met = "-" if m["metric"] is None else f"{m['metric']:.4g}"
        return (f"{m['run']}: {m['step']}/{m['total']} {m['sps']:.0f} steps/s loss {loss} "
                f"{m['metric_name']} {met} ETA {_fmt_time(self.eta(m))}")

    def _job_text(self):
        if not self.plan:
            return ""
        return (f"job {len(self.finished)}/{len(self.plan)} runs done, ETA "
                f"{_fmt_time(self.job_eta())}")

    def update(self, m):
        self.status[m["run"]] = m
        if self._rate(m):
            self.rates[m["run"]] = self._rate(m)
        if self.tty:
            import shutil
            cols = shutil.get_terminal_size((120, 20)).columns - 1
            parts = [self._job_text()] if self.plan else []
            line = " | ".join(parts + [self.text(v) for v in self.status.values()])[:cols]
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
            self.stream.flush()
        else:
            now = time.monotonic()
            if now - self.printed.get(m["run"], -1e9) >= self.every:
                self.printed[m["run"]] = now
                job = f" ({self._job_text()})" if self.plan else ""
                print(self.text(m) + job, file=self.stream, flush=True)

    def done(self, label, record=None, error=None):
        """Run ``label`` has ended: with its record, or with an error message."""
        self.status.pop(label, None)
        self.finished.add(label)
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        if error is not None:
            print(f"{label}: FAILED: {error}", file=self.stream, flush=True)
            return
        key = "mse" if "final_test_mse" in record else "accuracy"
        fin = record[f"final_test_{key}"]
        print(f"{label}: done, {record['steps_done']} steps, final test {key} "
              f"{'-' if fin is None else f'{fin:.4g}'}"
              + (f", DIVERGED at step {record['diverged_at']}" if record["diverged_at"]
                 else "") + f", {record['wall_seconds']:.0f} s", file=self.stream, flush=True)


# A worker must not outlive the process that started it: after a `kill -9` of the parent,
# workers left running would go on rewriting checkpoints and run folders that a new
# process (which finds their locks gone) may be writing too. On Linux the kernel kills
# the worker when its parent dies (prctl PR_SET_PDEATHSIG); everywhere, a thread of the
# worker checks once a second that its parent is still the one that started it (its
# parent pid, which changes when an orphan is adopted on POSIX systems, and the parent's
# process sentinel, which multiprocessing keeps on every system, Windows included).
PR_SET_PDEATHSIG = 1                    # from <linux/prctl.h>
PARENT_POLL_SECONDS = 1.0


def _die_with_parent(parent_pid: int) -> None:
    """Initializer of worker processes: end this process when ``parent_pid`` ends."""
    import multiprocessing
    import signal
    import threading
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass                                    # the watchdog below still works
    if os.getppid() != parent_pid:                  # it died before the prctl took hold
        os._exit(1)

    parent = multiprocessing.parent_process()       # None when not started by it

    def watch():
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            if os.getppid() != parent_pid or (parent is not None and not parent.is_alive()):
                os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker(fn, cfg, queue):
    """Entry point of a worker process (spawned, BLAS threads set in its environment)."""
    return fn(cfg, report=queue.put)


def run_many(cfgs, jobs=2, threads=1, progress=None, fn=None, label=None):
    """Run every config; return [(record, curve) or (cfg, error string)] in input order.

    jobs=1 runs them here one after another. Otherwise a pool of ``jobs`` spawned worker
    processes runs them, with the BLAS thread variables set to ``threads`` in the
    environment they inherit, so each worker's NumPy starts with that many threads. A run
    that raises is reported and the others go on. fn(cfg, report=...) trains one run
    (train_run by default) and label(cfg) names it (run_label by default).
    """
    fn = train_run if fn is None else fn
    label = run_label if label is None else label
    results = [None] * len(cfgs)
    if jobs == 1 or len(cfgs) == 1:
        for i, cfg in enumerate(cfgs):
            try:
                results[i] = fn(cfg, report=progress.update if progress else None)
                if progress:
                    progress.done(label(cfg), results[i][0])
            except Exception as e:  # a failed run must not stop the others
                results[i] = (cfg, f"{type(e).__name__}: {e}")
                if progress:
                    progress.done(label(cfg), error=results[i][1])
        return results
    import concurrent.futures as cf
    import multiprocessing as mp
    import multiprocessing.managers  # noqa: F401 (mp.managers)
    import queue as queue_mod
    ctx = mp.get_context("spawn")
    saved = {v: os.environ.get(v) for v in _BLAS_VARS}
    os.environ.update({v: str(threads) for v in _BLAS_VARS})
    manager = mp.managers.SyncManager(ctx=ctx)
    try:
        manager.start(_die_with_parent, (os.getpid(),))    # its server process, too
        with manager, cf.ProcessPoolExecutor(
                max_workers=jobs, mp_context=ctx, initializer=_die_with_parent,
                initargs=(os.getpid(),)) as pool:
            q = manager.Queue()
            futs = {pool.submit(_worker, fn, cfg, q): i for i, cfg in enumerate(cfgs)}
            pending = set(futs)
            while pending:
                try:
                    while True:
                        m = q.get(timeout=0.2)
                        if progress:
                            progress.update(m)
                except queue_mod.Empty:
                    pass
                finished = [f for f in pending if f.done()]
                for f in finished:
                    pending.discard(f)
                    i = futs[f]
                    try:
                        results[i] = f.result()
                        if progress:
                            progress.done(label(cfgs[i]), results[i][0])
                    except Exception as e:  # a failed run must not stop the others
                        results[i] = (cfgs[i], f"{type(e).__name__}: {e}")
                        if progress:
                            progress.done(label(cfgs[i]), error=results[i][1])
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old
    return results


# --- Job grids split across machines: run names, shards, job files, run folders --------
#
# A job is a list of runs. Its canonical order, which never changes between versions, is
# the order of the runs' names (plain string order): shard i of n (0-based) takes the
# runs at positions i, i + n, i + 2n, ... of that order. Every shard writes the job's
# file (the same content from every shard) and one folder per run it trained under the
# job's output root, so that `collect` can put the whole job together and say what is
# missing.

JOB_FORMAT = "nprnn-ref-job/1"
EXPERIMENT_RUN_FORMAT = "nprnn-ref-experiment-run/1"


def run_name(cfg: RunConfig) -> str:
    """A run's name, unique within a job: task, length or data set, scheme, seed, and
    lr and clip for the cells of a sweep."""
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"cfg must be a RunConfig, got {type(cfg).__name__}")
    what = {"pixel": f"pixel-{cfg.dataset}", "digits": "digits"}.get(
        cfg.task, f"{cfg.task}-T{cfg.seq_len}")
    name = f"{what}-{cfg.scheme}-seed{cfg.seed}"
    if cfg.label_hp:
        name += f"-lr{cfg.lr:g}-clip{'none' if cfg.clip is None else format(cfg.clip, 'g')}"
    return name


def shard_indices(names, shard) -> list:
    """The positions (in job order) of the runs of shard (i, n): those at i, i + n, ... of
    the job's canonical (name-sorted) order. Duplicate names are refused."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"names must be a list of run names (str), got "
                        f"{type(names).__name__} {names!r}"[:200])
    if not isinstance(shard, (list, tuple)) or len(shard) != 2 or \
            not all(_is_int(v) for v in shard):
        raise TypeError(f"shard must be a pair (i, n) of integers, got {shard!r}"[:200])
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"the job has duplicate runs: {', '.join(dup)}")
    i, n = shard
    if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < n):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
    canonical = sorted(range(len(names)), key=lambda k: names[k])
    chosen = set(canonical[i::n])
    return [k for k in range(len(names)) if k in chosen]


def write_job_file(root, kind, command, names, settings, replace=False,
                   check_only=False) -> str:
    """ROOT/job-<hash>.json: the job's kind ("experiment" or "paper"), command, run names
    in job order and settings. Every shard writes the same file (atomically, so shards
    writing it at once do not collide); a different one with the same runs is refused
    (ValueError) unless ``replace``. ``check_only``: refuse, but write nothing."""
    job = {"format": JOB_FORMAT, "kind": kind, "command": command, "runs": list(names),
           "settings": _json_safe(settings)}
    text = json.dumps(job, indent=1, sort_keys=True, allow_nan=False) + "\n"
    digest = hashlib.sha256(json.dumps(job["runs"]).encode()).hexdigest()[:12]
    path = os.path.join(root, f"job-{digest}.json")
    if os.path.lexists(path):
        try:
            with open(path) as f:
                same = f.read() == text
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable job file ({e})") from None
        if same:
            return path
        if not replace:
            raise ValueError(f"{path} describes the same runs with other settings; "
                             "choose another output root")
    if check_only:
        return path
    os.makedirs(root, exist_ok=True)
    with _atomic_file(path) as f:
        f.write(text)
    return path


def write_experiment_run(root, cfg: RunConfig, record, curve) -> str:
    """ROOT/<run name>/result.json: the configuration, the record and the curve of one
    finished run of an experiment command (strict JSON, written atomically)."""
    folder = os.path.join(root, run_name(cfg))
    os.makedirs(folder, exist_ok=True)
    doc = {"format": EXPERIMENT_RUN_FORMAT, "name": run_name(cfg),
           "config": dataclasses.asdict(cfg), "record": record, "curve": curve}
    with _atomic_file(os.path.join(folder, "result.json")) as f:
        json.dump(_json_safe(doc), f, indent=1, allow_nan=False)
        f.write("\n")
    return folder


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None


def collect_job(roots) -> dict:
    """Put together the job(s) whose files and run folders lie under ``roots``.

    Returns {"jobs": [job dicts], "kind": "experiment" or "paper", "runs": {name: what
    the run folder holds}, "missing": [names listed by a job file but not finished]}.
    A run found twice (under two roots or two folders) is refused, as are jobs of two
    kinds and run folders no job file lists. Without any job file, the run folders found
    are the job (and nothing can be said to be missing).
    """
    jobs, found = [], {}
    for root in roots:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root} is not a folder")
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            if entry.startswith("job-") and entry.endswith(".json"):
                job = _read_json(path)
                if not isinstance(job, dict) or job.get("format") != JOB_FORMAT:
                    raise ValueError(f"{path}: format must be {JOB_FORMAT!r}")
                if job.get("kind") not in ("experiment", "paper") or not (
                        isinstance(job.get("runs"), list)
                        and all(isinstance(n, str) for n in job["runs"])):
                    raise ValueError(f"{path}: a job file needs a kind (experiment or "
                                     "paper) and a list of run names")
                if job not in jobs:
                    jobs.append(job)
            elif os.path.isdir(path):
                run = _read_run_entry(path)
                if run is None:
                    continue
                if run["name"] in found:
                    raise ValueError(f"run {run['name']} is found twice: in "
                                     f"{found[run['name']]['folder']} and {path}")
                found[run["name"]] = run
    if not jobs and not found:
        raise ValueError(f"no job file (job-*.json) and no run folder under "
                         f"{', '.join(map(str, roots))}")
    kinds = {j["kind"] for j in jobs} | {"paper" if "spec" in r else "experiment"
                                         for r in found.values()}
    if len(kinds) > 1:
        raise ValueError(f"the roots hold jobs of several kinds: {', '.join(sorted(kinds))}")
    listed = [n for j in jobs for n in j["runs"]] if jobs else sorted(found)
    stray = sorted(set(found) - set(listed))
    if stray:
        raise ValueError(f"run folders that no job file lists: {', '.join(stray)}")
    missing = [n for n in dict.fromkeys(listed) if n not in found or not found[n]["done"]]
    return {"jobs": jobs, "kind": kinds.pop(), "runs": found, "missing": missing}


def select_runs(job, patterns) -> dict:
    """The part of a collected job whose run names match one of the shell patterns
    (fnmatch, case-sensitive): its runs and its missing runs. A pattern that matches no
    run of the job (found or missing) is refused (ValueError), so a typo never yields an
    empty or partial table that looks complete."""
    import fnmatch
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"patterns must be a list of str, got {patterns!r}"[:200])
    names = list(dict.fromkeys(list(job["runs"]) + job["missing"]))
    keep = set()
    for pattern in patterns:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hit:
            raise ValueError(f"--select {pattern!r} matches none of the job's "
                             f"{len(names)} runs (for example {', '.join(sorted(names)[:3])})")
        keep.update(hit)
    return {**job, "runs": {n: r for n, r in job["runs"].items() if n in keep},
            "missing": [n for n in job["missing"] if n in keep]}


def _read_run_entry(folder):
    """What a run folder holds: an experiment run (result.json) or a paper run (run.json,
    with summary.json once it ended); None for a folder that is neither."""
    if os.path.isfile(os.path.join(folder, "result.json")):
        doc = _read_json(os.path.join(folder, "result.json"))
        if not isinstance(doc, dict) or doc.get("format") != EXPERIMENT_RUN_FORMAT:
            raise ValueError(f"{folder}/result.json: format must be {EXPERIMENT_RUN_FORMAT!r}")
        if not (isinstance(doc.get("name"), str) and isinstance(doc.get("record"), dict)
                and isinstance(doc.get("curve"), list)):
            raise ValueError(f"{folder}/result.json: it needs a name, a record and a curve")
        return {"name": doc["name"], "folder": folder, "done": True, "record": doc["record"],
                "curve": doc["curve"]}
    if os.path.isfile(os.path.join(folder, "run.json")):
        spec, _, summary = read_run_folder(folder)
        if summary is not None and not (isinstance(summary, dict)
                                        and isinstance(summary.get("status"), str)):
            raise ValueError(f"{folder}/summary.json: not the summary of a run (no status)")
        done = summary is not None and summary["status"] != "paused"
        return {"name": spec.name, "folder": folder, "done": done, "summary": summary,
                "spec": spec}
    return None


# ---------------------------------------------------------------------------------------
# The paper's protocol: fixed training sets, the paper's metric, and run folders that a
# later process continues (python tasks.py paper adding|multiply|pixel, resume ROOT)
# ---------------------------------------------------------------------------------------

PAPER_TASKS = ("adding", "multiply", "pixel")
PAPER_THRESHOLDS = (0.5, 0.9)   # the update at which the metric first exceeds each is kept
RUN_FORMAT = "nprnn-ref-run/1"
RUN_CHECKPOINT_FORMAT = "nprnn-ref-run-checkpoint/1"
# The paper's networks (its Table 1) in the order its tables list them, then the
# project's own tanh RNN. This order is also the canonical order of runs in a job.
PAPER_SCHEMES = ("irnn", "i-rnn", "nrnn", "np", "np-tanh", "ornn", "grnn", "tanh")


@dataclasses.dataclass(frozen=True)
class PaperRun:
    """Everything that defines one run of the paper's protocol (frozen, written to
    run.json). Updates are minibatch steps; an epoch is train_size // batch updates."""
    task: str                      # adding | multiply | pixel
    scheme: str                    # a key of nprnn_ref.SCHEMES
    seed: int
    seq_len: int                   # T (784 for the pixel task)
    hidden: int
    inputs: str                    # a key of nprnn_ref.INPUT_RECIPES
    optimizer: str                 # sgd | rmsprop
    lr: float
    cool_factor: float             # lr *= cool_factor at each epoch of cool_epochs
    cool_epochs: tuple
    clip: float | None             # global-norm clipping threshold, None for none
    batch: int
    epochs: int
    train_size: int
    test_size: int
    eval_every: int                # updates between evaluations on the test set
    dataset: str | None = None     # pixel: mnist | fashion-mnist
    data: str | None = None        # pixel: the folder or .npz the images came from

    @property
    def updates_per_epoch(self) -> int:
        return self.train_size // self.batch

    @property
    def total_updates(self) -> int:
        return self.epochs * self.updates_per_epoch

    @property
    def name(self) -> str:
        """The run's folder name: task, length or data set, scheme, seed."""
        what = f"pixel-{self.dataset}" if self.task == "pixel" else \
            f"{self.task}-T{self.seq_len}"
        return f"{what}-{self.scheme}-seed{self.seed}"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["cool_epochs"] = list(self.cool_epochs)
        return d

    @classmethod
    def from_json(cls, d, source="run.json"):
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - fields or \
                {f.name for f in dataclasses.fields(cls) if f.default is
                 dataclasses.MISSING} - set(d):
            got = sorted(d, key=str) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{source}: spec must have the fields {sorted(fields)}, got "
                             f"{got}")
        where = f"{source}: spec"
        _check_record(d, _SPEC_KINDS, where, optional=("dataset", "data"))
        for k, names in (("task", PAPER_TASKS), ("scheme", tuple(nr.SCHEMES)),
                         ("inputs", tuple(nr.INPUT_RECIPES)),
                         ("optimizer", ("sgd", "rmsprop"))):
            if d[k] not in names:
                raise ValueError(f"{where}: {k} must be one of {', '.join(names)}, "
                                 f"got {d[k]!r}")
        if not all(_is_int(e) for e in d["cool_epochs"]):
            raise ValueError(f"{where}: cool_epochs must be a list of integers, got "
                             f"{d['cool_epochs']!r}")
        pixel = d["task"] == "pixel"
        if pixel and d.get("dataset") not in PIXEL_DATASETS or not pixel and (
                d.get("dataset") is not None or d.get("data") is not None):
            raise ValueError(f"{where}: dataset must be " + (
                f"one of {', '.join(PIXEL_DATASETS)}" if pixel else
                "null, and data null (only the pixel task reads files)") +
                f", got dataset={d.get('dataset')!r}, data={d.get('data')!r}")
        return cls(**dict(d, cool_epochs=tuple(d["cool_epochs"])))


# The kinds of a spec's fields in run.json (see _check_record).
_SPEC_KINDS = {"task": "str", "scheme": "str", "seed": "int", "seq_len": "int",
               "hidden": "int", "inputs": "str", "optimizer": "str", "lr": "num",
               "cool_factor": "num", "cool_epochs": "list", "clip": "num?", "batch": "int",
               "epochs": "int", "train_size": "int", "test_size": "int", "eval_every": "int",
               "dataset": "str?", "data": "str?"}


# The paper's settings (Talathi and Vartak, arXiv 1511.03771v3, sections 3 and 4).
PAPER_PROTOCOLS = {
    "adding": dict(seq_len=150, optimizer="sgd", lr=1e-3, cool_factor=0.1, cool_epochs=(),
                   clip=10.0, batch=1, epochs=10, train_size=100_000, test_size=10_000,
                   eval_every=10_000),
    "multiply": dict(seq_len=50, optimizer="sgd", lr=2e-4, cool_factor=0.1,
                     cool_epochs=(33, 66), clip=10.0, batch=16, epochs=100,
                     train_size=100_000, test_size=10_000, eval_every=None),
    "pixel": dict(seq_len=784, optimizer="sgd", lr=1e-4, cool_factor=0.1,
                  cool_epochs=(33, 66), clip=10.0, batch=16, epochs=100, train_size=60_000,
                  test_size=10_000, eval_every=None),
}                                               # eval_every None: once per epoch
# The pixel task's IRNN: the paper could not train it by SGD and used RMSprop at 1e-6.
PIXEL_IRNN = dict(optimizer="rmsprop", lr=1e-6, cool_epochs=())

PAPER_CHOICES = {
    "all": [
        "every network gets the paper's input recipe W_hx ~ N(0, alpha(H)^2 / H) "
        "(--inputs scheme gives IRNN and iRNN Le et al.'s N(0, 0.001^2) instead)",
        "W_yh Glorot normal, biases 0, one hidden layer of 100 units, float64",
        "gradients clipped by their global norm over all five parameters, at 10, for "
        "every task and optimiser (the paper gives 10 for adding only)",
        "gRNN: W_hh ~ N(0, 1/N) (the paper gives no scale; the spectral radius of each "
        "draw is recorded, median about 1.05 at N = 100)",
        "one seed per network and length, as the paper; the seed fixes the weights, the "
        "training and the test set, which every network of a seed shares",
        "the training set is drawn once and visited in a fresh shuffled order every "
        "epoch; an epoch is train_size // batch updates",
    ],
    "adding": ["evaluation on the whole test set every 10,000 updates"],
    "multiply": [
        "'cooled twice by a factor of 10 in equal intervals' read as lr / 10 from epoch "
        "33 and lr / 100 from epoch 66 (0-based: epochs 0-32, 33-65, 66-99)",
        "evaluation on the whole test set every epoch (6,250 updates)",
        "predicting 1/4 gives test MSE 7/144 = 0.049; the paper states 0.2025",
    ],
    "pixel": [
        "np-RNN and the other SGD networks: lr 1e-4, cooled by 10 from epochs 33 and 66; "
        "IRNN: RMSprop (PyTorch's form, alpha 0.99, eps 1e-8) at lr 1e-6, not cooled",
        "evaluation on the whole test split every epoch (3,750 updates)",
        "pixels scaled to [0, 1], read one per step in scanline order (T = 784)",
    ],
}


def paper_run(task, scheme, seed, *, dataset=None, data=None, inputs="paper", hidden=100,
              **overrides) -> PaperRun:
    """The paper's protocol for one run, with ``overrides`` (None values ignored)."""
    nr._check_choice("task", task, PAPER_TASKS)
    nr._check_choice("scheme", scheme, tuple(nr.SCHEMES))
    nr._check_choice("inputs", inputs, tuple(nr.INPUT_RECIPES))
    d = dict(PAPER_PROTOCOLS[task])
    if task == "pixel" and scheme == "irnn":
        d.update(PIXEL_IRNN)
    d.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(d.get("clip"), str) and d["clip"] == "none":   # explicit "no clipping"
        d["clip"] = None
    unknown = set(d) - {f.name for f in dataclasses.fields(PaperRun)}
    if unknown:
        raise TypeError(f"paper_run got unknown settings {sorted(unknown)}")
    nr._check_size("seq_len", d["seq_len"], minimum=2)
    if task == "pixel":
        nr._check_choice("dataset", dataset, tuple(PIXEL_DATASETS))
        if d["seq_len"] != 784:
            raise ValueError(f"seq_len of the pixel task must be 784, got {d['seq_len']}")
    else:
        dataset = data = None
    if d["eval_every"] is None:                       # once per epoch
        nr._check_size("batch", d["batch"])
        nr._check_size("train_size", d["train_size"])
        d["eval_every"] = max(1, d["train_size"] // d["batch"])
    if data is not None and not isinstance(data, str):
        raise TypeError(f"data must be None or a path (str), got {type(data).__name__}")
    if not isinstance(d["cool_epochs"], (list, tuple)):
        raise TypeError(f"cool_epochs must be a list or tuple of epochs, got "
                        f"{type(d['cool_epochs']).__name__}")
    d["cool_epochs"] = tuple(d["cool_epochs"])
    for k in ("lr", "cool_factor", "clip"):
        if _is_int(d[k]) and not _finite(d[k]):
            raise ValueError(f"{k} must be a finite number, got an integer of "
                             f"{len(str(d[k]))} digits")
    spec = PaperRun(task=task, scheme=scheme, seed=seed, hidden=hidden, inputs=inputs,
                    dataset=dataset, data=data, **d)
    _check_paper_run(spec)
    check_memory(f"the run {spec.name}", paper_memory(spec))
    return spec


def paper_memory(spec: PaperRun) -> dict:
    """The big arrays of a paper run, in bytes (see run_memory): the adding and
    multiplication problems' fixed training set (values (n, T) and their transpose while
    it is built, the markers and targets) and the test draws; the pixel task's images are
    read from files (its test set is counted by run_memory)."""
    D, O = TASK_SIZES[spec.task]
    T, n = spec.seq_len, spec.train_size
    parts = run_memory(T, spec.batch, spec.hidden, D, O, spec.test_size)
    if spec.task != "pixel":
        parts[f"the training set (train_size={n} x seq_len T={T}) and the test draws"] = \
            8 * (n * (2 * T + 3) + T * spec.test_size)
    return parts


def paper_departures(spec: PaperRun) -> list:
    """Where spec differs from the paper's protocol for its task and network, in words."""
    paper = paper_run(spec.task, spec.scheme, spec.seed, dataset=spec.dataset,
                      data=spec.data)
    per_epoch = PAPER_PROTOCOLS[spec.task]["eval_every"] is None
    out = []
    for k, v in spec.to_json().items():
        if k == "data" or v == paper.to_json()[k]:
            continue
        if k == "eval_every" and per_epoch and v == spec.updates_per_epoch:
            continue                                  # still once per epoch, as the paper
        out.append(f"departure: {k}={v} (the paper's protocol: {paper.to_json()[k]})")
    return out


def _check_paper_run(spec: PaperRun) -> None:
    nr._check_size("seed", spec.seed, minimum=0)
    nr._check_size("seq_len", spec.seq_len, minimum=2)
    for k in ("hidden", "batch", "epochs", "train_size", "test_size", "eval_every"):
        nr._check_size(k, getattr(spec, k))
    nr._check_choice("optimizer", spec.optimizer, ("sgd", "rmsprop"))
    nr._check_rate("lr", spec.lr, positive=True)
    try:
        nr.cooled_lr(spec.lr, 0, spec.cool_factor, spec.cool_epochs)  # validates them
    except (TypeError, ValueError) as e:
        raise type(e)(f"cool_factor={spec.cool_factor!r}, cool_epochs={spec.cool_epochs!r}:"
                      f" {e}".replace("milestones", "cool_epochs")
                      .replace("factor must", "cool_factor must")) from None
    if spec.clip is not None:
        nr._check_rate("clip", spec.clip, positive=True)
    if spec.batch > spec.train_size:
        raise ValueError(f"batch must be <= train_size={spec.train_size}, got {spec.batch}")


def _code_version():
    """(commit, dirty) of the git checkout this file lives in, or (None, None)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", here, "status", "--porcelain",
                                     "--untracked-files=no"], capture_output=True,
                                    text=True, timeout=10).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


# --- Data of a run: drawn once from the seed (adding, multiply) or read (pixel) ---------

def _check_image_sizes(spec, d):
    """A pixel run's train_size and test_size against the images ``d`` it reads."""
    if spec.train_size > len(d["y_train"]) or spec.test_size > len(d["y_test"]):
        raise ValueError(
            f"{spec.dataset} at {d['source']} has {len(d['y_train'])} training and "
            f"{len(d['y_test'])} test images, fewer than train_size="
            f"{spec.train_size} or test_size={spec.test_size}")


class _FixedData:
    """A run's training and test set. Training batches: epoch e visits the training set in
    the order of a permutation seeded by (seed, 3, e), batch k of the epoch taking
    positions k*B .. (k+1)*B - 1; so a resumed run continues mid-epoch exactly."""

    def __init__(self, spec: PaperRun):
        self.spec = spec
        self.regression = spec.task != "pixel"
        check_memory(f"the run {spec.name}", paper_memory(spec))
        if self.regression:
            # Training set from stream (seed, 1), test set from (seed, 2): the same for
            # every network of a seed. Training values are kept per sequence (n, T).
            values, first, second = _marker_draws(spec.train_size, spec.seq_len,
                                                  np.random.default_rng([spec.seed, 1]))
            cols = np.arange(spec.train_size)
            a, b = values[first, cols], values[second, cols]
            self.target = ((a + b) if spec.task == "adding" else (a * b))[:, None]
            self.values = np.ascontiguousarray(values.T)               # (n, T)
            del values
            self.first, self.second = first, second
            v, f, s2 = _marker_draws(spec.test_size, spec.seq_len,
                                     np.random.default_rng([spec.seed, 2]))
            c = np.arange(spec.test_size)
            self.x_test = _marked_inputs(v, f, s2)                       # (T, n, 2)
            ta, tb = v[f, c], v[s2, c]
            self.y_test = ((ta + tb) if spec.task == "adding" else (ta * tb))[:, None]
            self.n_in, self.n_out, self.loss = 2, 1, "mse"
        else:
            d = load_pixel_dataset(spec.dataset, spec.data)
            _check_image_sizes(spec, d)
            self.x_train = d["x_train"][:spec.train_size]
            self.y_train = d["y_train"][:spec.train_size]
            self.x_test = pixel_sequences(d["x_test"][:spec.test_size])  # (784, n, 1)
            self.y_test = d["y_test"][:spec.test_size]
            self.n_in, self.n_out, self.loss = 1, 10, "xent"
        self._epoch, self._order = None, None

    def batch(self, update: int):
        """The training batch of 0-based update ``update``: x (T, B, D), target."""
        spec = self.spec
        e, k = divmod(update, spec.updates_per_epoch)
        if e != self._epoch:
            self._epoch = e
            self._order = np.random.default_rng([spec.seed, 3, e]).permutation(
                spec.train_size)
        idx = self._order[k * spec.batch:(k + 1) * spec.batch]
        if not self.regression:
            return pixel_sequences(self.x_train[idx]), self.y_train[idx]
        B = len(idx)
        x = np.zeros((spec.seq_len, B, 2))                               # (T, B, 2)
        x[:, :, 0] = self.values[idx].T
        cols = np.arange(B)
        x[self.first[idx], cols, 1] = 1.0
        x[self.second[idx], cols, 1] = 1.0
        return x, self.target[idx]


def _evaluate_fixed(params, data, nonlinearity, max_elems=4_000_000):
    """Test metrics over the whole test set, in chunks. Regression: mse, within (the
    fraction of sequences with |error| < PAPER_TOLERANCE) and correct (their number).
    Classification: loss, accuracy, correct, and the predictions."""
    T, n, _ = data.x_test.shape
    H = params["W_hh"].shape[0]
    chunk = max(1, min(n, max_elems // (T * H)))
    ys = []
    for i in range(0, n, chunk):
        try:
            h, _ = nr.forward(params, data.x_test[:, i:i + chunk], nonlinearity=nonlinearity)
            ys.append(nr.readout(params, h, "last"))                    # (b, O)
        except nr.NonFiniteError:           # states or read-out overflowed: the worst score
            if data.regression:
                return {"mse": math.inf, "within": 0.0, "correct": 0}
            return {"loss": math.inf, "accuracy": 0.0, "correct": 0,
                    "pred": np.full(n, -1)}
    y = np.concatenate(ys)                                               # (n, O)
    if data.regression:
        err = y - data.y_test
        correct = int(np.sum(np.abs(err[:, 0]) < PAPER_TOLERANCE))
        return {"mse": float(np.mean(err * err)), "within": correct / n, "correct": correct}
    L, _ = nr.loss_fn(y, data.y_test, "xent")
    pred = np.argmax(y, axis=1)
    correct = int(np.sum(pred == data.y_test))
    return {"loss": float(L), "accuracy": correct / n, "correct": correct, "pred": pred}


# --- One run: train, evaluate, checkpoint, continue -------------------------------------

def _new_history(spec, params):
    return {"curve": [], "best_metric": None, "best_mse": None, "best_loss": None,
            "first_update_above": {str(t): None for t in PAPER_THRESHOLDS},
            "train_seconds": 0.0, "wall_seconds": 0.0, "parts": 0, "diverged_at": None,
            "init_spectral_radius": nr.spectral_radius(params["W_hh"])}


def _record_eval(history, spec, update, lr, train_loss, m):
    """Append one evaluation to history and update its best values and thresholds."""
    metric = m["within"] if "within" in m else m["accuracy"]
    point = {"update": update, "epoch": update / spec.updates_per_epoch, "lr": lr,
             "train_loss": train_loss}
    point.update({"test_" + k: v for k, v in m.items() if k != "pred"})
    history["curve"].append(point)
    if history["best_metric"] is None or metric > history["best_metric"]:
        history["best_metric"] = metric
    for k in ("mse", "loss"):
        if k in m and (history["best_" + k] is None or m[k] < history["best_" + k]):
            history["best_" + k] = m[k]
    for t in PAPER_THRESHOLDS:
        if history["first_update_above"][str(t)] is None and metric > t:
            history["first_update_above"][str(t)] = update


def _save_run_checkpoint(folder, spec, params, opt_state, update, history, pending):
    """checkpoint.npz: parameters, optimiser state, the next update, the history so far
    and the training losses since the last evaluation (written atomically)."""
    arrays = {k: params[k] for k in nr.PARAM_NAMES}
    for k in nr.PARAM_NAMES:
        arrays["opt_" + k] = (np.zeros_like(params[k]) if opt_state is None
                              else opt_state[k])
    arrays.update(update=np.array(update, np.int64),
                  opt_state_set=np.array(opt_state is not None),
                  pending_losses=np.array(pending, np.float64),
                  history=np.array(json.dumps(history)),
                  spec=np.array(json.dumps(spec.to_json(), sort_keys=True)),
                  format=np.array(RUN_CHECKPOINT_FORMAT))
    with _atomic_file(os.path.join(folder, "checkpoint.npz"), "wb") as f:
        np.savez(f, **arrays)


_RUN_CHECKPOINT_ARRAYS = (list(nr.PARAM_NAMES) + ["opt_" + k for k in nr.PARAM_NAMES]
                          + ["update", "opt_state_set", "pending_losses", "history", "spec",
                             "format"])


def _check_paper_history(history, spec, update, where) -> dict:
    """A run checkpoint's history (_new_history, _record_eval) checked field by field;
    its evaluations must be those of the task and at updates <= the checkpoint's."""
    _check_record(history, {"curve": "list", "best_metric": "num?", "best_mse": "num?",
                            "best_loss": "num?", "first_update_above": "dict",
                            "train_seconds": "time", "wall_seconds": "time", "parts": "int",
                            "diverged_at": "int?", "init_spectral_radius": "num"}, where)
    _check_record(history["first_update_above"], {str(t): "int?" for t in PAPER_THRESHOLDS},
                  f"{where}: first_update_above")
    metrics = ("test_loss", "test_accuracy") if spec.task == "pixel" else \
        ("test_mse", "test_within")
    kinds = {"update": "int", "epoch": "num", "lr": "num", "train_loss": "num?",
             **{k: "num" for k in metrics}, "test_correct": "int"}
    for i, point in enumerate(history["curve"]):
        _check_record(point, kinds, f"{where}: curve[{i}]")
        if point["update"] > update:
            raise ValueError(f"{where}: curve[{i}] is at update {point['update']}, after "
                             f"the checkpoint's update {update}")
    return history


def _load_run_checkpoint(folder, spec):
    """The state saved by _save_run_checkpoint, every entry checked, and checked against
    spec: (params, optimiser state or None, next update, history, pending losses)."""
    path = os.path.join(folder, "checkpoint.npz")
    bad = f"{path} is not a checkpoint of this run"
    files, a = _read_npz(path, bad)
    fmt = a.get("format")
    if fmt is None or fmt.shape != () or fmt.dtype.kind != "U" or \
            str(fmt) != RUN_CHECKPOINT_FORMAT:
        raise ValueError(f"{bad}: format must be {RUN_CHECKPOINT_FORMAT!r}")
    missing = [k for k in _RUN_CHECKPOINT_ARRAYS if k not in files]
    unknown = [k for k in files if k not in _RUN_CHECKPOINT_ARRAYS]
    if missing or unknown:
        raise ValueError(f"{bad}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) +
            ([f"unknown entries {', '.join(map(repr, unknown))}"] if unknown else [])))
    if _json_entry(a, "spec", bad) != spec.to_json():
        raise ValueError(f"{bad}: its spec differs from run.json")
    params = {k: a[k] for k in nr.PARAM_NAMES}
    try:
        H, D, O, dtype = nr.check_params(params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{bad}: bad parameters: {e}") from None
    want = TASK_SIZES[spec.task]
    if (H, D, O, dtype) != (spec.hidden, *want, np.float64):
        raise ValueError(f"{bad}: the run has hidden={spec.hidden}, D={want[0]}, "
                         f"O={want[1]} in float64; the parameters give hidden={H}, D={D}, "
                         f"O={O} in {dtype.name}")
    flag = a["opt_state_set"]
    if flag.shape != () or flag.dtype != np.bool_:
        raise ValueError(f"{bad}: opt_state_set must be a 0-d bool, got {flag!r}")
    for k in nr.PARAM_NAMES:
        v = a["opt_" + k]
        rms = spec.optimizer == "rmsprop"
        if v.shape != params[k].shape or v.dtype != np.float64 or \
                not np.all(np.isfinite(v)) or (rms and np.any(v < 0)):
            raise ValueError(f"{bad}: opt_{k} must be finite with shape {params[k].shape} "
                             "and dtype float64" + (", and >= 0 (RMSprop's running "
                                                    "averages of squares)" if rms else "")
                             + f", got {v.shape} {v.dtype.name}")
    update = a["update"]
    if update.shape != () or update.dtype.kind not in "iu" or \
            not 0 <= int(update) <= spec.total_updates:
        raise ValueError(f"{bad}: update must be a 0-d integer in 0..{spec.total_updates}, "
                         f"got {update!r}")
    pending = a["pending_losses"]
    if pending.ndim != 1 or pending.dtype != np.float64 or not np.all(np.isfinite(pending)):
        raise ValueError(f"{bad}: pending_losses must be a 1-d array of finite float64 "
                         f"losses, got shape {pending.shape} dtype {pending.dtype.name}")
    history = _check_paper_history(_json_entry(a, "history", bad), spec, int(update),
                                   f"{path}: history")
    opt_state = {k: a["opt_" + k] for k in nr.PARAM_NAMES} if bool(flag) else None
    return params, opt_state, int(update), history, [float(v) for v in pending]


def _write_curves_csv(folder, spec, history):
    import csv
    rows = history["curve"]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with _atomic_file(os.path.join(folder, "curves.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["run", "task", "scheme", "seed", "seq_len"] + fields,
                           restval="")
        w.writeheader()
        for r in rows:
            w.writerow({"run": spec.name, "task": spec.task, "scheme": spec.scheme,
                        "seed": spec.seed, "seq_len": spec.seq_len,
                        **{k: ("" if v is None else v) for k, v in r.items()}})


def _json_safe(v):
    """Non-finite floats as None, so that summary.json is strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def run_summary(spec: PaperRun, history: dict, status: str, extra=None, done=None) -> dict:
    """A run's record: the spec, final and best values, thresholds, timing. ``done``: the
    updates done so far, for a run paused before its end."""
    curve = history["curve"]
    last = curve[-1] if curve else {}
    regression = spec.task != "pixel"
    metric_key = "test_within" if regression else "test_accuracy"
    if done is None:
        done = (history["diverged_at"] - 1) if history["diverged_at"] else spec.total_updates
    rec = {"run": spec.name, **spec.to_json(), "status": status,
           "paper_name": nr.SCHEMES[spec.scheme].paper_name,
           "nonlinearity": nr.SCHEMES[spec.scheme].nonlinearity,
           "updates": spec.total_updates, "updates_done": done,
           "diverged_at": history["diverged_at"],
           "final_metric": last.get(metric_key), "best_metric": history["best_metric"],
           "final_correct": last.get("test_correct"),
           "first_update_above_50": history["first_update_above"]["0.5"],
           "first_update_above_90": history["first_update_above"]["0.9"],
           "init_spectral_radius": history["init_spectral_radius"],
           "wall_seconds": history["wall_seconds"], "train_seconds": history["train_seconds"],
           "parts": history["parts"],
           "updates_per_second": (done / history["train_seconds"]
                                  if history["train_seconds"] > 0 else None)}
    if regression:
        rec.update(final_test_mse=last.get("test_mse"), best_test_mse=history["best_mse"])
    else:
        rec.update(final_test_accuracy=last.get("test_accuracy"),
                   final_test_loss=last.get("test_loss"), best_test_loss=history["best_loss"])
    rec.update(extra or {})
    rec["steps_done"] = done                    # the name Progress.done reads
    return _json_safe(rec)


def create_run_folder(root, spec: PaperRun, choices=()) -> str:
    """Write ROOT/<spec.name>/run.json (the spec, the code's commit and version, the
    choices made where the paper is silent). Refuses (FileExistsError) a folder that
    exists: creating it is how a run claims its name, even against another process."""
    folder = os.path.join(root, spec.name)
    if os.path.lexists(folder):
        raise FileExistsError(f"run folder {folder} already exists")
    os.makedirs(root, exist_ok=True)
    try:
        os.mkdir(folder)
    except FileExistsError:
        raise FileExistsError(f"run folder {folder} already exists") from None
    commit, dirty = _code_version()
    meta = {"format": RUN_FORMAT, "spec": spec.to_json(), "commit": commit, "dirty": dirty,
            "nprnn_ref": nr.__version__, "numpy": np.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "choices": list(choices)}
    with _atomic_file(os.path.join(folder, "run.json")) as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return folder


_META_KINDS = {"format": "str", "spec": "dict", "commit": "str?", "dirty": "bool?",
               "nprnn_ref": "str", "numpy": "str", "created": "str", "choices": "list"}


def _check_summary(summary, spec, where) -> dict:
    """A summary.json (run_summary, as _finish_paper_run writes it) checked field by field
    and against the run's spec."""
    kinds = {"run": "str", **_SPEC_KINDS, "status": "str", "paper_name": "str",
             "nonlinearity": "str", "updates": "int", "updates_done": "int",
             "diverged_at": "int?", "final_metric": "num?", "best_metric": "num?",
             "final_correct": "int?", "first_update_above_50": "int?",
             "first_update_above_90": "int?", "init_spectral_radius": "num?",
             "wall_seconds": "time", "train_seconds": "time", "parts": "int",
             "updates_per_second": "num?", "steps_done": "int"}
    if spec.task == "pixel":
        kinds.update(final_test_accuracy="num?", final_test_loss="num?",
                     best_test_loss="num?", per_class_accuracy="dict")
    else:
        kinds.update(final_test_mse="num?", best_test_mse="num?")
    _check_record(summary, kinds, where, optional=("per_class_accuracy",))
    for k, v in spec.to_json().items():
        if summary[k] != v:
            raise ValueError(f"{where}: {k}={summary[k]!r} differs from run.json's {v!r}")
    checks = [("run", summary["run"] == spec.name, repr(spec.name)),
              ("status", summary["status"] in ("finished", "diverged", "paused"),
               "'finished', 'diverged' or 'paused'"),
              ("nonlinearity", summary["nonlinearity"] == nr.SCHEMES[spec.scheme].nonlinearity,
               repr(nr.SCHEMES[spec.scheme].nonlinearity)),
              ("updates", summary["updates"] == spec.total_updates, str(spec.total_updates)),
              ("updates_done", summary["updates_done"] <= spec.total_updates,
               f"<= {spec.total_updates}")]
    for k, ok, want in checks:
        if not ok:
            raise ValueError(f"{where}: {k} must be {want}, got {summary[k]!r}")
    if "per_class_accuracy" in summary:
        names = list(CLASS_NAMES[spec.dataset])
        pca = summary["per_class_accuracy"]
        if list(pca) != names or not all(_kind_ok("num?", v) for v in pca.values()):
            raise ValueError(f"{where}: per_class_accuracy must map the classes "
                             f"{', '.join(names)} to numbers, got {pca!r}")
    return summary


def _read_json_file(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:                 # ValueError: bad JSON or UTF-8
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None


def read_run_folder(folder) -> tuple:
    """(spec, meta, summary or None) of a run folder: run.json, and summary.json when the
    run has ended, every field checked (ValueError naming the file and the field)."""
    folder = _path_arg("folder", folder)
    path = os.path.join(folder, "run.json")
    try:
        meta = _read_json_file(path)
    except ValueError as e:
        raise ValueError(str(e).replace("not a readable JSON file", "not a readable "
                                        "run.json")) from None
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise ValueError(f"{path}: format must be {RUN_FORMAT!r}")
    _check_record(meta, _META_KINDS, path, optional=("nprnn_ref",))  # may be absent
    if not all(isinstance(c, str) for c in meta["choices"]):
        raise ValueError(f"{path}: choices must be a list of strings")
    spec = PaperRun.from_json(meta["spec"], path)
    try:
        _check_paper_run(spec)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: spec: {e}") from None
    summary = None
    sp = os.path.join(folder, "summary.json")
    if os.path.exists(sp):
        summary = _check_summary(_read_json_file(sp), spec, sp)
    return spec, meta, summary


def _open_paper_run(folder, spec, data, nonlin):
    """(params, optimiser state, next update, history, pending losses): from the run's
    checkpoint, or fresh (initialised from stream (seed, 0) and evaluated once)."""
    if os.path.exists(os.path.join(folder, "checkpoint.npz")):
        return _load_run_checkpoint(folder, spec)
    params = nr.init_params(data.n_in, spec.hidden, data.n_out, spec.scheme,
                            np.random.default_rng([spec.seed, 0]), inputs=spec.inputs)
    history = _new_history(spec, params)
    _record_eval(history, spec, 0, spec.lr, None, _evaluate_fixed(params, data, nonlin))
    return params, None, 0, history, []


def _paper_update(spec, data, nonlin, params, opt_state, u, lr, h0):
    """Update u (0-based): (loss, new params, new optimiser state), or None when the loss
    or the new parameters are not finite (the run diverged)."""
    x, target = data.batch(u)
    # loss_and_grads without its validation, which the data and parameters of a run do
    # not need at every update: the same functions, the same numbers.
    h, cache = nr._forward(params, x, h0, nonlin)
    with np.errstate(all="ignore"):
        L, dy = nr._loss_fn(nr._readout(params, h, "last"), target, data.loss)
    if not np.isfinite(L):
        return None
    grads = nr._grads_from(dy, params, h, cache, "last")
    if spec.clip is not None:
        try:
            grads, _ = nr.clip_grads(grads, spec.clip)
        except nr.NonFiniteError:                # a gradient overflowed: diverged
            return None
    dtype = params["W_hh"].dtype
    if spec.optimizer == "sgd":
        new, state = nr._sgd_update(params, grads, opt_state, lr, 0.0, dtype)
    else:
        new, state = nr._rmsprop_update(params, grads, opt_state, lr, 0.99, 1e-8, dtype)
    if not _all_finite(new.values()):
        return None
    return float(L), new, state


def _finish_paper_run(folder, spec, data, nonlin, params, history, last_m) -> dict:
    """Write curves.csv and summary.json (strict JSON) of a run that ended."""
    diverged = history["diverged_at"] is not None
    _write_curves_csv(folder, spec, history)
    extra = {}
    if not data.regression and not diverged:
        m = last_m if last_m is not None else _evaluate_fixed(params, data, nonlin)
        extra["per_class_accuracy"] = {
            name: float(np.mean(m["pred"][data.y_test == c] == c))
            for c, name in enumerate(CLASS_NAMES[spec.dataset])}
    summary = run_summary(spec, history, "diverged" if diverged else "finished", extra)
    with _atomic_file(os.path.join(folder, "summary.json")) as f:
        json.dump(summary, f, indent=1, allow_nan=False)
        f.write("\n")
    return summary


def train_paper_run(folder, report=None, report_every=0.5, until=None) -> dict:
    """Train (or continue) the run in ``folder`` to its last update, or to update
    ``until``; return its summary (status "finished", "diverged" or "paused").

    The history (curve, best values, first update past each threshold, wall and training
    time summed over the parts) is carried in the checkpoint, so a run continued from its
    checkpoint ends with the summary of an uninterrupted run, timing aside. Checkpoints
    are written at every evaluation and at ``until``; a killed run loses at most the
    updates since its last checkpoint.
    """
    spec, _, summary = read_run_folder(folder)
    if summary is not None and summary["status"] != "paused":
        return summary
    t_part = time.perf_counter()
    data, nonlin, total = _FixedData(spec), nr.SCHEMES[spec.scheme].nonlinearity, \
        spec.total_updates
    params, opt_state, update, history, pending = _open_paper_run(folder, spec, data, nonlin)
    stop = total if until is None else min(until, total)
    if stop <= update and update < total:              # nothing to do: leave it as it is
        return run_summary(spec, history, "paused", done=update)
    history["parts"] += 1
    wall0, train0 = history["wall_seconds"], history["train_seconds"]
    nr.check_params(params)                    # validated once: the loop below skips it
    h0 = np.zeros((spec.batch, spec.hidden), params["W_hh"].dtype)
    progress = _Reporter(report, report_every, spec.name, update, total,
                         "test " + ("within" if data.regression else "acc"), train0)
    lr_epoch, train_time, last_m = None, 0.0, None

    def clocks():
        history["wall_seconds"] = wall0 + (time.perf_counter() - t_part)
        history["train_seconds"] = train0 + train_time

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for u in range(update, stop):
            t0 = time.perf_counter()
            if u // spec.updates_per_epoch != lr_epoch:
                lr_epoch = u // spec.updates_per_epoch
                lr = nr.cooled_lr(spec.lr, lr_epoch, spec.cool_factor, spec.cool_epochs)
            step = _paper_update(spec, data, nonlin, params, opt_state, u, lr, h0)
            if step is None:
                history["diverged_at"] = u + 1
                break
            L, params, opt_state = step
            pending.append(L)
            train_time += time.perf_counter() - t0
            if (u + 1) % spec.eval_every == 0 or u + 1 == total:
                last_m = _evaluate_fixed(params, data, nonlin)
                _record_eval(history, spec, u + 1, lr, float(np.mean(pending)), last_m)
                pending = []
                clocks()
                _save_run_checkpoint(folder, spec, params, opt_state, u + 1, history, [])
                _write_curves_csv(folder, spec, history)
            if progress.due(force=u + 1 == stop):
                progress(u + 1, _PaperProgress(history, pending, train0 + train_time),
                         force=True)
    clocks()
    if history["diverged_at"] is not None or stop == total:
        return _finish_paper_run(folder, spec, data, nonlin, params, history, last_m)
    if stop % spec.eval_every != 0:
        _save_run_checkpoint(folder, spec, params, opt_state, stop, history, pending)
        _write_curves_csv(folder, spec, history)
    return run_summary(spec, history, "paused", done=stop)


class _PaperProgress:
    """The view of a paper run's history that _Reporter reads."""

    def __init__(self, history, pending, train_seconds):
        c = history["curve"][-1]
        self.window = pending if pending else ([c["train_loss"]] if c["train_loss"]
                                               is not None else [])
        self.last_metric = c.get("test_within", c.get("test_accuracy"))
        self.train_seconds = train_seconds


# --- Jobs: many runs under one root -----------------------------------------------------

def canonical_key(spec: PaperRun):
    """The canonical order of runs in a job: task, length, data set, network in
    PAPER_SCHEMES' order (others after, by name), seed, then the name itself."""
    rank = PAPER_SCHEMES.index(spec.scheme) if spec.scheme in PAPER_SCHEMES else \
        len(PAPER_SCHEMES)
    return (PAPER_TASKS.index(spec.task), spec.seq_len, spec.dataset or "", rank,
            spec.scheme, spec.seed, spec.name)


def find_run_folders(root) -> list:
    """Every run folder (holding run.json) directly under root, in canonical order."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a folder")
    found = []
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if os.path.isfile(os.path.join(folder, "run.json")):
            found.append((read_run_folder(folder)[0], folder))
    found.sort(key=lambda sf: canonical_key(sf[0]))
    return [f for _, f in found]


# ---------------------------------------------------------------------------------------
# Analysis commands: dynamics, gradflow, sensitivity, spectrum (the paper's argument)
# ---------------------------------------------------------------------------------------

ANALYSIS_SCHEMES = ("np", "irnn", "i-rnn", "tanh")
ANALYSIS_HIDDEN = 100           # hidden units N of the fresh initialisations
ANALYSIS_SEQ_LEN = 400          # T of the adding-problem batch, unless told otherwise
# The tasks whose checkpoints --trained reads, by the name their training command writes
# into the checkpoint's config: the generator of the data (D = 2, O = 1), and its name.
ANALYSIS_TASKS = {"adding": (adding_problem, "adding problem"),
                  "multiply": (multiplication_problem, "multiplication problem")}


def load_trained(path: str):
    """(params, config, step) of a training checkpoint of a task in ANALYSIS_TASKS (see
    load_checkpoint). A missing file raises FileNotFoundError, a damaged or foreign one,
    or one of another task, ValueError."""
    ck = load_checkpoint(path)
    params, config = ck["params"], ck["config"]
    H, D, O, _ = nr.check_params(params)
    if config.get("task") not in ANALYSIS_TASKS or D != 2 or O != 1:
        raise ValueError(f"--trained needs a checkpoint of the "
                         f"{' or '.join(ANALYSIS_TASKS)} task (D=2 inputs, O=1 output), "
                         f"got task {config.get('task')!r} with D={D}, O={O}")
    if config.get("nonlinearity") not in nr.NONLINEARITIES:
        raise ValueError(f"checkpoint config nonlinearity must be one of "
                         f"{nr.NONLINEARITIES}, got {config.get('nonlinearity')!r}")
    return params, config, int(ck["step"])


def _figure_class():
    """matplotlib's Figure (no pyplot, no global backend state); MissingPackage when
    matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingPackage(f"{MATPLOTLIB_MISSING} (or run without --plot for the "
                             "tables)") from None
    return Figure


def _save(fig, path, out):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}", file=out)


def _report_steps(T: int):
    """A few steps t to tabulate, always 1 and T."""
    return sorted({1, max(1, T // 8), max(1, T // 4), max(1, T // 2),
                   max(1, 3 * T // 4), T})


def _fmt_g(v: float) -> str:
    return f"{v:10.3g}" if v != 0 else f"{'0':>10}"


# ---- dynamics ---------------------------------------------------------------------------

def mixed_sign_fraction(n: int, draws: int, rng: np.random.Generator) -> float:
    """Fraction of np_init(n) draws whose top eigenvector has entries of both signs."""
    mixed = 0
    for _ in range(draws):
        v = np.linalg.eigh(nr.np_init(n, rng))[1][:, -1]   # top eigenvector
        mixed += bool(v.min() < 0.0 < v.max())
    return mixed / draws


def np_init_two_node_fates(draws: int, rng: np.random.Generator, starts: int = 5,
                           steps: int = 2000) -> dict:
    """Where zero-input ReLU trajectories of np_init(2) end, split by the sign of the
    off-diagonal entry (> 0: W >= 0 and the top eigenvector is positive; < 0: it has mixed
    signs). All draws are iterated at once (a batched h <- max(0, W h))."""
    Ws = np.stack([nr.np_init(2, rng) for _ in range(draws)])           # (draws, 2, 2)
    h0 = rng.uniform(0.0, 1.0, size=(draws, starts, 2))
    h = h0.copy()
    for _ in range(steps):
        h = np.maximum(np.einsum("dij,dkj->dki", Ws, h), 0.0)           # (draws, K, 2)
    v = np.linalg.eigh(Ws)[1][:, :, -1]                                  # (draws, 2)
    v *= np.sign(v.sum(axis=1, keepdims=True))
    line = np.einsum("dk,di->dki", np.einsum("dkj,dj->dk", h0, v), v)   # (v . h0) v
    scale = np.linalg.norm(h0, axis=2)                                   # (draws, K)
    on_line = np.linalg.norm(h - line, axis=2) < 1e-6 * scale
    at_zero = np.linalg.norm(h, axis=2) < 1e-6 * scale
    pos = Ws[:, 0, 1] > 0
    return {"nonneg": int(pos.sum()), "line_pos": int(on_line[pos].sum()),
            "zero_neg": int(at_zero[~pos].sum()),
            "max_neg": float((np.linalg.norm(h, axis=2) / scale)[~pos].max(initial=0.0))}


def _print_two_node_cases(cases, out) -> None:
    """Where h_{t+1} = max(0, W h_t) takes h_0 = (1, 0.25) in each 2-node case."""
    h0 = np.array([[1.0, 0.25]])
    T2 = 50
    print("Zero-input, zero-bias ReLU map h_{t+1} = max(0, W h_t), 2 nodes, "
          f"from h_0 = (1, 0.25), {T2} steps:", file=out)
    print(f"{'case':<5} {'W':<28} {'eigenvalues':<14} {'h_50 (measured)':<24} "
          "where non-negative trajectories end", file=out)
    for c in cases:
        hT = nr.autonomous_trajectories(c.W, h0, T2)[-1, 0]
        W = "[[%g, %g], [%g, %g]]" % tuple(c.W.ravel())
        ev = ", ".join(f"{e:g}" for e in c.eigenvalues)
        end = f"({hT[0]:.4g}, {hT[1]:.4g})"
        print(f"({c.key})  {W:<28} {ev:<14} {end:<24} {c.fate}", file=out)


def np_init_decay(N: int, starts: int, matrices: int, tmax: int,
                  rng: np.random.Generator):
    """Median over ``starts`` non-negative starts (uniform in [0, 1]^N) of |h_t| / |h_0|
    for t = 0..tmax under the zero-input map, per np_init(N) draw: with ReLU (relu) and
    without it (linear: h_{t+1} = W h_t), each (matrices, tmax + 1); and for IRNN's
    W = I under ReLU (irnn, (tmax + 1,)). Returns (relu, linear, irnn)."""
    relu, linear = [], []
    for _ in range(matrices):
        W = nr.np_init(N, rng)
        H0 = rng.uniform(0.0, 1.0, size=(starts, N))        # non-negative starts
        n0 = np.linalg.norm(H0, axis=1)
        traj = nr.autonomous_trajectories(W, H0, tmax)      # (tmax + 1, K, N)
        relu.append(np.median(np.linalg.norm(traj, axis=2) / n0, axis=1))
        lin = np.empty((tmax + 1, starts))
        h = H0.copy()
        lin[0] = 1.0
        for t in range(1, tmax + 1):
            h = h @ W.T                                     # linear map, no clipping
            lin[t] = np.linalg.norm(h, axis=1) / n0
        linear.append(np.median(lin, axis=1))
    Hc = rng.uniform(0.0, 1.0, size=(starts, N))            # IRNN, W = I, measured too
    irnn = np.median(np.linalg.norm(nr.autonomous_trajectories(np.eye(N), Hc, tmax), axis=2)
                     / np.linalg.norm(Hc, axis=1), axis=1)
    return np.array(relu), np.array(linear), irnn           # (matrices, tmax + 1) twice


def _print_decay_table(N, relu, linear, irnn, steps, starts, seed, out) -> None:
    """np_init_decay's medians and ranges over the draws at the given steps."""
    print(f"\nnp_init at N = {N} under the same map: median over {starts} non-negative "
          f"starts (uniform in [0, 1]^N) of |h_t| / |h_0|,\nper matrix; median and range "
          f"over {relu.shape[0]} np_init draws (seed {seed}):", file=out)
    print(f"{'t':>5} {'np ReLU median':>15} {'np ReLU min':>12} {'np ReLU max':>12} "
          f"{'np linear':>10} {'IRNN (W=I)':>11}", file=out)
    for t in steps:
        r = relu[:, t]
        print(f"{t:>5} {np.median(r):15.3g} {r.min():12.3g} {r.max():12.3g} "
              f"{np.median(linear[:, t]):10.3g} {irnn[t]:11.3g}", file=out)
    print("np linear: the same W without ReLU (h_{t+1} = W h_t) keeps the component along "
          "the top eigenvector; with ReLU the mixed-sign top eigenvector is clipped away.",
          file=out)


def _mixed_sign_report(draws, seed, out) -> dict:
    """How often np_init's top eigenvector has mixed signs, per N (draws each, rng
    seed + 1), and the fates of np_init(2) trajectories; returns {N: fraction}."""
    fractions = {}
    mrng = np.random.default_rng(seed + 1)
    print(f"\nFraction of np_init draws whose top eigenvector has entries of both signs "
          f"({draws} draws each, seed {seed + 1}):", file=out)
    for n in (2, 5, 10, 100):
        fractions[n] = mixed_sign_fraction(n, draws, mrng)
        print(f"  N = {n:>3}: {fractions[n]:.3f}", file=out)
    two = np_init_two_node_fates(draws, mrng)
    neg = draws - two["nonneg"]
    print(f"\nnp_init at N = 2 ({draws} draws, 5 non-negative starts each, 2000 steps), by "
          f"the sign of the off-diagonal entry:", file=out)
    print(f"  > 0 (W >= 0, top eigenvector positive): {two['nonneg']:>5} draws; "
          f"{two['line_pos']}/{5 * two['nonneg']} trajectories at (v . h0) v "
          f"(within 1e-6 |h0|)", file=out)
    print(f"  < 0 (top eigenvector of mixed signs):   {neg:>5} draws; "
          f"{two['zero_neg']}/{5 * neg} trajectories at 0 (|h| < 1e-6 |h0|), the largest "
          f"|h_2000| / |h_0| is {two['max_neg']:.3g}", file=out)
    return fractions


def dynamics_report(hidden=ANALYSIS_HIDDEN, starts=200, matrices=20, draws=1000, seed=0,
                    out=None) -> dict:
    """The four 2-node cases, and np_init at N = hidden under the same zero-input map."""
    out = sys.stdout if out is None else out
    cases = nr.two_node_cases()
    _print_two_node_cases(cases, out)
    steps = (1, 5, 10, 20, 50, 100, 200)
    relu, linear, irnn = np_init_decay(hidden, starts, matrices, steps[-1],
                                       np.random.default_rng(seed))
    _print_decay_table(hidden, relu, linear, irnn, steps, starts, seed, out)
    fractions = _mixed_sign_report(draws, seed, out)
    return {"cases": cases, "relu": relu, "linear": linear, "irnn": irnn,
            "fractions": fractions, "N": hidden}


def _plot_two_node_case(ax, c, P, starts) -> None:
    """One 2-node case: the step field on the grid P, trajectories from ``starts``, and
    the top eigenvector."""
    step = np.maximum(P @ c.W.T, 0.0) - P                    # displacement h_{t+1} - h_t
    ax.quiver(P[:, 0], P[:, 1], step[:, 0], step[:, 1], color="0.7",
              angles="xy", scale_units="xy", scale=2.5, width=0.004)
    traj = nr.autonomous_trajectories(c.W, starts, 40)
    for k in range(starts.shape[0]):
        ax.plot(traj[:, k, 0], traj[:, k, 1], "-o", ms=2.5, lw=1, color="C0",
                label="trajectory h_0, h_1, ..." if k == 0 else None)
    ax.plot(starts[:, 0], starts[:, 1], "s", ms=4, color="C3", label="start h_0")
    v = c.top_eigenvector
    if c.key != "b":                                        # for W = I every vector is one
        ax.plot([0, 3 * v[0]], [0, 3 * v[1]], "--", color="C2", lw=1.2)
    else:
        ax.plot([], [], "--", color="C2", lw=1.2, label="top eigenvector (a, c, d)")
        ax.plot([], [], "-", color="0.7", label="step h_{t+1} - h_t")
        ax.text(1.0, 0.35, "every state is fixed", ha="center", fontsize=9)
        ax.legend(loc="upper center", fontsize=8)
    ev = ", ".join(f"{e:g}" for e in c.eigenvalues)
    ax.set_title(f"({c.key}) {c.title}\neigenvalues {ev}", fontsize=10)
    ax.set_xlim(0, 2)
    ax.set_ylim(0, 2)
    ax.set_aspect("equal")
    ax.set_xlabel("h[0]")
    ax.set_ylabel("h[1]")


def _plot_np_decay(ax, result) -> None:
    """np_init's median decay (and range over draws) beside the linear map and IRNN."""
    t = np.arange(result["relu"].shape[1])
    med = np.median(result["relu"], axis=0)
    ax.fill_between(t, np.maximum(result["relu"].min(axis=0), 1e-300),
                    result["relu"].max(axis=0), color="C0", alpha=0.25,
                    label=f"np ReLU, range over {result['relu'].shape[0]} draws")
    ax.semilogy(t, med, color="C0", label="np ReLU, median")
    ax.semilogy(t, np.median(result["linear"], axis=0), color="C1",
                label="np linear (no ReLU)")
    ax.semilogy(t, result["irnn"], color="C2", label="IRNN (W = I)")
    ax.set_ylim(1e-20, 3)
    ax.set_xlabel("step t")
    ax.set_ylabel("median |h_t| / |h_0|")
    ax.set_title(f"np_init, N = {result['N']}, zero input", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")


def _plot_mixed_fractions(ax, fractions) -> None:
    ns = list(fractions)
    ax.bar([str(n) for n in ns], [fractions[n] for n in ns], color="C4")
    for i, n in enumerate(ns):
        ax.text(i, fractions[n] + 0.02, f"{fractions[n]:.2f}", ha="center", fontsize=9)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("N")
    ax.set_ylabel("fraction of draws")
    ax.set_title("np_init: top eigenvector has mixed signs", fontsize=10)


def plot_dynamics(result, path, Figure, out=None):
    """dynamics_report's figure: the four 2-node phase portraits, np_init's decay and the
    mixed-sign fractions."""
    out = sys.stdout if out is None else out
    fig = Figure(figsize=(10.5, 6.7), layout="constrained")
    axes = fig.subplots(2, 3)
    g = np.linspace(0.0, 2.0, 11)
    GX, GY = np.meshgrid(g, g)
    P = np.stack([GX.ravel(), GY.ravel()], axis=1)          # (121, 2) grid of states
    starts = np.array([[2.0, 0.2], [2.0, 1.0], [1.6, 2.0], [0.8, 2.0], [0.2, 2.0],
                       [1.0, 0.1], [0.3, 0.6], [1.2, 1.4], [0.1, 1.2]]) * 0.9
    for ax, c in zip(axes.ravel()[:4], result["cases"]):
        _plot_two_node_case(ax, c, P, starts)
    _plot_np_decay(axes[1, 1], result)
    _plot_mixed_fractions(axes[1, 2], result["fractions"])
    fig.suptitle("h_{t+1} = max(0, W h_t), zero input: the four 2-node cases (a)-(d) and "
                 "np_init", fontsize=11)
    _save(fig, path, out)


# ---- gradflow and sensitivity -----------------------------------------------------------

def _analysis_models(schemes, hidden, seed, trained):
    """[(label, params, nonlinearity)], and (task, seq_len) of the checkpoint or None.

    Without a checkpoint (``trained`` None): a fresh initialisation of every scheme
    (weights seeded by (seed, 1), the same for every scheme). With one (load_trained's
    (params, config, step); schemes and hidden are not used): a fresh initialisation of
    its scheme at its size (not the run's own initial weights), then the trained weights.
    """
    if trained is None:
        return [(s, nr.init_params(2, hidden, 1, s, np.random.default_rng((seed, 1))),
                 nr.SCHEMES[s].nonlinearity) for s in schemes], None
    params, config, step = trained
    hidden = params["W_hh"].shape[0]
    scheme = str(config["scheme"])
    models = []
    if scheme in nr.SCHEMES:
        init = nr.init_params(2, hidden, 1, scheme, np.random.default_rng((seed, 1)),
                              dtype=params["W_hh"].dtype)
        models.append((f"{scheme} (init)", init, nr.SCHEMES[scheme].nonlinearity))
    models.append((f"{scheme} (trained, step {step})", params, config["nonlinearity"]))
    return models, (config["task"], int(config["seq_len"]))


def _analysis_data(models, trained_info, seq_len, batch, seed):
    """One batch of the checkpoint's task (the adding problem without one) shared by every
    model, the data rng seeded by seed: x (T, B, 2), target (B, 1); T is seq_len, else
    the checkpoint's, else ANALYSIS_SEQ_LEN."""
    task, T = trained_info if trained_info else ("adding", ANALYSIS_SEQ_LEN)
    T = seq_len or T
    make, _ = ANALYSIS_TASKS[task]
    x, target = make(batch, T, np.random.default_rng(seed))            # same x either way
    dtype = models[-1][1]["W_hh"].dtype                                 # the params' dtype
    return x.astype(dtype), target.astype(dtype)


def _curve_table(title, curves, ratio_name, out):
    T = len(next(iter(curves.values())))
    steps = _report_steps(T)
    print(title, file=out)
    w = max(12, max(len(k) for k in curves))
    print(f"{'':<{w}} " + " ".join(f"{'t=' + str(t):>10}" for t in steps)
          + f" {ratio_name:>10} {'per step':>9}", file=out)
    ratios = {}
    for label, c in curves.items():
        ratios[label] = float(c[0] / c[-1]) if c[-1] != 0 else float("inf")
        per = ratios[label] ** (1.0 / (T - 1)) if T > 1 else float("nan")
        print(f"{label:<{w}} " + " ".join(_fmt_g(c[t - 1]) for t in steps)
              + f" {_fmt_g(ratios[label])} {per:9.4g}", file=out)
    print("per step: the geometric-mean factor per step, (t=1 / t=T)^(1/(T-1)); "
          "0 means underflow to 0.0 in float64", file=out)
    return ratios


def _problem_name(trained=None) -> str:
    """The data's task in words: the checkpoint's (load_trained's tuple), else adding."""
    return ANALYSIS_TASKS[trained[1]["task"] if trained else "adding"][1]


def _per_step_report(curve_of, title_of, schemes, hidden, seq_len, batch, seed, trained,
                     out):
    """Shared body of gradflow_report and sensitivity_report: one curve over t per model
    (curve_of(params, x, target, nonlinearity)), printed as a table titled
    title_of(problem, T, B)."""
    out = sys.stdout if out is None else out
    models, info = _analysis_models(schemes, hidden, seed, trained)
    x, target = _analysis_data(models, info, seq_len, batch, seed)
    curves = {label: curve_of(params, x, target, nl) for label, params, nl in models}
    T, B = x.shape[:2]
    _curve_table(title_of(_problem_name(trained), T, B), curves, "t=1 / t=T", out)
    return curves


def gradflow_report(schemes=ANALYSIS_SCHEMES, hidden=ANALYSIS_HIDDEN, seq_len=None,
                    batch=32, seed=0, trained=None, out=None) -> dict:
    """|dL/dh_t| for every t and model, MSE at the last step (see _analysis_models for
    schemes, hidden, seed and trained, _analysis_data for the data)."""
    return _per_step_report(
        lambda p, x, target, nl: nr.gradient_norms_through_time(
            p, x, target, loss="mse", output="last", nonlinearity=nl),
        lambda problem, T, B: (f"|dL/dh_t| (Frobenius norm over the batch of {B}), "
                               f"{problem} T = {T}, MSE at the last step, seed {seed}:"),
        schemes, hidden, seq_len, batch, seed, trained, out)


def sensitivity_report(schemes=ANALYSIS_SCHEMES, hidden=ANALYSIS_HIDDEN, seq_len=None,
                       batch=32, seed=0, trained=None, out=None) -> dict:
    """||d h_T / d x_t||_F for every t and model, batch mean (arguments as for
    gradflow_report)."""
    return _per_step_report(
        lambda p, x, target, nl: nr.input_sensitivity(p, x, nonlinearity=nl)[1],
        lambda problem, T, B: (f"||d h_T / d x_t||_F, mean over {B} "
                               f"{problem.replace(' ', '-')} sequences, T = {T}, "
                               f"seed {seed}:"),
        schemes, hidden, seq_len, batch, seed, trained, out)


def plot_time_curves(curves, path, Figure, ylabel, title, out=None):
    """One curve over t per model on a log axis; values that underflow are named in the
    legend."""
    out = sys.stdout if out is None else out
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    floor = 1e-40                                          # lower end of the y axis
    for label, c in curves.items():
        t = np.arange(1, len(c) + 1)
        pos = np.where(c > 0, c, np.nan)                   # log axis: zeros (underflow) dropped
        low = np.nonzero(c < floor)[0]
        if low.size:
            label += f" (< {floor:g} for t <= {low[-1] + 1}"
            zero = np.nonzero(c == 0)[0]
            label += f"; 0.0 in float64 for t <= {zero[-1] + 1})" if zero.size else ")"
        ax.semilogy(t, pos, label=label)
    top = max(float(np.max(c)) for c in curves.values())
    low = min(float(np.min(c[c > 0], initial=np.inf)) for c in curves.values())
    ax.set_ylim(max(floor, low / 10) if np.isfinite(low) else floor,
                10 * top if top > 0 else 1.0)
    ax.set_xlabel("step t")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path, out)


def plot_gradflow(curves, path, Figure, problem="adding problem", out=None):
    T = len(next(iter(curves.values())))
    plot_time_curves(curves, path, Figure, "|dL/dh_t| (Frobenius, over the batch)",
                     f"gradient flowing back to h_t, {problem}, T = {T} (MSE at t = T)",
                     out)


def plot_sensitivity(curves, path, Figure, out=None):
    T = len(next(iter(curves.values())))
    plot_time_curves(curves, path, Figure, "mean ||d h_T / d x_t||_F",
                     f"sensitivity of the last state to the input at step t, T = {T}", out)


# ---- spectrum ---------------------------------------------------------------------------

def spectrum_report(schemes=ANALYSIS_SCHEMES, hidden=ANALYSIS_HIDDEN, seed=0,
                    trained=None, out=None) -> dict:
    """Eigenvalue summary of every W_hh, and what the zero-input ReLU map does with it:
    the median over 100 non-negative starts (uniform in [0, 1]^N, rng (seed, 2)) of
    |h_200| / |h_0| under h_{t+1} = max(0, W_hh h_t)."""
    out = sys.stdout if out is None else out
    models, _ = _analysis_models(schemes, hidden, seed, trained)
    specs = {}
    print(f"Spectrum of W_hh (seed {seed}); |l| = |lambda| sorted decreasing; last column: "
          f"median |h_200| / |h_0| under h <- max(0, W_hh h)\nfrom 100 non-negative "
          f"random starts:", file=out)
    w = max(12, max(len(m[0]) for m in models))
    print(f"{'':<{w}} {'N':>4} {'symmetric':>9} {'radius':>9} {'norm':>9} "
          f"{'|l|_2':>9} {'|l| median':>10} {'|l| min':>9} {'#|l|>0.9':>8} {'#|l|>1':>6} "
          f"{'ReLU map':>9}", file=out)
    for label, params, _ in models:
        W = params["W_hh"]
        s = nr.spectrum(W)
        m = np.abs(s.eigenvalues)
        specs[label] = s
        second = m[1] if m.size > 1 else float("nan")
        h0 = np.random.default_rng((seed, 2)).uniform(0.0, 1.0, size=(100, m.size))
        h0 = h0.astype(W.dtype)
        try:
            end = nr.autonomous_trajectories(W, h0, 200)[-1]
            decay = np.median(np.linalg.norm(end, axis=1) / np.linalg.norm(h0, axis=1))
        except nr.NonFiniteError:                # the states outgrow the dtype
            decay = math.inf
        print(f"{label:<{w}} {m.size:>4} {str(s.symmetric):>9} {s.radius:9.4g} "
              f"{s.norm:9.4g} {second:9.4g} {np.median(m):10.4g} {m[-1]:9.4g} "
              f"{int((m > 0.9).sum()):>8} {int((m > 1.0 + 1e-12).sum()):>6} "
              f"{_fmt_g(decay):>9}", file=out)
    return specs


def plot_spectrum(specs, path, Figure, out=None):
    out = sys.stdout if out is None else out
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    markers = "os^vDx+*"
    styles = ("-", "--", ":", "-.")
    for i, (label, s) in enumerate(specs.items()):
        ev = s.eigenvalues.astype(complex)
        ax1.semilogy(np.arange(1, ev.size + 1), np.abs(ev), ls=styles[i % 4],
                     marker=markers[i % 8], ms=4, lw=1.5, markevery=(i, 7), label=label,
                     mfc="none")
        ax2.plot(ev.real, ev.imag, markers[i % 8], ms=4, alpha=0.7, label=label,
                 mfc="none")
    ax1.set_xlabel("index i (sorted by decreasing modulus)")
    ax1.set_ylabel("|lambda_i|")
    ax1.set_title("eigenvalue moduli of W_hh", fontsize=10)
    ax1.grid(True, which="major", alpha=0.3)
    ax1.legend(fontsize=8)
    th = np.linspace(0, 2 * np.pi, 400)
    ax2.plot(np.cos(th), np.sin(th), color="0.6", lw=0.8, label="unit circle")
    ax2.set_aspect("equal")
    ax2.set_xlabel("Re lambda")
    ax2.set_ylabel("Im lambda")
    ax2.set_title("eigenvalues in the complex plane", fontsize=10)
    ax2.legend(fontsize=8, loc="lower left")
    _save(fig, path, out)


# ---------------------------------------------------------------------------------------
# Output: tables, curves.csv, summary.json and the training figures
# ---------------------------------------------------------------------------------------

def _fmt(v, spec=".4g"):
    return "-" if v is None else format(v, spec)


def results_table(records, regression=True):
    """One row per run: scheme, seed, lr, clip, final and best test metric (and for
    regression the paper's: the share of test sequences with |error| < 0.04), steps to
    target, divergence, wall time and training steps per second."""
    if regression:
        head = (f"{'scheme':<8} {'seed':>4} {'lr':>8} {'mom':>4} {'clip':>6} {'final MSE':>10} "
                f"{'best MSE':>10} {'final <.04':>10} {'best <.04':>9} "
                f"{'steps_to_target':>15} {'diverged':>9} {'wall s':>7} {'steps/s':>8}")
    else:
        head = (f"{'scheme':<8} {'seed':>4} {'lr':>8} {'mom':>4} {'clip':>6} {'final acc':>10} "
                f"{'best acc':>10} {'final loss':>10} {'diverged':>9} {'wall s':>7} "
                f"{'steps/s':>8}")
    lines = [head]
    for r in records:
        clip = "none" if not r["clip"] else f"{r['clip']:g}"
        row = (f"{r['scheme']:<8} {r['seed']:>4} {r['lr']:>8g} {r['momentum']:>4g} {clip:>6} ")
        if regression:
            stt = "never" if r["steps_to_target"] is None else str(r["steps_to_target"])
            pct = (lambda v: "-" if v is None else f"{100 * v:.1f}%")
            row += (f"{_fmt(r['final_test_mse']):>10} {_fmt(r['best_test_mse']):>10} "
                    f"{pct(r.get('final_test_within')):>10} "
                    f"{pct(r.get('best_test_within')):>9} {stt:>15} ")
        else:
            row += (f"{_fmt(r['final_test_accuracy']):>10} {_fmt(r['best_test_accuracy']):>10} "
                    f"{_fmt(r['final_test_loss']):>10} ")
        div = f"at {r['diverged_at']}" if r["diverged_at"] else "no"
        row += (f"{div:>9} {r['wall_seconds']:>7.0f} {_fmt(r['steps_per_second'], '.0f'):>8}")
        lines.append(row)
    return "\n".join(lines)


def _curve_rows(records, curves):
    for r, c in zip(records, curves):
        for p in c:
            yield {"task": r["task"], "scheme": r["scheme"], "seed": r["seed"], "lr": r["lr"],
                   "momentum": r["momentum"], "clip": r["clip"], "seq_len": r["seq_len"], **p}


def write_outputs(out, records, curves, meta):
    """curves.csv (one row per evaluation of every run) and summary.json (meta and the
    list "runs" of one record per run; strict JSON, a non-finite number written as null)
    in the folder ``out`` (already checked), each written atomically."""
    import csv
    os.makedirs(out, exist_ok=True)
    rows = list(_curve_rows(records, curves))
    fields = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with _atomic_file(os.path.join(out, "curves.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    with _atomic_file(os.path.join(out, "summary.json")) as f:
        json.dump(_json_safe({**meta, "runs": records}), f, indent=1, allow_nan=False)
        f.write("\n")


MATPLOTLIB_MISSING = "--plot needs matplotlib, which is not installed: pip install matplotlib"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MissingPackage(MATPLOTLIB_MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(path, records, curves, title):
    """Test metric against step, one colour per scheme (one line per seed). Regression
    gets two panels: test MSE, and the paper's metric (% of test sequences with
    |error| < 0.04)."""
    plt = _pyplot()
    regression = "final_test_mse" in records[0]
    keys = ("test_mse", "test_within") if regression else ("test_accuracy",)
    fig, axes = plt.subplots(1, len(keys), figsize=(6.2 * len(keys), 4.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        colours = {}
        scale = 100.0 if key == "test_within" else 1.0
        for r, c in zip(records, curves):
            steps = [p["step"] for p in c]
            vals = [scale * p[key] for p in c]
            first = r["scheme"] not in colours
            line, = ax.plot(steps, vals, lw=1.2, color=colours.get(r["scheme"]),
                            label=r["scheme"] if first else None)
            colours.setdefault(r["scheme"], line.get_color())
            if r["diverged_at"]:
                ax.plot(steps[-1:], vals[-1:], "x", color=line.get_color(), ms=8)
        if key == "test_mse":
            ax.set_yscale("log")
            ax.axhline(records[0]["baseline_mse"], color="grey", ls="--", lw=0.8,
                       label=f"predict the mean ({records[0]['baseline_mse']:.3g})")
            ax.axhline(records[0]["target_mse"], color="grey", ls=":", lw=0.8,
                       label=f"target ({records[0]['target_mse']:g})")
            ax.set_ylabel("test MSE")
        elif key == "test_within":
            ax.set_ylim(0, 100)
            ax.set_ylabel("% of test sequences with |error| < 0.04")
        else:
            ax.set_ylabel("test accuracy")
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_table(records, lrs, clips):
    """Per scheme and (lr, clip) cell: solved runs / runs (best test MSE < target), and
    the median best test MSE. Returns (text, {scheme: fraction array (lr, clip)})."""
    schemes = list(dict.fromkeys(r["scheme"] for r in records))
    target = records[0]["target_mse"]
    lines = [f"fraction of runs solved (best test MSE < {target:g}) and median best test MSE"]
    fracs = {}
    for s in schemes:
        frac = np.full((len(lrs), len(clips)), np.nan)
        lines.append(f"\n{s}: rows lr, columns clip")
        lines.append(f"{'lr':>9} | " + " | ".join(f"{'none' if not c else f'{c:g}':>14}"
                                                  for c in clips))
        for i, lr in enumerate(lrs):
            cells = []
            for j, c in enumerate(clips):
                rs = [r for r in records if r["scheme"] == s and r["lr"] == lr
                      and r["clip"] == c]
                ok = sum(1 for r in rs if r["best_test_mse"] is not None
                         and r["best_test_mse"] < target)
                frac[i, j] = ok / len(rs) if rs else np.nan
                med = np.median([r["best_test_mse"] if r["best_test_mse"] is not None
                                 else np.inf for r in rs]) if rs else np.nan
                cells.append(f"{ok}/{len(rs)} {med:8.3g}")
            lines.append(f"{lr:>9g} | " + " | ".join(f"{c:>14}" for c in cells))
        fracs[s] = frac
        mine = [r for r in records if r["scheme"] == s]
        ok = sum(1 for r in mine if r["best_test_mse"] is not None
                 and r["best_test_mse"] < target)
        lines.append(f"{'':>9}   {s} solved the task in {ok} of its {len(mine)} runs")
    return "\n".join(lines), fracs


def plot_sweep(path, fracs, lrs, clips, title):
    plt = _pyplot()
    n = len(fracs)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n + 1.5, 3), squeeze=False)
    for ax, (s, frac) in zip(axes[0], fracs.items()):
        im = ax.imshow(frac, vmin=0, vmax=1, cmap="viridis", origin="lower")
        ax.set_xticks(range(len(clips)), ["none" if not c else f"{c:g}" for c in clips])
        ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs] if ax is axes[0][0]
                      else [])
        ax.set_xlabel("clip")
        ax.set_title(s)
        for i in range(len(lrs)):
            for j in range(len(clips)):
                ax.text(j, i, f"{frac[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="w" if frac[i, j] < 0.5 else "k")
    axes[0][0].set_ylabel("learning rate")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="fraction solved")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def paper_table(summaries) -> str:
    """One row per run: the paper's metric at the end and at its best, test MSE (or
    loss), the first update past 50% and 90%, status, wall time and speed."""
    pixel = {r["task"] == "pixel" for r in summaries}
    err = "MSE" if pixel == {False} else "loss" if pixel == {True} else "err"
    head = (f"{'run':<34} {'net':<10} {'final':>7} {'best':>6} {'final ' + err:>10} "
            f"{'best ' + err:>9} {'>50% at':>9} {'>90% at':>9} {'rho0':>6} {'status':>9} "
            f"{'wall':>8} {'upd/s':>6}")
    lines = [head]
    for r in summaries:
        regression = r["task"] != "pixel"
        pct = (lambda v: "-" if v is None else f"{100 * v:.1f}%")
        err = "final_test_mse" if regression else "final_test_loss"
        best = "best_test_mse" if regression else "best_test_loss"
        status = r["status"] if r["status"] != "diverged" else f"div@{r['diverged_at']}"
        lines.append(
            f"{r['run']:<34} {r['paper_name'] or r['scheme']:<10} {pct(r['final_metric']):>7} "
            f"{pct(r['best_metric']):>6} {_fmt(r.get(err)):>10} {_fmt(r.get(best)):>9} "
            f"{_fmt(r['first_update_above_50'], 'd'):>9} "
            f"{_fmt(r['first_update_above_90'], 'd'):>9} "
            f"{_fmt(r['init_spectral_radius'], '.3f'):>6} {status:>9} "
            f"{_fmt_time(r['wall_seconds']):>8} {_fmt(r['updates_per_second'], '.0f'):>6}")
    metric = ("metric: % of test sequences with |error| < 0.04 (adding, multiply), test "
              "accuracy (pixel); MSE (loss, or err for both): test MSE (adding, multiply), "
              "test cross-entropy (pixel); rho0: spectral radius of the initial W_hh")
    return "\n".join(lines + [metric] + _per_class_lines(summaries))


def _per_class_lines(summaries) -> list:
    """The test accuracy per class of the finished pixel runs, one column per run and one
    block per data set, classes by name."""
    out = []
    runs = [r for r in summaries if r.get("per_class_accuracy")]
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        cols = [r for r in runs if r["dataset"] == dataset]
        seeds = len({r["seed"] for r in cols}) > 1
        heads = [(r["paper_name"] or r["scheme"]) + (f" s{r['seed']}" if seeds else "")
                 for r in cols]
        width = max(11, *(len(h) for h in heads))
        names = list(cols[0]["per_class_accuracy"])
        out += ["", f"test accuracy per class ({dataset}):",
                f"{'class':<12}" + "".join(f" {h:>{width}}" for h in heads)]
        out += [f"{c:<12}" + "".join(f" {100 * r['per_class_accuracy'][c]:>{width - 1}.1f}%"
                                     for r in cols) for c in names]
    return out


# ---------------------------------------------------------------------------------------
# bench: loss_and_grads against the floor of its unavoidable matrix products
# ---------------------------------------------------------------------------------------

DEFAULT_BENCH_SHAPES = ((150, 16, 100, 2), (784, 16, 100, 1), (200, 64, 256, 8))


def make_floor(params, x):
    """The floor of one loss_and_grads call: the 2T recurrent products of a (B, H) by
    (H, H) matrix and the three big products (input projection, dW_hx, dW_hh), into
    preallocated buffers, with nothing else."""
    T, B, D = x.shape
    H = params["W_hh"].shape[0]
    W_hx, W_hh = params["W_hx"], params["W_hh"]
    x2 = x.reshape(T * B, D)
    hs = np.zeros((T + 1, B, H), x.dtype)
    d = np.zeros((T, B, H), x.dtype)
    proj = np.empty((T * B, H), x.dtype)
    WT = W_hh.T

    def floor():
        np.matmul(x2, W_hx.T, out=proj)
        for t in range(1, T + 1):
            np.dot(hs[t - 1], WT, out=hs[t])
        for t in range(T - 2, -1, -1):
            np.dot(d[t + 1], W_hh, out=d[t])
        d2 = d.reshape(T * B, H)
        return d2.T @ x2, d2.T @ hs[:-1].reshape(T * B, H)
    return floor


def make_torch_step(torch, params, x, target, threads):
    """torch.nn.RNN(relu) + Linear, forward, MSE on the last step, backward (float64)."""
    torch.set_num_threads(int(threads))
    T, B, D = x.shape
    H = params["W_hh"].shape[0]
    O = params["W_yh"].shape[0]
    rnn = torch.nn.RNN(D, H, nonlinearity="relu", dtype=torch.float64)
    lin = torch.nn.Linear(H, O, dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.from_numpy(params["W_hx"]))
        rnn.weight_hh_l0.copy_(torch.from_numpy(params["W_hh"]))
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
        lin.weight.copy_(torch.from_numpy(params["W_yh"]))
        lin.bias.zero_()
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    tt = torch.from_numpy(target)
    lossf = torch.nn.MSELoss()

    def step():
        for p in list(rnn.parameters()) + list(lin.parameters()):
            p.grad = None
        xt.grad = None
        out, _ = rnn(xt)
        loss = lossf(lin(out[-1]), tt)
        loss.backward()
        return loss
    return step


def _median_time(fn, times):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)


def bench(shapes, repeats, threads, use_torch=True, seed=0, out=sys.stdout):
    """Time loss_and_grads (relu, mse, output="last", float64) against the floor, and
    against PyTorch when it is importable, interleaving the three in one run."""
    torch = None
    if use_torch:
        try:
            import torch  # noqa: F401  (optional)
        except ImportError:
            torch = None
    print(f"allocator: {ALLOCATOR_NOTE}", file=out)
    print(f"BLAS threads: {threads} (OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')})"
          + (f"; torch {torch.__version__} with {threads} thread(s)" if torch else
             "; torch not importable: install it (pip install torch==2.13.0) for the "
             "PyTorch column"), file=out)
    print("loss_and_grads(relu, mse, last, float64); medians of "
          f"{repeats} interleaved repeats", file=out)
    head = f"{'T,B,H,D':>16} {'ours ms':>9} {'floor ms':>9} {'ours/floor':>10}"
    if torch:
        head += f" {'torch ms':>9} {'ours/torch':>10}"
    print(head, file=out)
    rows = []
    for (T, B, H, D) in shapes:
        rng = np.random.default_rng(seed)
        params = nr.init_params(D, H, 1, "np", rng)
        x = rng.uniform(0.0, 1.0, size=(T, B, D))
        target = rng.uniform(0.0, 2.0, size=(B, 1))
        floor = make_floor(params, x)
        ours = lambda: nr.loss_and_grads(params, x, target)  # noqa: E731
        tstep = make_torch_step(torch, params, x, target, threads) if torch else None
        for fn in (ours, floor) + ((tstep,) if tstep else ()):
            fn()                                         # warm-up
        t_ours, t_floor, t_torch = [], [], []
        for _ in range(repeats):
            _median_time(ours, t_ours)
            _median_time(floor, t_floor)
            if tstep:
                _median_time(tstep, t_torch)
        mo, mf = np.median(t_ours) * 1e3, np.median(t_floor) * 1e3
        row = {"shape": (T, B, H, D), "ours_ms": mo, "floor_ms": mf, "ratio_floor": mo / mf}
        line = f"{f'{T},{B},{H},{D}':>16} {mo:9.2f} {mf:9.2f} {mo / mf:10.2f}"
        if tstep:
            mt = np.median(t_torch) * 1e3
            row.update(torch_ms=mt, ratio_torch=mo / mt)
            line += f" {mt:9.2f} {mo / mt:10.2f}"
        print(line, file=out, flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------
#
# Conventions, the same for every command:
# - A figure is asked for with --plot [PNG]: the path given, or <command>.png in --out
#   when the command has one, else in the current folder.
# - An existing file or folder is never overwritten without --force; the committed
#   figures are regenerated with --plot figures/<name>.png --force. A run may rewrite the
#   checkpoint it resumes from, and the files it created itself.
# - Every output path is checked before any work (a file where a folder is needed or the
#   reverse, a parent that is a file, a folder the user cannot write into); missing
#   parent folders are created. Each output is then locked until the command ends, so
#   that a second command given the same output refuses it (see _lock_outputs).
# - Usage errors (bad option values, bad input files, existing outputs, an option the
#   command cannot honour) and a missing optional package exit 2 with one line on stderr
#   and no traceback. A run that raised an error makes the command exit 1; a run that
#   diverged is a measured outcome (recorded, reported, exit 0).


class UsageError(nr.UsageError):
    """A mistake in what the user asked for: main prints it on one line and exits 2.
    (The verification commands, nprnn_ref's, raise nr.UsageError, which main catches.)"""


class MissingPackage(UsageError):
    """An optional package is needed and missing; the message says what to install."""


def _figure_path(args, command):
    """The figure's path of --plot [PNG] (None without --plot): the path given, with
    .png added when it has no extension (as matplotlib would add it), else
    <command>.png in --out when the command has one, else in the current folder. A
    folder given as the path is refused."""
    if getattr(args, "plot", None) is None:
        return None
    if args.plot:
        p = args.plot
        if p.endswith(("/", os.sep)) or os.path.isdir(p):
            raise UsageError(f"--plot {p} is a folder; give the figure's file name, e.g. "
                             f"{os.path.join(p, command + '.png')}")
        return p if os.path.splitext(p)[1] else p + ".png"
    out = getattr(args, "out", None)
    return os.path.join(out, f"{command}.png") if out else f"{command}.png"


def _check_figure_format(path):
    """Refuse a figure path whose extension matplotlib cannot write (it would fail only
    when the figure is drawn, after the work)."""
    from matplotlib.backend_bases import FigureCanvasBase
    formats = FigureCanvasBase.get_supported_filetypes()
    ext = os.path.splitext(path)[1][1:].lower()
    if ext not in formats:
        raise UsageError(f"--plot {path}: matplotlib cannot write .{ext} files; use one "
                         f"of {', '.join('.' + f for f in sorted(formats))}")


# --- Outputs: checked before any work, then locked for the command's life ---------------
#
# Missing parent folders of every output are created (as mkdir -p), by every command.

@dataclasses.dataclass(frozen=True)
class _Output:
    """A path a command writes. ``folder``: a folder it writes files into (else a file).
    ``replace``: its existing already means overwriting, refused without --force (False
    for a folder whose files are checked one by one, or that may be continued). ``own``:
    a file the command may rewrite without --force (the checkpoint a run resumes from).
    ``lock``: take an exclusive lock on it for the command's life (False for files inside
    a folder that is locked itself)."""
    option: str
    path: str
    folder: bool = False
    replace: bool = True
    own: bool = False
    lock: bool = True

    @property
    def name(self) -> str:
        return f"{self.option} {self.path}" if self.option else self.path


def _nearest_existing(path) -> str:
    """``path`` or its nearest ancestor that exists: where missing folders start."""
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        p = os.path.dirname(p)
    return p


def _check_outputs(outputs, force):
    """Refuse (UsageError), before any work, every output that cannot be written or that
    would overwrite without --force: a file where a folder is needed or the reverse, a
    parent that is not a folder, a folder without write permission (for the user running
    the command), an existing output without --force, and one path given for two
    outputs. Missing parent folders are fine: they are created. Plain strings are files;
    None and "" are skipped."""
    seen = {}
    for o in outputs:
        if not o:
            continue
        o = _Output("", o) if isinstance(o, str) else o
        real, prev = os.path.realpath(o.path), seen.get(os.path.realpath(o.path))
        if prev and prev[0] != o.option and not (prev[1] and o.folder):
            raise UsageError(f"{o.path} is given twice: as {prev[0] or 'an output'} and as "
                             f"{o.option or 'an output'}; choose another path")
        seen.setdefault(real, (o.option, o.folder))
        if o.folder:
            if os.path.lexists(o.path) and not os.path.isdir(o.path):
                raise UsageError(f"{o.name} must be a folder, but it is a file")
            where = _nearest_existing(o.path)
        else:
            if os.path.isdir(o.path):
                raise UsageError(f"{o.name} must be a file, but it is a folder")
            where = _nearest_existing(os.path.dirname(os.path.abspath(o.path)))
        if not os.path.isdir(where):
            raise UsageError(f"cannot write {o.name}: {where} is not a folder")
        if not os.access(where, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write {o.name}: no write permission in {where}")
        if o.replace and not o.own and not force and os.path.lexists(o.path):
            raise UsageError(f"{o.path} already exists; pass --force to overwrite it, or "
                             "choose another path")


# Two processes must never write the same output: the second would overwrite the first's
# checkpoints, or lose its summary. Every command therefore takes an exclusive flock on
# each of its outputs before any work (a folder's lock file is <folder>/.lock, a file's is
# .<name>.lock beside it) and holds it until it ends; a second command refuses an output
# that is held. The kernel drops a flock with the process that holds it, so a killed
# command (even by kill -9) leaves no stale lock, and its workers die with it (see
# _die_with_parent). Shards of one job lock their own run folders, not the shared root,
# so they do not block each other. A command removes its lock files when it ends (while
# still holding them); one killed leaves its lock file, unlocked, for the next command to
# take. Whoever takes a lock then checks that the file it locked is still the one of that
# name, so that a file removed meanwhile is never locked by two processes.
#
# On network filesystems flock may protect nothing: over NFS, Linux emulates it with
# POSIX byte-range locks, which need a working lock manager, and mounts with
# local_lock=flock or nolock make it local to each client, so two machines can each lock
# the same output. Give each machine its own root (or its own shards' run folders), and
# put the job together with `collect`. Where the system has no flock (Windows), or a
# filesystem refuses it, outputs are not locked (with a warning).
try:
    import fcntl
except ImportError:
    fcntl = None

_HELD_LOCKS = []        # (lock file, fd) held by the running command; main releases them


def _lock_file_of(path, folder) -> str:
    if folder:
        return os.path.join(path, ".lock")
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}.lock")


def _same_file(path, fd) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _lock_outputs(outputs) -> None:
    """Create the folders of every output (and its missing parents) and lock each output
    with ``lock`` set for the command's life; refuse (UsageError) one that another
    process holds."""
    for o in outputs:
        if not o or not o.lock:
            continue
        lock = _lock_file_of(o.path, o.folder)
        if any(lock == held for held, _ in _HELD_LOCKS):
            continue
        try:
            os.makedirs(os.path.dirname(lock), exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot write {o.name}: {e.strerror} ({e.filename})") from None
        if fcntl is None:
            continue
        for _ in range(100):                   # until the file locked is the file named
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise UsageError(f"cannot write {o.name}: {e.strerror} ({e.filename})") \
                    from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise UsageError(f"{o.path} is in use by another run"
                                 + (f" (process {holder})" if holder.isdigit() else "")
                                 + "; wait for it to end, or choose another path") from None
            except OSError as e:                # a filesystem without flock
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(lock)
                print(f"tasks.py: warning: cannot lock {o.path} ({e.strerror}); make sure "
                      "no other run writes it", file=sys.stderr)
                fd = None
                break
            if _same_file(lock, fd):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                break
            os.close(fd)                        # removed by its last holder: again
        else:
            raise UsageError(f"cannot lock {o.path}: its lock file {lock} keeps changing")
        if fd is not None:
            _HELD_LOCKS.append((lock, fd))


def _release_locks() -> None:
    """Remove this command's lock files, then release them (closing them)."""
    while _HELD_LOCKS:
        lock, fd = _HELD_LOCKS.pop()
        if _same_file(lock, fd):
            with contextlib.suppress(OSError):
                os.unlink(lock)
        os.close(fd)


def _refuse_explicit(args, names, why):
    """Exit 2 when any option of ``names`` was given explicitly (its value is not None)."""
    given = [n for n in names if getattr(args, n.lstrip("-").replace("-", "_"), None)
             is not None]
    if given:
        raise UsageError(f"{', '.join(given)} cannot be used {why}")


def _parent_parsers():
    """Parent parsers of the options many commands share: threads (every command that
    computes), and jobs (the training commands)."""
    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=_positive_int, default=1,
                         help="BLAS threads per process, set before numpy is imported "
                         "(default 1: small products are fastest on one thread)")
    jobs = argparse.ArgumentParser(add_help=False)
    jobs.add_argument("--jobs", type=_positive_int, default=2,
                      help="worker processes running the runs in parallel (default 2)")
    jobs.add_argument("--progress-every", type=_pos_float, default=30.0, metavar="S",
                      help="when the output is not a terminal, print each run's progress "
                      "every S seconds (default 30)")
    return threads, jobs


# --- Argument types ----------------------------------------------------------------------

def _int_at_least(minimum: int, why: str = ""):
    """An argparse type: an integer >= minimum (``why`` explains the bound in errors)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{why}, got {v}")
        return v
    return parse


_positive_int = _int_at_least(1)
# --seq-len of the adding and multiplication problems: one marker per half needs T >= 2.
_seq_len = _int_at_least(2, " (one marker in each half of the sequence)")


def _shard_arg(text: str):
    """--shard i/n: shard i (0-based) of n."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard must be i/n with 0 <= i < n, got {text!r}")
    return i, n


def _parse_shape(text: str):
    parts = text.split(",")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 4 or min(vals) < 1:
        raise argparse.ArgumentTypeError(
            f"--shape must be four integers >= 1 as T,B,H,D, got {text!r}")
    return vals


# --- The experiment commands -----------------------------------------------------------

# Defaults chosen by measurement (see the README): the adding and multiplication problems.
TASK_DEFAULTS = {
    "adding": {"seq_len": 50, "steps": 30000, "lr": 0.01, "momentum": 0.0, "clip": 10.0,
               "eval_every": 500, "test_size": 1000, "seeds": 3},
    "multiply": {"seq_len": 50, "steps": 30000, "lr": 0.01, "momentum": 0.0, "clip": 10.0,
                 "eval_every": 500, "test_size": 1000, "seeds": 3},
    "pixel": {"epochs": 100, "lr": 1e-4, "momentum": 0.0, "clip": 1.0,
              "eval_every": None, "test_size": None, "seeds": 1},
    "digits": {"epochs": 100, "lr": 0.1, "momentum": 0.0, "clip": 1.0,
               "eval_every": None, "test_size": None, "seeds": 1},
}
SWEEP_DEFAULTS = {"lrs": (0.001, 0.01, 0.1), "clips": (1.0, 10.0, 100.0), "seeds": 2,
                  "steps": 20000, "seq_len": 50}
_CLIP_DEFAULT = -1.0      # --clip not given (argparse would parse a string default)


def _clip_arg(text):
    """--clip: a number > 0, or 'none' for no clipping."""
    if text.lower() == "none":
        return None
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"--clip must be a number > 0 or 'none', got {text!r}")
    return v


def _nonneg_float(text):
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


def _pos_float(text):
    v = _nonneg_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def _schemes_arg(text):
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in nr.SCHEMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"--schemes must be a comma-separated list of {', '.join(nr.SCHEMES)}, "
            f"got {text!r}")
    return list(dict.fromkeys(names))


def _float_list(parse):
    def f(text):
        vals = [parse(t) for t in text.split(",") if t.strip()]
        if not vals:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return vals
    return f


def _collect(results):
    records, curves, failed = [], [], []
    for r in results:
        if isinstance(r[1], str):
            failed.append(r)
        else:
            records.append(r[0])
            curves.append(r[1])
    return records, curves, failed


def _experiment_task(command, args):
    """The task a command trains: mnist is an alias of pixel --dataset mnist."""
    if command == "sweep":
        return args.task
    return "pixel" if command == "mnist" else command


# Settings of a run that a command line may give, and that a checkpoint also records.
_RESUMABLE = ("hidden", "batch", "lr", "momentum", "clip", "seq_len", "inputs", "dataset",
              "permuted", "train_size")


def _given(args, name):
    """The value of option ``name`` when the user gave it, else None."""
    v = getattr(args, name, None)
    return None if (v is None or (name == "clip" and v == _CLIP_DEFAULT)) else v


def _base_settings(args, task) -> dict:
    """RunConfig fields shared by the runs of a command: given options, else defaults."""
    d = TASK_DEFAULTS[task]
    sweep = args.command == "sweep"
    pick = (lambda k, default: default if _given(args, k) is None else _given(args, k))
    base = {"task": task, "hidden": pick("hidden", 100), "batch": pick("batch", 16),
            "lr": pick("lr", d["lr"]), "momentum": pick("momentum", d["momentum"]),
            "clip": pick("clip", d["clip"]), "inputs": pick("inputs", "paper"),
            "eval_every": pick("eval_every", d["eval_every"]),
            "test_size": pick("test_size", d["test_size"])}
    if task in ("adding", "multiply"):
        base.update(seq_len=pick("seq_len", SWEEP_DEFAULTS["seq_len"] if sweep
                                 else d["seq_len"]),
                    steps=pick("steps", SWEEP_DEFAULTS["steps"] if sweep else d["steps"]),
                    target_mse=pick("target_mse", 0.01))
    else:
        base.update(epochs=pick("epochs", d["epochs"]), train_size=_given(args, "train_size"),
                    permuted=bool(_given(args, "permuted")))
        if task == "pixel":
            base.update(dataset=pick("dataset", "fashion-mnist"), data=_given(args, "data"))
    return base


def _resume_config(args, task, base) -> RunConfig:
    """The run of --resume: its checkpoint's settings; an option given explicitly that
    contradicts them is a usage error."""
    _refuse_explicit(args, ["--schemes", "--seed", "--seeds"],
                     "with --resume (the checkpoint fixes the scheme and seed)")
    try:
        ck = load_checkpoint(args.resume)
    except (OSError, ValueError) as e:
        raise UsageError(f"--resume: {e}") from None
    c = _saved_config(ck["config"])
    if c.get("task") != task:
        raise UsageError(f"--resume {args.resume} is a checkpoint of task "
                         f"{c.get('task')!r}, not {task!r}")
    for k in _RESUMABLE:
        if k == "seq_len" and task in ("pixel", "digits"):
            continue                                   # set by the images
        # --clip none is given as None, which _given cannot tell from an absent --clip
        given = getattr(args, "clip") != _CLIP_DEFAULT if k == "clip" else \
            _given(args, k) is not None
        value = getattr(args, k, None)
        if given and value != c[k]:
            shown = "" if k == "permuted" else " none" if value is None else f" {value}"
            raise UsageError(f"--{k.replace('_', '-')}{shown} contradicts the checkpoint "
                             f"{args.resume}, which has {k}={c[k]!r}")
        if k in base or k in ("permuted", "train_size"):
            base[k] = c[k]
    save = None
    if args.save:
        save = args.save if args.save.endswith(".npz") else \
            os.path.join(args.save, os.path.basename(args.resume))
    cfg = RunConfig(**base, scheme=c["scheme"], seed=c["seed"], resume=args.resume,
                    save=save)
    print(f"resuming {run_label(cfg)} from step {ck['step']} of {args.resume}", flush=True)
    return cfg


def _job_configs(args, task, base) -> list:
    """Every run of the command: schemes x seeds (x the lr x clip grid of a sweep)."""
    sweep = args.command == "sweep"
    first = _given(args, "seed") or 0
    n = _given(args, "seeds") or (SWEEP_DEFAULTS["seeds"] if sweep
                                  else TASK_DEFAULTS[task]["seeds"])
    schemes = _given(args, "schemes") or list(DEFAULT_SCHEMES)
    lrs = (args.lrs or list(SWEEP_DEFAULTS["lrs"])) if sweep else [base["lr"]]
    clips = (args.clips or list(SWEEP_DEFAULTS["clips"])) if sweep else [base["clip"]]
    cfgs = []
    for lr in lrs:
        for clip in clips:
            for seed in range(first, first + n):
                for s in schemes:
                    save = None
                    if args.save:
                        name = f"{task}_{s}_seed{seed}"
                        if sweep:
                            name += f"_lr{lr:g}_clip{clip if clip else 'none'}"
                        save = os.path.join(args.save, name + ".npz")
                    cfgs.append(RunConfig(**dict(base, lr=lr, clip=clip), scheme=s,
                                          seed=seed, label_hp=sweep, save=save))
    return cfgs


def _prepare_experiment(args, task, cfgs, names):
    """Everything that could fail, checked before the first step: the checkpoint of
    --resume against the run, every output path (then locked for the command's life),
    the job file under --out, and optional packages. Returns the --plot path (or
    None)."""
    c0 = cfgs[0]
    if c0.resume:
        try:
            t = _Task(c0)
            _start(c0, t, _checkpoint_config(c0, t),
                   c0.steps if c0.steps else c0.epochs * t.steps_per_epoch)
        except (OSError, ValueError, TypeError) as e:
            raise UsageError(f"--resume: {e}") from None
        del t
    plot = _figure_path(args, args.command)
    outputs = []
    if args.out:
        if not args.shard:
            outputs.append(_Output("--out", args.out, folder=True))
            outputs += [_Output(f"--out (its {n})", os.path.join(args.out, n), replace=False,
                                lock=False) for n in ("curves.csv", "summary.json")]
        if not c0.resume:                       # the run folders that collect reads
            for c in cfgs:
                folder = os.path.join(args.out, run_name(c))
                outputs += [_Output("--out", folder, folder=True, replace=False),
                            _Output("--out", os.path.join(folder, "result.json"),
                                    lock=False)]
    if plot:
        inside = args.out and not args.shard and os.path.realpath(os.path.dirname(
            os.path.abspath(plot))) == os.path.realpath(args.out)
        outputs.append(_Output("--plot", plot, lock=not inside))
    if args.save and not (c0.resume and args.save.endswith(".npz")):
        outputs.append(_Output("--save", args.save, folder=True, replace=False, lock=False))
    outputs += [_Output("--save", c.save, own=bool(c.resume) and os.path.realpath(c.save)
                        == os.path.realpath(c.resume)) for c in cfgs if c.save]
    _check_outputs(outputs, args.force)
    if plot:
        _pyplot()
        _check_figure_format(plot)
    job = (args.out, "experiment", args.command, names, _job_settings(args, task))
    try:        # every shard writes the same job file; a different one is refused here
        if args.out and not c0.resume:
            write_job_file(*job, replace=bool(args.force and not args.shard),
                           check_only=True)
        _lock_outputs(outputs)
        if args.out and not c0.resume:
            write_job_file(*job, replace=bool(args.force and not args.shard))
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    return plot


def _print_job(args, task, cfgs):
    c0, sweep = cfgs[0], args.command == "sweep"
    what = (f"{task}: T={c0.seq_len}" if c0.regression else
            f"{task}{' ' + c0.dataset if task == 'pixel' else ''}"
            f"{' permuted' if c0.permuted else ''}: epochs={c0.epochs}")
    print(f"{what}, hidden={c0.hidden}, inputs={c0.inputs}, batch={c0.batch}, "
          f"{'steps=' + str(c0.steps) + ', ' if c0.steps else ''}"
          f"lr={'grid' if sweep else c0.lr}, momentum={c0.momentum}, "
          f"clip={'grid' if sweep else c0.clip}; "
          f"{len(cfgs)} run(s) on {min(args.jobs, len(cfgs))} process(es)", flush=True)


def _report_job(args, task, records, curves, failed, wall, plot):
    """The table (and the sweep's grid), the output files and the figure."""
    regression = task in ("adding", "multiply")
    lrs = sorted(set(r["lr"] for r in records))
    clips = sorted(set(r["clip"] for r in records), key=lambda c: math.inf if c is None else c)
    if records:
        print()
        print(results_table(records, regression))
    if args.command == "sweep" and records:
        text, fracs = sweep_table(records, lrs, clips)
        print()
        print(text)
    print(f"\nwall time {_fmt_time(wall)} ({wall:.0f} s)"
          + (f"; {len(failed)} run(s) failed" if failed else ""))
    meta = {"command": args.command, "task": task, "wall_seconds": wall,
            "options": {k: v for k, v in vars(args).items() if k != "func"},
            "failed": [{"run": run_label(c), "error": e} for c, e in failed]}
    if args.out:
        write_outputs(args.out, records, curves, meta)
        print(f"wrote {os.path.join(args.out, 'curves.csv')} and "
              f"{os.path.join(args.out, 'summary.json')}")
    if plot and records:
        r0 = records[0]
        title = f"{task}, " + (f"T={r0['seq_len']}, " if regression else "") + \
            f"hidden {r0['hidden']}, batch {r0['batch']}"
        if args.command == "sweep":
            plot_sweep(plot, fracs, lrs, clips,
                       title + f", {r0['steps']} steps: fraction solved")
        else:
            plot_curves(plot, records, curves, title + f", lr {r0['lr']:g}, clip "
                        f"{r0['clip']}, momentum {r0['momentum']:g}")
        print(f"wrote {plot}")


def _shard_of(args, cfgs):
    """The runs of --shard i/n (all of them without it); duplicate runs are refused."""
    names = [run_name(c) for c in cfgs]
    try:
        keep = shard_indices(names, args.shard or (0, 1))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.shard:
        if not args.out:
            raise UsageError("--shard needs --out ROOT, the job's root that every shard "
                             "writes its run folders under")
        _refuse_explicit(args, ["--plot"], "with --shard (a shard holds part of the job; "
                         "`collect ROOT --plot` draws the whole job's figure)")
    return [cfgs[k] for k in keep], names


def _job_settings(args, task) -> dict:
    """The settings recorded in an experiment's job file: what every shard shares."""
    settings = {k: v for k, v in vars(args).items()
                if k not in ("func", "shard", "out", "force", "jobs", "threads",
                             "progress_every", "plot")}
    return dict(settings, task=task)


def _check_runs(task, cfgs):
    """Every run's sizes against its images and this machine's memory (check_run), before
    any work: a usage error names what is too big."""
    try:
        data = _load_task_data(cfgs[0])
        for c in cfgs:
            check_run(c, data)
    except ImportError as e:
        raise MissingPackage(str(e)) from None
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None


def cmd_experiment(args):
    task = _experiment_task(args.command, args)
    t0 = time.perf_counter()
    base = _base_settings(args, task)
    if getattr(args, "resume", None):
        _refuse_explicit(args, ["--shard"], "with --resume")
        cfgs = [_resume_config(args, task, base)]
    else:
        cfgs = _job_configs(args, task, base)
    cfgs, names = _shard_of(args, cfgs)
    _check_runs(task, cfgs)
    plot = _prepare_experiment(args, task, cfgs, names)
    _print_job(args, task, cfgs)
    plan = {run_label(c): (c.steps or 0) for c in cfgs} if cfgs[0].regression else None
    progress = Progress(every=args.progress_every, plan=plan, jobs=args.jobs)
    results = run_many(cfgs, jobs=args.jobs, threads=args.threads, progress=progress)
    records, curves, failed = _collect(results)
    if args.out and not getattr(args, "resume", None):      # one folder per finished run
        for cfg, (record, curve) in zip(cfgs, results):
            if not isinstance(curve, str):
                write_experiment_run(args.out, cfg, record, curve)
    if args.shard:
        print(f"shard {args.shard[0]}/{args.shard[1]}: {len(records)} run folder(s) under "
              f"{args.out}; `python tasks.py collect {args.out}` puts the job together")
        args.out = None                       # the job's outputs are collect's to write
    _report_job(args, task, records, curves, failed, time.perf_counter() - t0, plot)
    return 1 if failed else 0


DEFAULT_SCHEMES = ("np", "irnn", "i-rnn", "tanh")
_EXPERIMENT_HELP = {
    "adding": "the adding problem: np-RNN against IRNN, i-RNN and a tanh RNN",
    "multiply": "the multiplication problem (target = product of the marked values)",
    "pixel": "pixel-by-pixel MNIST or Fashion-MNIST (784 steps) from files on disk; "
             "nothing downloaded",
    "mnist": "the pixel task on MNIST (an alias of pixel --dataset mnist)",
    "digits": "scikit-learn's bundled 8x8 digits as 64-step pixel sequences",
    "sweep": "fraction of runs that solve adding/multiply over a grid of lr x clip",
}


def _add_task_options(p, name, d):
    """The options of a command's task: length and steps, or epochs and images."""
    sweep = name == "sweep"
    if sweep:
        p.add_argument("task", choices=("adding", "multiply"), help="the task to sweep")
        p.add_argument("--lrs", type=_float_list(_pos_float), metavar="LR,LR,...",
                       help="learning rates of the grid (default "
                       + ",".join(f"{v:g}" for v in SWEEP_DEFAULTS["lrs"]) + ")")
        p.add_argument("--clips", type=_float_list(_clip_arg), metavar="C,C,...",
                       help="clipping thresholds of the grid, 'none' for no clipping "
                       "(default " + ",".join(f"{v:g}" for v in SWEEP_DEFAULTS["clips"]) + ")")
    if name in ("adding", "multiply", "sweep"):
        p.add_argument("--seq-len", type=_seq_len, metavar="T", help="sequence length T "
                       f"(default {SWEEP_DEFAULTS['seq_len'] if sweep else d['seq_len']})")
        p.add_argument("--steps", type=_positive_int, help="training steps (default "
                       f"{SWEEP_DEFAULTS['steps'] if sweep else d['steps']})")
        p.add_argument("--target-mse", type=_pos_float,
                       help="a run has solved the task when its test MSE falls below this "
                       "(default 0.01)")
        return
    p.add_argument("--epochs", type=_positive_int,
                   help=f"passes over the training set (default {d['epochs']})")
    p.add_argument("--train-size", type=_positive_int,
                   help="use only the first N training images (default all)")
    p.add_argument("--permuted", action="store_true", default=None,
                   help="read the pixels in a fixed random order (permutation seed 0)")
    if name == "pixel":
        p.add_argument("--dataset", choices=tuple(PIXEL_DATASETS),
                       help="the data set (default fashion-mnist: `apt-get install "
                       "dataset-fashion-mnist` puts it in "
                       f"{PIXEL_DATASETS['fashion-mnist']}; mnist is looked for in the "
                       "current folder)")
    elif name == "mnist":
        p.set_defaults(dataset="mnist")
    if name in ("pixel", "mnist"):
        p.add_argument("--data", metavar="PATH",
                       help="an .npz (x_train, y_train, x_test, y_test), or a folder with "
                       "mnist.npz or the four IDX files (raw or .gz); default: the data "
                       "set's own location")


def _add_training_options(p, name, d):
    """Network, optimiser, seeds and evaluation options."""
    sweep = name == "sweep"
    p.add_argument("--schemes", type=_schemes_arg, help="comma-separated schemes from "
                   f"nprnn_ref.SCHEMES ({', '.join(nr.SCHEMES)}); default "
                   + ",".join(DEFAULT_SCHEMES))
    p.add_argument("--hidden", type=_positive_int, help="hidden units (default 100)")
    p.add_argument("--batch", type=_positive_int, help="minibatch size (default 16)")
    p.add_argument("--inputs", choices=tuple(nr.INPUT_RECIPES),
                   help="W_hx recipe (nprnn_ref.INPUT_RECIPES): paper, the paper's "
                   "N(0, alpha(H)^2 / H) for every network (default); scheme, each scheme's "
                   "own (Le et al.'s N(0, 0.001^2) for irnn and i-rnn); le, N(0, 0.001^2) "
                   "for every network")
    if not sweep:
        p.add_argument("--lr", type=_pos_float, help=f"learning rate (default {d['lr']:g})")
        p.add_argument("--clip", type=_clip_arg, default=_CLIP_DEFAULT,
                       help="gradient clipping threshold on the global norm, a number > 0, "
                       f"or 'none' to turn it off (default {d['clip']:g})")
    p.add_argument("--momentum", type=_nonneg_float,
                   help=f"SGD momentum (default {d['momentum']:g})")
    p.add_argument("--seed", type=_int_at_least(0), help="first seed (default 0)")
    p.add_argument("--seeds", type=_positive_int, help="number of seeds: --seed, "
                   f"--seed+1, ... (default {SWEEP_DEFAULTS['seeds'] if sweep else d['seeds']})")
    p.add_argument("--eval-every", type=_positive_int, metavar="K",
                   help="evaluate on the test set every K steps (default "
                   f"{d['eval_every'] or 'one epoch'})")
    p.add_argument("--test-size", type=_positive_int, metavar="N", help="test sequences "
                   f"(default {d['test_size'] or 'the whole test split'})")


def _add_output_options(p, name):
    p.add_argument("--out", metavar="DIR", help="write curves.csv, summary.json and one "
                   "folder per run there (created, with missing parents; an existing DIR "
                   "needs --force)")
    p.add_argument("--force", action="store_true",
                   help="allow overwriting existing --out, --plot and --save files")
    p.add_argument("--plot", nargs="?", const="", metavar="PNG",
                   help="write a PNG (test metrics against step, or the sweep's heat map; "
                   "default OUT/<command>.png or ./<command>.png; .png added to a name "
                   "without an extension; missing folders created); needs matplotlib")
    p.add_argument("--save", metavar="DIR",
                   help="write each run's checkpoint (.npz) there at every evaluation "
                   "(created, with missing parents)")
    p.add_argument("--shard", type=_shard_arg, metavar="I/N",
                   help="run only shard I (0-based) of N of the job: the runs at positions "
                   "I, I+N, ... of the job's runs sorted by name; each shard writes its run "
                   "folders under --out, and `collect` puts the job together")
    if name != "sweep":
        p.add_argument("--resume", metavar="CKPT",
                       help="continue the run of this checkpoint to --steps/--epochs, with "
                       "its history; its scheme, seed and settings are used, and an option "
                       "given that contradicts them is an error")


def _add_experiment_commands(sub, parents):
    for name, text in _EXPERIMENT_HELP.items():
        d = TASK_DEFAULTS.get("pixel" if name == "mnist" else name, TASK_DEFAULTS["adding"])
        p = sub.add_parser(name, help=text, parents=parents, description=text + ". Every "
                           "scheme is trained by SGD with BPTT on the same data stream; the "
                           "runs go in parallel worker processes (--jobs), one BLAS thread "
                           "each.")
        _add_task_options(p, name, d)
        _add_training_options(p, name, d)
        _add_output_options(p, name)
        p.set_defaults(func=cmd_experiment)


# --- The paper commands: paper, resume -------------------------------------------------

def _train_folder(folder, report=None):
    """run_many's view of train_paper_run: (summary, None)."""
    return train_paper_run(folder, report=report), None


def paper_groups(summaries) -> dict:
    """Summaries of paper runs grouped by task and length (or data set), each group in
    the canonical order: {"adding, T=150": [...], "pixel, fashion-mnist": [...]}."""
    groups = {}
    for s in sorted(summaries, key=lambda s: canonical_key(PaperRun.from_json(
            {k: s[k] for k in (f.name for f in dataclasses.fields(PaperRun))}))):
        key = f"pixel, {s['dataset']}" if s["task"] == "pixel" else \
            f"{s['task']}, T={s['seq_len']}"
        groups.setdefault(key, []).append(s)
    return groups


def read_curve_csv(path) -> list:
    """The rows of a paper run's curves.csv as dicts of floats (empty cells None)."""
    import csv
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    num = {"run", "task", "scheme"}
    return [{k: (v if k in num else (None if v == "" else float(v))) for k, v in r.items()}
            for r in rows]


def plot_paper_curves(path, groups, folders):
    """The paper's metric against updates, one panel per task and length, one line per
    network (and seed): % of test sequences with |error| < 0.04, or test accuracy."""
    plt = _pyplot()
    ncols = 2 if len(groups) == 4 else min(len(groups), 3)
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.2 * nrows),
                             squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    networks = dict.fromkeys(r["scheme"] for runs in groups.values() for r in runs)
    others = [s for s in networks if s not in PAPER_SCHEMES]   # one colour per network,
    colour = {s: plt.cm.tab10((PAPER_SCHEMES.index(s) if s in PAPER_SCHEMES else  # the
                               len(PAPER_SCHEMES) + others.index(s)) % 10)  # same in every
              for s in networks}                                   # panel and figure
    styles = ("-", "--", ":", "-.")
    for ax, (title, runs) in zip(axes.flat, groups.items()):
        seeds = len({r["seed"] for r in runs}) > 1
        for r in runs:
            rows = read_curve_csv(os.path.join(folders[r["run"]], "curves.csv"))
            key = "test_accuracy" if r["task"] == "pixel" else "test_within"
            label = (r["paper_name"] or r["scheme"]) + (f" s{r['seed']}" if seeds else "")
            ax.plot([p["update"] for p in rows], [100 * p[key] for p in rows], lw=1.0,
                    color=colour[r["scheme"]], ls=styles[r["seed"] % len(styles)],
                    label=label)
        ax.set_ylim(0, 100)
        ax.set_xlabel("update")
        ax.set_ylabel("test accuracy (%)" if runs[0]["task"] == "pixel" else
                      "% of test sequences with |error| < 0.04")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _folder_label(folder):
    return os.path.basename(os.path.normpath(folder))


def _run_job(folders, args) -> int:
    """Train every folder (unfinished ones continue), then print the table."""
    plan = {_folder_label(f): read_run_folder(f)[0].total_updates for f in folders}
    progress = Progress(every=args.progress_every, plan=plan, jobs=args.jobs)
    results = run_many(folders, jobs=args.jobs, threads=args.threads, progress=progress,
                       fn=_train_folder, label=_folder_label)
    summaries, failed = [], []
    for folder, (summary, err) in zip(folders, results):
        if isinstance(err, str):
            failed.append((folder, err))
        else:
            summaries.append(summary)
    if summaries:
        print()
        print(paper_table(summaries))
    for folder, err in failed:
        print(f"{folder}: FAILED: {err}")
    return 1 if failed else 0


def _print_protocol(specs, choices):
    s0 = specs[0]
    fixed = {k: v for k, v in s0.to_json().items() if k not in ("scheme", "seed")}
    varying = {k for s in specs for k, v in s.to_json().items() if fixed.get(k, v) != v}
    print(f"paper protocol, {s0.task}: " + ", ".join(
        f"{k}={v}" for k, v in fixed.items() if k not in varying and v is not None))
    print(f"  {s0.updates_per_epoch} updates per epoch, {s0.total_updates} updates in all")
    for s in specs:
        if varying:
            print(f"  {s.name}: " + ", ".join(f"{k}={getattr(s, k)}" for k in sorted(varying)))
    print("choices where the paper is silent, and departures from it:")
    for c in choices:
        print(f"  - {c}")
    print(f"{len(specs)} run(s): " + ", ".join(s.name for s in specs), flush=True)


def cmd_paper(args):
    seeds = list(range(args.seed, args.seed + args.seeds))
    schemes = sorted(args.schemes, key=lambda s: (PAPER_SCHEMES.index(s)
                                                  if s in PAPER_SCHEMES else 99, s))
    try:
        specs = [paper_run(args.task, s, seed, dataset=args.dataset, data=args.data,
                           inputs=args.inputs, hidden=args.hidden, seq_len=args.seq_len,
                           optimizer=args.optimizer, lr=args.lr, epochs=args.epochs,
                           train_size=args.train_size, test_size=args.test_size,
                           eval_every=args.eval_every, batch=args.batch,
                           clip="none" if args.clip is None else
                           (None if args.clip == _CLIP_DEFAULT else args.clip))
                 for s in schemes for seed in seeds]
        if args.task == "pixel":                            # say what is missing now
            d = load_pixel_dataset(args.dataset, args.data)
            for spec in specs:
                if spec.train_size > len(d["y_train"]) or spec.test_size > len(d["y_test"]):
                    raise ValueError(
                        f"{spec.dataset} at {d['source']} has {len(d['y_train'])} training "
                        f"and {len(d['y_test'])} test images, fewer than train_size="
                        f"{spec.train_size} or test_size={spec.test_size}")
            del d
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(str(e)) from None
    names, all_specs = [s.name for s in specs], specs
    try:
        specs = [specs[k] for k in shard_indices(names, args.shard or (0, 1))]
    except ValueError as e:
        raise UsageError(str(e)) from None
    departures = list(dict.fromkeys(d for s in specs for d in paper_departures(s)))
    choices = departures + PAPER_CHOICES["all"] + PAPER_CHOICES[args.task]
    folders = [os.path.join(args.out, spec.name) for spec in specs]
    _check_outputs([_Output("--out", args.out, folder=True, replace=False)], False)
    old = [f for f in folders if os.path.lexists(f)]
    if old and not args.resume:
        raise UsageError(f"{old[0]} already exists; pass --resume to continue its run, or "
                         "choose another --out")
    _claim_run_folders(old, "--out", [s for s, f in zip(specs, folders) if f in old])
    try:
        write_job_file(args.out, "paper", f"paper {args.task}", names,
                       {"specs": [s.to_json() for s in all_specs]})
        for spec, folder in zip(specs, folders):
            if folder not in old:         # claimed by creating it, then locked at once
                create_run_folder(args.out, spec, choices)
                _lock_outputs([_Output("--out", folder, folder=True)])
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    _print_protocol(specs, choices)
    return _run_job(folders, args)


def _run_folder_summary(folder):
    """The summary.json of a run folder (None before its run ended), checked: usage
    errors name the folder."""
    try:
        spec, _, summary = read_run_folder(folder)
    except (OSError, ValueError) as e:
        raise UsageError(str(e) if folder in str(e) else f"{folder}: {e}") from None
    if summary is not None and not (isinstance(summary, dict)
                                    and isinstance(summary.get("status"), str)):
        raise UsageError(f"{os.path.join(folder, 'summary.json')}: not the summary of a "
                         "run (no status)")
    return spec, summary


def _claim_run_folders(folders, option, specs=None) -> None:
    """Check and lock the run folders that this command continues: each a writable
    folder that no other process holds, whose run.json (holding ``specs``, when given),
    summary.json and checkpoint.npz are readable; a bad one is a usage error, found
    before any training."""
    outputs = [_Output(option, f, folder=True, replace=False) for f in folders]
    _check_outputs(outputs, False)
    _lock_outputs(outputs)
    for folder, want in zip(folders, specs or [None] * len(folders)):
        spec, summary = _run_folder_summary(folder)
        if want is not None and spec != want:
            diff = [k for k in spec.to_json() if spec.to_json()[k] != want.to_json()[k]]
            raise UsageError(f"{folder} holds a run with other settings "
                             f"({', '.join(diff)}); choose another --out")
        if (summary is None or summary["status"] == "paused") and \
                os.path.lexists(os.path.join(folder, "checkpoint.npz")):
            try:
                _load_run_checkpoint(folder, spec)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UsageError(str(e) if isinstance(e, ValueError) else
                                 f"{os.path.join(folder, 'checkpoint.npz')} is not a "
                                 f"checkpoint of this run ({type(e).__name__}: {e})") \
                    from None


def cmd_resume(args):
    try:
        folders = find_run_folders(args.root)
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    if not folders:
        raise UsageError(f"no run folders (with run.json) under {args.root}")
    todo = [f for f in folders if (_run_folder_summary(f)[1] or {}).get("status") in
            (None, "paused")]
    _claim_run_folders(todo, "ROOT")
    print(f"{len(folders)} run(s) under {args.root}, {len(todo)} unfinished", flush=True)
    code = _run_job(todo, args) if todo else 0
    done = [read_run_folder(f)[2] for f in folders]
    done = [d for d in done if d]
    if done:
        print("\nevery finished run under the root:")
        print(paper_table(done))
    return code


def _add_paper_commands(sub, parents):
    text = ("the paper's own protocol (Talathi and Vartak, sections 3 and 4): its "
            "networks, settings and metric, one run folder per run under --out")
    p = sub.add_parser("paper", help=text, parents=parents,
                       description=text + ". Every setting and every "
                       "choice where the paper is silent is printed and written to each "
                       "run's run.json.")
    p.add_argument("task", choices=PAPER_TASKS,
                   help="adding, multiply, or pixel (MNIST or Fashion-MNIST, T = 784)")
    p.add_argument("--schemes", type=_schemes_arg, default=["np", "irnn"],
                   help="comma-separated networks from nprnn_ref.SCHEMES (paper names: "
                   + ", ".join(f"{k}={v.paper_name}" for k, v in nr.SCHEMES.items()
                               if v.paper_name) + "); default np,irnn")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="first seed (default 0)")
    p.add_argument("--seeds", type=_positive_int, default=1,
                   help="number of seeds: --seed, --seed+1, ... (default 1, as the paper)")
    p.add_argument("--seq-len", type=_seq_len, metavar="T",
                   help="sequence length (default: adding 150, multiply 50; pixel: 784)")
    p.add_argument("--dataset", choices=tuple(PIXEL_DATASETS), default="fashion-mnist",
                   help="pixel task: the data set (default fashion-mnist, installed by "
                   "`apt-get install dataset-fashion-mnist`; mnist needs --data)")
    p.add_argument("--data", metavar="PATH",
                   help="pixel task: a folder with the four IDX files (raw or .gz) or an "
                   ".npz; default: where the data set's package installs it")
    p.add_argument("--inputs", choices=tuple(nr.INPUT_RECIPES), default="paper",
                   help="W_hx recipe: paper (every network, the default), scheme (each "
                   "scheme's own: Le et al.'s N(0, 0.001^2) for irnn and i-rnn), le")
    p.add_argument("--hidden", type=_positive_int, default=100, help="hidden units (100)")
    p.add_argument("--optimizer", choices=("sgd", "rmsprop"),
                   help="override the protocol's optimiser")
    p.add_argument("--lr", type=_pos_float, help="override the protocol's learning rate")
    p.add_argument("--clip", type=_clip_arg, default=_CLIP_DEFAULT,
                   help="override the clipping threshold (10): a number > 0, or 'none'")
    p.add_argument("--batch", type=_positive_int, help="override the minibatch size")
    p.add_argument("--epochs", type=_positive_int, help="override the number of epochs")
    p.add_argument("--train-size", type=_positive_int, metavar="N",
                   help="override the training set size")
    p.add_argument("--test-size", type=_positive_int, metavar="N",
                   help="override the test set size")
    p.add_argument("--eval-every", type=_positive_int, metavar="K",
                   help="override the updates between evaluations")
    p.add_argument("--out", required=True, metavar="ROOT",
                   help="the job's root folder: one run folder per run under it (created, "
                   "with missing parents)")
    p.add_argument("--resume", action="store_true",
                   help="continue runs whose folders exist under ROOT (their settings "
                   "must match); finished runs are left as they are")
    p.add_argument("--shard", type=_shard_arg, metavar="I/N",
                   help="run only shard I (0-based) of N: the runs at positions I, I+N, ... "
                   "of the job's runs sorted by name")
    p.set_defaults(func=cmd_paper)
    r = sub.add_parser("resume", help="continue every unfinished run under a job's root",
                       parents=parents,
                       description="Continue every unfinished run folder under ROOT from "
                       "its last checkpoint (never-started ones from the beginning), in "
                       "the canonical order, then print the table of every finished run.")
    r.add_argument("root", metavar="ROOT")
    r.set_defaults(func=cmd_resume)


def cmd_export_fixtures(args):
    """nprnn_ref's export-fixtures, with this command line's output rules: DIR checked
    before any work and locked while the command runs (DIR/.lock, a dot file, which the
    export's emptiness check and the verifier pass over)."""
    out = _Output("DIR", args.dir, folder=True, replace=False)
    _check_outputs([out], args.force)
    _lock_outputs([out])
    return nr._cmd_export_fixtures(args)


@contextlib.contextmanager
def _as_usage_error(*errors):
    """Raise the exceptions ``errors`` of the block as UsageError (one line, exit 2)."""
    try:
        yield
    except errors as e:
        raise UsageError(str(e)) from None


# --- The analysis commands -------------------------------------------------------------

def _analysis_figure(args, command):
    """(path, Figure) for --plot [PNG], or (None, None) without it. Refuses, before any
    work, an existing PNG without --force, a path that cannot be written, and a missing
    matplotlib."""
    path = _figure_path(args, command)
    if path is None:
        return None, None
    out = _Output("--plot", path)
    _check_outputs([out], args.force)
    Figure = _figure_class()
    _check_figure_format(path)
    _lock_outputs([out])
    return path, Figure


def _analysis_choices(args):
    """(schemes, hidden, trained) of the command line. Without --trained: --schemes and
    --hidden or their defaults, and None. With it: the loaded checkpoint, which fixes the
    scheme and size, so --schemes and --hidden given too are refused, as is a file that
    is not a checkpoint of an ANALYSIS_TASKS task."""
    if args.trained is None:
        hidden = ANALYSIS_HIDDEN if args.hidden is None else args.hidden
        return args.schemes or ANALYSIS_SCHEMES, hidden, None
    _refuse_explicit(args, ["--schemes", "--hidden"],
                     "with --trained (the checkpoint fixes the scheme and size)")
    with _as_usage_error(FileNotFoundError, ValueError):
        trained = load_trained(args.trained)
    return None, None, trained


def cmd_dynamics(args):
    path, Figure = _analysis_figure(args, "dynamics")
    result = dynamics_report(args.hidden, args.starts, args.matrices, args.draws, args.seed)
    if path:
        plot_dynamics(result, path, Figure)
    return 0


def cmd_gradflow(args):
    path, Figure = _analysis_figure(args, "gradflow")
    schemes, hidden, trained = _analysis_choices(args)
    curves = gradflow_report(schemes, hidden, args.seq_len, args.batch, args.seed, trained)
    if path:
        plot_gradflow(curves, path, Figure, _problem_name(trained))
    return 0


def cmd_sensitivity(args):
    path, Figure = _analysis_figure(args, "sensitivity")
    schemes, hidden, trained = _analysis_choices(args)
    curves = sensitivity_report(schemes, hidden, args.seq_len, args.batch, args.seed,
                                trained)
    if path:
        plot_sensitivity(curves, path, Figure)
    return 0


def cmd_spectrum(args):
    path, Figure = _analysis_figure(args, "spectrum")
    schemes, hidden, trained = _analysis_choices(args)
    specs = spectrum_report(schemes, hidden, args.seed, trained)
    if path:
        plot_spectrum(specs, path, Figure)
    return 0


def _analysis_parser(sub, threads, command, help, description):
    """A subcommand with the options every analysis command has: --seed, --plot [PNG],
    --force, --threads."""
    p = sub.add_parser(command, parents=[threads], help=help, description=description)
    p.add_argument("--seed", type=int, default=0, help="seed of data and weights "
                   "(default 0)")
    p.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                   help=f"also draw the figure into PNG (default ./{command}.png; .png "
                   "added to a name without an extension; missing folders created); needs "
                   "matplotlib")
    p.add_argument("--force", action="store_true", help="overwrite an existing PNG")
    return p


def _add_model_options(p, seq=True) -> None:
    """The networks compared (--schemes, --hidden or --trained) and, with ``seq``, the
    batch they are run on (--seq-len, --batch)."""
    p.add_argument("--schemes", type=_schemes_arg, default=None,
                   help="comma-separated initialisations (default "
                   f"{','.join(ANALYSIS_SCHEMES)}; any of {', '.join(nr.SCHEMES)})")
    p.add_argument("--hidden", type=_positive_int, default=None,
                   help=f"hidden units N (default {ANALYSIS_HIDDEN})")
    p.add_argument("--trained", metavar="CHECKPOINT", default=None,
                   help="a checkpoint (.npz) of an adding or multiply run: compare its "
                   "weights with a fresh initialisation of its scheme at its size (so not "
                   "with --schemes or --hidden)")
    if seq:
        p.add_argument("--seq-len", type=_seq_len, default=None,
                       help=f"sequence length T (default {ANALYSIS_SEQ_LEN}, or the "
                       "checkpoint's with --trained)")
        p.add_argument("--batch", type=_positive_int, default=32,
                       help="sequences of the checkpoint's task, or of the adding problem "
                       "(default 32)")


def _add_analysis_commands(sub):
    threads, _ = _parent_parsers()
    d = _analysis_parser(
        sub, threads, "dynamics", help="the 2-node phase portraits (cases a-d) and np_init "
        "at N = --hidden under the zero-input ReLU map",
        description="Tables of the paper's four 2-node cases of h_{t+1} = max(0, W h_t) "
        "and of what an np_init matrix does under the same map (measured decay beside "
        "IRNN), and the fraction of np_init draws whose top eigenvector has mixed signs.")
    d.add_argument("--hidden", type=_positive_int, default=ANALYSIS_HIDDEN,
                   help=f"hidden units N of the decay table (default {ANALYSIS_HIDDEN})")
    d.add_argument("--starts", type=_positive_int, default=200,
                   help="non-negative random starting states per matrix (default 200)")
    d.add_argument("--matrices", type=_positive_int, default=20,
                   help="np_init draws for the decay table (default 20)")
    d.add_argument("--draws", type=_positive_int, default=1000,
                   help="np_init draws per N for the mixed-sign fraction (default 1000)")
    d.set_defaults(func=cmd_dynamics)

    g = _analysis_parser(
        sub, threads, "gradflow", help="|dL/dh_t| against t per initialisation (adding "
        "problem)", description="The norm of the loss gradient reaching each hidden state "
        "h_t, at initialisation (or for a trained checkpoint), on one batch of the adding "
        "problem (or of the checkpoint's task): vanishing and exploding gradients.")
    _add_model_options(g)
    g.set_defaults(func=cmd_gradflow)

    s = _analysis_parser(
        sub, threads, "sensitivity", help="||d h_T / d x_t|| against t per initialisation",
        description="The Frobenius norm of the Jacobian of the last hidden state with "
        "respect to the input at step t, averaged over a batch of the adding problem (or "
        "of the checkpoint's task), computed with H backward passes.")
    _add_model_options(s)
    s.set_defaults(func=cmd_sensitivity)

    p = _analysis_parser(
        sub, threads, "spectrum", help="eigenvalues of W_hh per initialisation (or before "
        "and after training)", description="Spectral radius, norm and eigenvalue "
        "distribution of W_hh for each initialisation, or for a checkpoint beside a fresh "
        "initialisation of its scheme.")
    _add_model_options(p, seq=False)
    p.set_defaults(func=cmd_spectrum)


# --- collect: put a job split into shards together ---------------------------------------

def _collect_experiment(args, job):
    names = list(dict.fromkeys(n for j in job["jobs"] for n in j["runs"])) or \
        sorted(job["runs"])
    runs = [job["runs"][n] for n in names if n in job["runs"]]
    records, curves = [r["record"] for r in runs], [r["curve"] for r in runs]
    if not records:
        return
    command = job["jobs"][0]["command"] if job["jobs"] else "collect"
    regression = records[0]["task"] in ("adding", "multiply")
    print(results_table(records, regression))
    lrs = sorted(set(r["lr"] for r in records))
    clips = sorted(set(r["clip"] for r in records), key=lambda c: math.inf if c is None else c)
    if command == "sweep":
        text, fracs = sweep_table(records, lrs, clips)
        print()
        print(text)
    if args.out:
        meta = {"command": command, "task": records[0]["task"], "collected_from": args.roots,
                "missing": job["missing"]}
        write_outputs(args.out, records, curves, meta)
        print(f"wrote {os.path.join(args.out, 'curves.csv')} and "
              f"{os.path.join(args.out, 'summary.json')}")
    plot = _figure_path(args, "collect")
    if plot:
        r0 = records[0]
        title = f"{r0['task']}, hidden {r0['hidden']}, batch {r0['batch']}"
        if command == "sweep":
            plot_sweep(plot, fracs, lrs, clips, title + f", {r0['steps']} steps: fraction solved")
        else:
            plot_curves(plot, records, curves, title)
        print(f"wrote {plot}")


def _collect_paper(args, job):
    runs = [r for r in job["runs"].values() if r["done"]]
    groups = paper_groups([r["summary"] for r in runs])
    for title, summaries in groups.items():
        print(f"\n{title}")
        print(paper_table(summaries))
    folders = {r["name"]: r["folder"] for r in runs}
    if args.out:
        ordered = [s for g in groups.values() for s in g]
        texts = []
        for s in ordered:                  # every curve is read before anything is written
            path = os.path.join(folders[s["run"]], "curves.csv")
            try:
                with open(path) as f:
                    texts.append(f.read().splitlines(keepends=True))
            except (OSError, UnicodeDecodeError) as e:
                raise UsageError(f"{path}: not a readable curves.csv ({e})") from None
        os.makedirs(args.out, exist_ok=True)
        with _atomic_file(os.path.join(args.out, "summary.json")) as f:
            json.dump(_json_safe({"collected_from": args.roots, "missing": job["missing"],
                                  "runs": ordered}),
                      f, indent=1, allow_nan=False)
            f.write("\n")
        with _atomic_file(os.path.join(args.out, "curves.csv")) as out:
            for i, lines in enumerate(texts):
                out.writelines(lines if i == 0 else lines[1:])
        print(f"wrote {os.path.join(args.out, 'summary.json')} and "
              f"{os.path.join(args.out, 'curves.csv')}")
    plot = _figure_path(args, "collect")
    if plot and groups:
        plot_paper_curves(plot, groups, folders)
        print(f"wrote {plot}")


def _missing_text(job) -> str:
    """The missing runs, each unfinished paper run with how far it got: the update of
    the last evaluation in its curves.csv, of its total (what resuming continues from
    is its last checkpoint, at or before that)."""
    parts = []
    for name in job["missing"]:
        run = job["runs"].get(name)
        if run is None or "spec" not in run:
            parts.append(f"{name} (no run folder)")
            continue
        try:
            rows = read_curve_csv(os.path.join(run["folder"], "curves.csv"))
            last = int(rows[-1]["update"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            last = 0
        parts.append(f"{name} ({last:,} of {run['spec'].total_updates:,} updates)")
    return ", ".join(parts)


def cmd_collect(args):
    try:
        job = collect_job(args.roots)
        if args.select:
            job = select_runs(job, args.select)
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    plot, outputs = _figure_path(args, "collect"), []
    if args.out:
        real = os.path.realpath(args.out)
        inside = [r["folder"] for r in job["runs"].values()
                  if (real + os.sep).startswith(os.path.realpath(r["folder"]) + os.sep)]
        if inside:
            raise UsageError(f"--out {args.out} is inside the run folder {inside[0]}; "
                             "choose another folder")
        outputs += [_Output("--out", args.out, folder=True, replace=False)] + \
            [_Output("--out", os.path.join(args.out, n), lock=False)
             for n in ("curves.csv", "summary.json")]
    if plot:
        inside = args.out and os.path.realpath(os.path.dirname(os.path.abspath(plot))) == \
            os.path.realpath(args.out)
        outputs.append(_Output("--plot", plot, lock=not inside))
    _check_outputs(outputs, args.force)
    if plot:
        _pyplot()
        _check_figure_format(plot)
    if job["missing"] and not args.partial:
        print(f"{len(job['missing'])} run(s) missing or unfinished: "
              + _missing_text(job), file=sys.stderr)
        print("tasks.py collect: pass --partial to collect what is there", file=sys.stderr)
        return 1
    _lock_outputs(outputs)
    try:
        (_collect_paper if job["kind"] == "paper" else _collect_experiment)(args, job)
    except (KeyError, TypeError) as e:            # a record without the fields it needs
        raise UsageError(f"a run under {', '.join(args.roots)} holds a malformed record "
                         f"({type(e).__name__}: {e})") from None
    if job["missing"]:
        print(f"\n{len(job['missing'])} run(s) missing or unfinished: "
              + _missing_text(job))
    return 0


def _add_collect_command(sub):
    p = sub.add_parser("collect", help="put a job split into shards together: the table, "
                       "curves.csv, summary.json and figure of the unsplit job",
                       description="Read the job files (job-*.json) and run folders under "
                       "the ROOTs (one per shard, or one shared root), refuse runs found "
                       "twice, list the runs that are missing or unfinished, and print and "
                       "write what the unsplit job would have.")
    p.add_argument("roots", nargs="+", metavar="ROOT")
    p.add_argument("--out", metavar="DIR", help="write curves.csv and summary.json there "
                   "(created, with missing parents)")
    p.add_argument("--plot", nargs="?", const="", metavar="PNG",
                   help="write the job's figure (default OUT/collect.png or ./collect.png; "
                   "missing folders created)")
    p.add_argument("--force", action="store_true", help="allow overwriting outputs")
    p.add_argument("--partial", action="store_true",
                   help="collect what is there even when runs are missing (exit 0)")
    p.add_argument("--select", action="append", metavar="GLOB",
                   help="only the runs whose names match this shell pattern, e.g. "
                   "'adding-T150-*' (repeat for several; each must match a run the job "
                   "lists)")
    p.set_defaults(func=cmd_collect)


# --- bench ----------------------------------------------------------------------------

def cmd_bench(args):
    bench(args.shape or DEFAULT_BENCH_SHAPES, args.repeats, args.threads,
          use_torch=not args.no_torch, seed=args.seed)
    return 0


def _add_bench_command(sub, parents):
    b = sub.add_parser("bench", parents=parents, help="time loss_and_grads against its matrix-product floor "
                       "(and PyTorch when installed)",
                       description="Median time of loss_and_grads (relu, mse, last, float64) "
                       "and of its floor (the 2T recurrent products plus the input "
                       "projection, dW_hx and dW_hh products), interleaved in one run, and "
                       "their ratio; with torch importable, also torch.nn.RNN + Linear "
                       "forward and backward on the same data.")
    b.add_argument("--shape", type=_parse_shape, action="append", metavar="T,B,H,D",
                   help="a shape to time (repeatable); default: "
                   + " ".join(",".join(map(str, s)) for s in DEFAULT_BENCH_SHAPES))
    b.add_argument("--repeats", type=_positive_int, default=21,
                   help="timed repeats per shape (default 21)")
    b.add_argument("--seed", type=int, default=0, help="seed of the data (default 0)")
    b.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    b.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's mmap and trim thresholds at their defaults, to see "
                   "what fresh page faults on every call cost")
    b.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tasks.py", description="nprnn-ref: experiments, benchmarks and exports for "
        "the np-RNN reference (Talathi and Vartak, arXiv 1511.03771).",
        epilog="Every output path is checked before any work: missing parent folders are "
        "created, an existing output is replaced only with --force, and an output that "
        "another command is writing is refused. Usage errors exit with status 2.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    threads, jobs = _parent_parsers()
    _add_bench_command(sub, [threads])
    _add_experiment_commands(sub, [threads, jobs])
    _add_paper_commands(sub, [threads, jobs])
    _add_collect_command(sub)
    nr.add_verification_commands(sub, [threads])
    sub.choices["export-fixtures"].set_defaults(func=cmd_export_fixtures)
    _add_analysis_commands(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except nr.UsageError as e:
        print(f"tasks.py {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tasks.py {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _release_locks()


if __name__ == "__main__":
    sys.exit(main())
