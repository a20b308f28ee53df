#!/usr/bin/env python3
"""tasks.py: data for the paper's tasks and the command line of nprnn-ref.

    python tasks.py bench [--shape T,B,H,D ...] [--threads N] [--repeats K]

Run ``python tasks.py -h`` for every subcommand and ``python tasks.py CMD -h`` for its
options. BLAS threads are set from --threads (default 1) before NumPy is imported, because
small matrix products run fastest on one thread per process.
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
    if not n.isdigit() or int(n) < 1:
        sys.exit(f"tasks.py: error: --threads must be an integer >= 1, got {n!r}")
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = n
    return n


if __name__ == "__main__":
    _set_blas_threads(sys.argv[1:])

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import nprnn_ref as nr  # noqa: E402


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


# ---------------------------------------------------------------------------------------
# bench: loss_and_grads against the floor of its unavoidable matrix products
# ---------------------------------------------------------------------------------------

DEFAULT_BENCH_SHAPES = ((150, 16, 100, 2), (784, 16, 100, 1), (200, 64, 256, 8))


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
            np.matmul(hs[t - 1], WT, out=hs[t])
        for t in range(T - 2, -1, -1):
            np.matmul(d[t + 1], W_hh, out=d[t])
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


def cmd_bench(args):
    bench(args.shape or DEFAULT_BENCH_SHAPES, args.repeats, args.threads,
          use_torch=not args.no_torch, seed=args.seed)
    return 0


# ---------------------------------------------------------------------------------------
# The paper's experiments: task data, the training loop, checkpoints, parallel runs
# ---------------------------------------------------------------------------------------

import json  # noqa: E402
import math  # noqa: E402

ADDING_BASELINE_MSE = 1.0 / 6.0        # predict 1 = E[a + b]: Var(a + b) = 2 / 12
MULTIPLY_BASELINE_MSE = 7.0 / 144.0    # predict 1/4 = E[ab]: E[a^2 b^2] - 1/16 = 1/9 - 1/16
CHECKPOINT_FORMAT = "nprnn-ref-checkpoint/1"
CHECKPOINT_CONFIG_KEYS = ("task", "scheme", "nonlinearity", "seq_len", "hidden", "lr",
                          "momentum", "clip", "batch", "seed")
_BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def _check_count(argname, n, minimum=1):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{argname} must be an int >= {minimum}, got {type(n).__name__} {n!r}")
    if n < minimum:
        raise ValueError(f"{argname} must be an int >= {minimum}, got {n}")
    return int(n)


def _marked_pairs(n, T, rng):
    """Values, marker positions and marked values shared by the adding and multiplication
    problems. Returns x (T, n, 2) float64 and the two marked values a, b (n,) each."""
    n = _check_count("n", n)
    T = _check_count("T", T, minimum=2)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    half = T // 2
    values = rng.uniform(0.0, 1.0, size=(T, n))              # (T, n)
    first = rng.integers(0, half, size=n)                    # a step in [0, T//2)
    second = rng.integers(half, T, size=n)                   # a step in [T//2, T)
    cols = np.arange(n)
    x = np.zeros((T, n, 2))                                  # (T, n, 2)
    x[:, :, 0] = values
    x[first, cols, 1] = 1.0
    x[second, cols, 1] = 1.0
    return x, values[first, cols], values[second, cols]


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


def read_idx(path, ndim):
    """Read an IDX file of unsigned bytes (raw, or gzipped when its first bytes say so).

    Checks the magic number (0x0801 for ndim 1, 0x0803 for ndim 3), and that the file
    holds exactly the number of bytes its header announces. Returns a uint8 array.
    """
    import gzip
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: damaged gzip file ({e})") from None
    want = _IDX_MAGIC[ndim]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != want:
        raise ValueError(f"{path}: IDX magic number must be {want} (0x{want:08x}, "
                         f"{ndim}-d unsigned bytes), got {magic} (0x{magic:08x})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    n_bytes = int(np.prod(dims)) if dims else 0
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
        if y.size and (y.min() < 0 or y.max() > 9):
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
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "mnist.npz")):
        path = os.path.join(path, "mnist.npz")
    if os.path.isfile(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in MNIST_IDX_NAMES if k not in z.files]
                if missing:
                    raise ValueError(f"{path}: missing arrays {', '.join(missing)}; expected "
                                     f"x_train, y_train, x_test, y_test, got "
                                     f"{', '.join(z.files) or 'none'}")
                arrays = {k: z[k] for k in MNIST_IDX_NAMES}
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: not a readable .npz file ({e})") from None
        except ValueError as e:
            if str(e).startswith(path):
                raise
            raise ValueError(f"{path}: not a readable .npz file ({e})") from None
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


def pixel_sequences(images, permutation=None):
    """Images (n, P) uint8 -> sequences (P, n, 1) float64 in [0, 1], one pixel per step in
    scanline order, or in the order ``permutation`` (a permutation of range(P))."""
    images = np.asarray(images)
    if images.ndim != 2:
        raise ValueError(f"images must have shape (n, P), got {images.shape}")
    if permutation is not None:
        images = images[:, permutation]
    return (images.T[:, :, None] / 255.0 if images.dtype == np.uint8
            else images.T[:, :, None].astype(np.float64))


def load_digits_data(rng, test_fraction=0.2):
    """scikit-learn's bundled 8x8 digits (1797 images, no download) as 64-pixel rows scaled
    to [0, 1] and split once by ``rng``: returns x_train (n, 64) float64, y_train, x_test,
    y_test."""
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
    te, tr = order[:n_test], order[n_test:]
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}


# --- Tasks as seen by the training loop -----------------------------------------------

class _Task:
    """What the training loop needs: sizes, loss, a batch for each step, a test set."""

    def __init__(self, cfg):
        name = cfg["task"]
        self.name = name
        seed = cfg["seed"]
        if name in ("adding", "multiply"):
            self.gen = adding_problem if name == "adding" else multiplication_problem
            self.n_in, self.n_out, self.loss = 2, 1, "mse"
            self.T = cfg["seq_len"]
            self.baseline = ADDING_BASELINE_MSE if name == "adding" else MULTIPLY_BASELINE_MSE
            # The test set comes from its own stream, so it is the same for every scheme
            # and across --resume; the training stream is the checkpointed data rng.
            self.x_test, self.y_test = self.gen(cfg["test_size"], self.T,
                                                np.random.default_rng([seed, 2]))
            self.steps_per_epoch = None
        elif name in ("mnist", "digits"):
            self.n_in, self.n_out, self.loss = 1, 10, "xent"
            if name == "mnist":
                data = load_mnist(cfg["data"])
            else:
                data = load_digits_data(np.random.default_rng(cfg.get("split_seed", 0)))
            self.perm = None
            if cfg.get("permuted"):
                self.perm = np.random.default_rng(cfg.get("perm_seed", 0)).permutation(
                    data["x_train"].shape[1])
            self.x_train, self.y_train = data["x_train"], data["y_train"]
            if cfg.get("train_size"):
                self.x_train = self.x_train[:cfg["train_size"]]
                self.y_train = self.y_train[:cfg["train_size"]]
            n_test = min(cfg.get("test_size") or len(data["y_test"]), len(data["y_test"]))
            self.x_test = pixel_sequences(data["x_test"][:n_test], self.perm)
            self.y_test = data["y_test"][:n_test]
            self.T = self.x_train.shape[1]
            self.batch = cfg["batch"]
            self.steps_per_epoch = len(self.y_train) // self.batch
            if self.steps_per_epoch < 1:
                raise ValueError(f"--batch {self.batch} is larger than the training set "
                                 f"({len(self.y_train)} images)")
            self._epoch, self._order = None, None
            self._seed = seed
        else:
            raise ValueError(f"task must be adding, multiply, mnist or digits, got {name!r}")

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
    """Test metrics: {"mse"} for regression, {"loss", "accuracy"} for classification, over
    the whole test set in chunks small enough to keep the cache of forward modest."""
    T, n, _ = task.x_test.shape
    H = params["W_hh"].shape[0]
    chunk = max(1, min(n, max_elems // (T * H)))
    sq, xent, correct = 0.0, 0.0, 0
    for i in range(0, n, chunk):
        xs = task.x_test[:, i:i + chunk]
        h, _ = nr.forward(params, xs, nonlinearity=nonlinearity)
        y = nr.readout(params, h, "last")                        # (b, O)
        t = task.y_test[i:i + chunk]
        if task.loss == "mse":
            sq += float(np.sum((y - t) ** 2))
        else:
            L, _ = nr.loss_fn(y, t, "xent")
            xent += float(L) * len(t)
            correct += int(np.sum(np.argmax(y, axis=1) == t))
    if task.loss == "mse":
        return {"mse": sq / (n * task.y_test.shape[1])}
    return {"loss": xent / n, "accuracy": correct / n}


# --- Checkpoints -----------------------------------------------------------------------

def save_checkpoint(path, params, velocity, step, config, rng):
    """Write a checkpoint .npz (format "nprnn-ref-checkpoint/1"), atomically.

    Keys: W_hx, W_hh, b_h, W_yh, b_y; velocity_<name> for each (zeros when velocity is
    None, which sgd_step treats identically); step (0-d int64); config (0-d str, JSON with
    at least CHECKPOINT_CONFIG_KEYS); rng_state (0-d str, JSON of rng.bit_generator.state);
    format (0-d str). Everything loads with allow_pickle=False.
    """
    nr.check_params(params)
    step = _check_count("step", step, minimum=0)
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    missing = [k for k in CHECKPOINT_CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"config is missing {', '.join(missing)}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    arrays = {k: params[k] for k in nr.PARAM_NAMES}
    for k in nr.PARAM_NAMES:
        v = np.zeros_like(params[k]) if velocity is None else velocity[k]
        if v.shape != params[k].shape or v.dtype != params[k].dtype:
            raise ValueError(f"velocity[{k!r}] must have shape {params[k].shape} and dtype "
                             f"{params[k].dtype.name}, got {v.shape} {v.dtype.name}")
        arrays["velocity_" + k] = v
    arrays["step"] = np.array(step, dtype=np.int64)
    arrays["config"] = np.array(json.dumps(config, sort_keys=True))
    arrays["rng_state"] = np.array(json.dumps(rng.bit_generator.state))
    arrays["format"] = np.array(CHECKPOINT_FORMAT)
    path = os.fspath(path)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_checkpoint(path):
    """Read and validate a checkpoint written by save_checkpoint (allow_pickle=False).

    Returns dict(params=..., velocity=..., step=int, config=dict, rng=np.random.Generator
    in the saved state). A damaged or foreign file raises ValueError saying what is wrong.
    """
    import zipfile
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    bad = f"{path} is not an nprnn-ref checkpoint"
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError(f"{bad}: it holds a single array, not a .npz archive")
            if "format" not in z.files:
                raise ValueError(f"{bad}: no 'format' entry (keys: {', '.join(z.files)})")
            fmt = z["format"]
            if fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != CHECKPOINT_FORMAT:
                raise ValueError(f"{bad}: format must be {CHECKPOINT_FORMAT!r}, got {fmt!r}")
            need = (list(nr.PARAM_NAMES) + ["velocity_" + k for k in nr.PARAM_NAMES]
                    + ["step", "config", "rng_state"])
            missing = [k for k in need if k not in z.files]
            if missing:
                raise ValueError(f"{bad}: missing {', '.join(missing)}")
            a = {k: z[k] for k in need}
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{bad}: damaged or unreadable .npz ({e})") from None
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{bad}: damaged or unreadable .npz ({e})") from None
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
    for key in ("config", "rng_state"):
        if a[key].shape != () or a[key].dtype.kind != "U":
            raise ValueError(f"{bad}: {key} must be a 0-d JSON string, got {a[key]!r}")
    try:
        config = json.loads(str(a["config"]))
        state = json.loads(str(a["rng_state"]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{bad}: config or rng_state is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{bad}: config must be a JSON object, got {config!r}")
    missing = [k for k in CHECKPOINT_CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"{bad}: config is missing {', '.join(missing)}")
    try:
        bitgen = getattr(np.random, state["bit_generator"])
        if not (isinstance(bitgen, type) and issubclass(bitgen, np.random.BitGenerator)):
            raise ValueError(state["bit_generator"])
        bg = bitgen()
        bg.state = state
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{bad}: rng_state is not a numpy bit generator state ({e!r})") \
            from None
    return {"params": params, "velocity": velocity, "step": int(step), "config": config,
            "rng": np.random.Generator(bg)}


# --- The training loop -----------------------------------------------------------------

def run_label(cfg):
    """A short name of one run: scheme, seed, and lr/clip when they vary in a sweep."""
    s = f"{cfg['scheme']} s{cfg['seed']}"
    if cfg.get("label_hp"):
        s += f" lr{cfg['lr']:g} c{format(cfg['clip'], 'g') if cfg['clip'] else 'none'}"
    return s


def _all_finite(arrays):
    return all(np.all(np.isfinite(a)) for a in arrays)


def train_run(cfg, report=None, report_every=0.5):
    """Train one network by SGD with BPTT; return (record, curve).

    cfg: task, scheme, seq_len, hidden, steps (or epochs for mnist/digits), batch, lr,
    momentum, clip (None: no clipping), seed, eval_every, test_size, target_mse, and
    optionally save (checkpoint path, rewritten at every evaluation and at the end),
    resume (checkpoint path), data, permuted, train_size.
    Streams from the seed: init (seed, 0), training batches (seed, 1), test set (seed, 2),
    so every scheme sees the same data. After each step the loss (and the new parameters)
    are checked: anything NaN or infinite stops the run as diverged at that step.
    report(dict) is called about every report_every seconds with the progress.
    """
    task = _Task(cfg)
    nonlin = nr.SCHEMES[cfg["scheme"]].nonlinearity
    total = cfg["steps"] if cfg.get("steps") else cfg["epochs"] * task.steps_per_epoch
    eval_every = cfg.get("eval_every") or task.steps_per_epoch or 500
    ck_cfg = {"task": cfg["task"], "scheme": cfg["scheme"], "nonlinearity": nonlin,
              "seq_len": task.T, "hidden": cfg["hidden"], "lr": cfg["lr"],
              "momentum": cfg["momentum"], "clip": cfg["clip"], "batch": cfg["batch"],
              "seed": cfg["seed"], "permuted": bool(cfg.get("permuted")),
              "train_size": cfg.get("train_size")}
    if cfg.get("resume"):
        ck = load_checkpoint(cfg["resume"])
        for k in CHECKPOINT_CONFIG_KEYS:
            if k in ck_cfg and ck["config"].get(k) != ck_cfg[k]:
                raise ValueError(f"checkpoint {cfg['resume']} has {k}={ck['config'].get(k)!r}"
                                 f" but this run has {k}={ck_cfg[k]!r}")
        params, velocity, start, rng = ck["params"], ck["velocity"], ck["step"], ck["rng"]
        if start > total:
            raise ValueError(f"checkpoint {cfg['resume']} is at step {start}, beyond "
                             f"the {total} steps asked for")
    else:
        params = nr.init_params(task.n_in, cfg["hidden"], task.n_out, cfg["scheme"],
                                np.random.default_rng([cfg["seed"], 0]))
        velocity, start, rng = None, 0, np.random.default_rng([cfg["seed"], 1])
    regression = task.loss == "mse"
    key = "mse" if regression else "accuracy"
    curve, best, steps_to_target, diverged_at = [], None, None, None
    train_time, t_wall0, last_report = 0.0, time.perf_counter(), 0.0
    window, last_metric, step = [], None, start

    def do_eval(step, train_loss):
        nonlocal best, steps_to_target, last_metric
        m = evaluate(params, task, nonlin)
        last_metric = m[key]
        better = best is None or (m[key] < best if regression else m[key] > best)
        best = m[key] if better else best
        if regression and steps_to_target is None and m[key] < cfg["target_mse"]:
            steps_to_target = step
        curve.append({"step": step, "train_loss": train_loss, **{"test_" + k: v
                                                                 for k, v in m.items()}})

    def emit(step, force=False):
        nonlocal last_report
        now = time.perf_counter()
        if report is None or (not force and now - last_report < report_every):
            return
        last_report = now
        sps = (step - start) / train_time if train_time > 0 else 0.0
        report({"run": run_label(cfg), "step": step, "total": total, "sps": sps,
                "loss": float(np.mean(window[-200:])) if window else None,
                "metric": last_metric, "metric_name": "test " + key,
                "eta": (total - step) / sps if sps > 0 else None})

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        do_eval(start, None)
        for step in range(start + 1, total + 1):
            t0 = time.perf_counter()
            x, target = task.batch_for(rng, step - 1, cfg["batch"])
            L, grads = nr.loss_and_grads(params, x, target, loss=task.loss, output="last",
                                         nonlinearity=nonlin)
            if not np.isfinite(L):
                diverged_at = step
                break
            if cfg["clip"]:
                grads, _ = nr.clip_grads(grads, cfg["clip"])
            params_new, velocity = nr.sgd_step(params, grads, velocity, cfg["lr"],
                                               cfg["momentum"])
            if not _all_finite(params_new.values()):
                diverged_at = step
                break
            params = params_new
            train_time += time.perf_counter() - t0
            window.append(float(L))
            if step % eval_every == 0 or step == total:
                do_eval(step, float(np.mean(window[-eval_every:])))
                if cfg.get("save"):
                    save_checkpoint(cfg["save"], params, velocity, step, ck_cfg, rng)
                emit(step, force=True)
            else:
                emit(step)
    done = (diverged_at - 1 if diverged_at else total) - start
    final = curve[-1]["test_" + key] if curve else None
    record = {
        "task": cfg["task"], "scheme": cfg["scheme"], "nonlinearity": nonlin,
        "seed": cfg["seed"], "lr": cfg["lr"], "momentum": cfg["momentum"],
        "clip": cfg["clip"], "batch": cfg["batch"], "hidden": cfg["hidden"],
        "seq_len": task.T, "steps": total, "start_step": start,
        "steps_done": done, "eval_every": eval_every,
        "test_size": int(task.x_test.shape[1]),
        "diverged_at": diverged_at,
        "wall_seconds": time.perf_counter() - t_wall0,
        "train_seconds": train_time,
        "steps_per_second": done / train_time if train_time > 0 else None,
    }
    if regression:
        record.update(final_test_mse=final, best_test_mse=best,
                      target_mse=cfg["target_mse"], steps_to_target=steps_to_target,
                      baseline_mse=task.baseline)
    else:
        record.update(final_test_accuracy=final, best_test_accuracy=best,
                      epochs=cfg.get("epochs"), steps_to_target=None,
                      final_test_loss=curve[-1]["test_loss"] if curve else None)
    if cfg.get("permuted"):
        record["permuted"] = True
    emit(start + done, force=True)
    return record, curve


# --- Many runs: in this process, or in worker processes (one BLAS thread each) ---------

def _fmt_time(s):
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


class Progress:
    """Live progress of several runs: one line rewritten with \\r on a terminal, plain
    lines at most every ``every`` seconds per run otherwise."""

    def __init__(self, stream=None, every=30.0, tty=None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every
        self.status, self.printed, self.width = {}, {}, 0

    @staticmethod
    def text(m):
        loss = "-" if m["loss"] is None else f"{m['loss']:.4g}"
        met = "-" if m["metric"] is None else f"{m['metric']:.4g}"
        return (f"{m['run']}: {m['step']}/{m['total']} {m['sps']:.0f} steps/s loss {loss} "
                f"{m['metric_name']} {met} ETA {_fmt_time(m['eta'])}")

    def update(self, m):
        self.status[m["run"]] = m
        if self.tty:
            import shutil
            cols = shutil.get_terminal_size((120, 20)).columns - 1
            line = " | ".join(self.text(v) for v in self.status.values())[:cols]
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
            self.stream.flush()
        else:
            now = time.monotonic()
            if now - self.printed.get(m["run"], -1e9) >= self.every:
                self.printed[m["run"]] = now
                print(self.text(m), file=self.stream, flush=True)

    def done(self, label, record=None, error=None):
        """Run ``label`` has ended: with its record, or with an error message."""
        self.status.pop(label, None)
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


def _worker(cfg, queue):
    """Entry point of a worker process (spawned, BLAS threads set in its environment)."""
    return train_run(cfg, report=queue.put)


def run_many(cfgs, jobs=2, threads=1, progress=None):
    """Run every config; return [(record, curve) or (cfg, error string)] in input order.

    jobs=1 runs them here one after another. Otherwise a pool of ``jobs`` spawned worker
    processes runs them, with the BLAS thread variables set to ``threads`` in the
    environment they inherit, so each worker's NumPy starts with that many threads. A run
    that raises is reported and the others go on.
    """
    results = [None] * len(cfgs)
    if jobs == 1 or len(cfgs) == 1:
        for i, cfg in enumerate(cfgs):
            try:
                results[i] = train_run(cfg, report=progress.update if progress else None)
                if progress:
                    progress.done(run_label(cfg), results[i][0])
            except (ValueError, TypeError, OSError, ImportError) as e:
                results[i] = (cfg, f"{type(e).__name__}: {e}")
                if progress:
                    progress.done(run_label(cfg), error=results[i][1])
        return results
    import concurrent.futures as cf
    import multiprocessing as mp
    import queue as queue_mod
    ctx = mp.get_context("spawn")
    saved = {v: os.environ.get(v) for v in _BLAS_VARS}
    os.environ.update({v: str(threads) for v in _BLAS_VARS})
    try:
        with ctx.Manager() as manager, cf.ProcessPoolExecutor(
                max_workers=jobs, mp_context=ctx) as pool:
            q = manager.Queue()
            futs = {pool.submit(_worker, cfg, q): i for i, cfg in enumerate(cfgs)}
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
                            progress.done(run_label(cfgs[i]), results[i][0])
                    except Exception as e:  # a failed run must not stop the others
                        results[i] = (cfgs[i], f"{type(e).__name__}: {e}")
                        if progress:
                            progress.done(run_label(cfgs[i]), error=results[i][1])
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old
    return results


# --- Results: table, CSV, summary.json, figures -----------------------------------------

def _fmt(v, spec=".4g"):
    return "-" if v is None else format(v, spec)


def results_table(records, regression=True):
    """One row per run: scheme, seed, lr, clip, final and best test metric, steps to
    target, divergence, wall time and training steps per second."""
    if regression:
        head = (f"{'scheme':<8} {'seed':>4} {'lr':>8} {'mom':>4} {'clip':>6} {'final MSE':>10} "
                f"{'best MSE':>10} {'steps_to_target':>15} {'diverged':>9} {'wall s':>7} "
                f"{'steps/s':>8}")
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
            row += (f"{_fmt(r['final_test_mse']):>10} {_fmt(r['best_test_mse']):>10} "
                    f"{stt:>15} ")
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
    """curves.csv (one row per evaluation of every run) and summary.json (meta + one
    record per run) in the folder ``out`` (already checked by _check_new_paths)."""
    import csv
    os.makedirs(out, exist_ok=True)
    rows = list(_curve_rows(records, curves))
    fields = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(os.path.join(out, "curves.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({**meta, "runs": records}, f, indent=1)
        f.write("\n")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(path, records, curves, title):
    """Test metric against step, one colour per scheme (one line per seed)."""
    plt = _pyplot()
    regression = "final_test_mse" in records[0]
    key = "test_mse" if regression else "test_accuracy"
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {}
    for r, c in zip(records, curves):
        steps = [p["step"] for p in c]
        vals = [p[key] for p in c]
        first = r["scheme"] not in colours
        line, = ax.plot(steps, vals, lw=1.2, color=colours.get(r["scheme"]),
                        label=r["scheme"] if first else None)
        colours.setdefault(r["scheme"], line.get_color())
        if r["diverged_at"]:
            ax.plot(steps[-1:], vals[-1:], "x", color=line.get_color(), ms=8)
    if regression:
        ax.set_yscale("log")
        ax.axhline(records[0]["baseline_mse"], color="grey", ls="--", lw=0.8,
                   label=f"predict the mean ({records[0]['baseline_mse']:.3g})")
        ax.axhline(records[0]["target_mse"], color="grey", ls=":", lw=0.8,
                   label=f"target ({records[0]['target_mse']:g})")
        ax.set_ylabel("test MSE")
    else:
        ax.set_ylabel("test accuracy")
    ax.set_xlabel("training step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
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


# --- The experiment subcommands ---------------------------------------------------------

# Defaults chosen by measurement (see the README): the adding and multiplication problems.
TASK_DEFAULTS = {
    "adding": {"seq_len": 50, "steps": 30000, "lr": 0.01, "momentum": 0.0, "clip": 10.0,
               "eval_every": 500, "test_size": 1000, "seeds": 3},
    "multiply": {"seq_len": 50, "steps": 30000, "lr": 0.01, "momentum": 0.0, "clip": 10.0,
                 "eval_every": 500, "test_size": 1000, "seeds": 3},
    "mnist": {"epochs": 100, "lr": 1e-4, "momentum": 0.0, "clip": 1.0,
              "eval_every": None, "test_size": 10000, "seeds": 1},
    "digits": {"epochs": 100, "lr": 0.1, "momentum": 0.0, "clip": 1.0,
               "eval_every": None, "test_size": None, "seeds": 1},
}
SWEEP_DEFAULTS = {"lrs": (0.001, 0.01, 0.1), "clips": (1.0, 10.0, 100.0), "seeds": 2,
                  "steps": 20000, "seq_len": 50}
_CLIP_DEFAULT = -1.0      # --clip not given (argparse would parse a string default)


def _clip_arg(text):
    if text.lower() in ("none", "0", "inf"):
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


def _check_new_paths(paths, force):
    """Refuse to overwrite: every existing path in ``paths`` is an error without --force."""
    for p in paths:
        if p and os.path.exists(p) and not force:
            raise SystemExit(f"tasks.py: error: {p} already exists; pass --force to "
                             "overwrite it, or choose another path")


def _run_configs(args, task):
    d = TASK_DEFAULTS[task]
    base = {"task": task, "hidden": args.hidden, "batch": args.batch,
            "target_mse": args.target_mse,
            "eval_every": args.eval_every if args.eval_every else d["eval_every"],
            "test_size": args.test_size if args.test_size else d["test_size"]}
    for k in ("lr", "momentum"):
        base[k] = getattr(args, k) if getattr(args, k) is not None else d[k]
    base["clip"] = d["clip"] if args.clip == _CLIP_DEFAULT else args.clip
    if task in ("adding", "multiply"):
        base["seq_len"] = args.seq_len or d["seq_len"]
        base["steps"] = args.steps or d["steps"]
    else:
        base["seq_len"] = None
        base["epochs"] = args.epochs or d["epochs"]
        base["train_size"] = args.train_size
        base["permuted"] = getattr(args, "permuted", False)
        base["data"] = getattr(args, "data", None)
    return base


def _expand(base, schemes, seeds, lrs=None, clips=None, save_dir=None):
    cfgs = []
    for lr in lrs or [base["lr"]]:
        for clip in clips or [base["clip"]]:
            for seed in seeds:
                for s in schemes:
                    c = dict(base, scheme=s, seed=seed, lr=lr, clip=clip,
                             label_hp=lrs is not None)
                    if save_dir:
                        name = f"{base['task']}_{s}_seed{seed}"
                        if lrs is not None:
                            name += f"_lr{lr:g}_clip{clip if clip else 'none'}"
                        c["save"] = os.path.join(save_dir, name + ".npz")
                    cfgs.append(c)
    return cfgs


def _collect(results):
    records, curves, failed = [], [], []
    for r in results:
        if isinstance(r[1], str):
            failed.append(r)
        else:
            records.append(r[0])
            curves.append(r[1])
    return records, curves, failed


def cmd_experiment(args):
    task = args.command if args.command != "sweep" else args.task
    base = _run_configs(args, task)
    t0 = time.perf_counter()
    if args.resume:
        try:
            ck = load_checkpoint(args.resume)
        except (OSError, ValueError) as e:
            raise SystemExit(f"tasks.py: error: --resume: {e}") from None
        c = ck["config"]
        if c.get("task") != task:
            raise SystemExit(f"tasks.py: error: --resume {args.resume} is a checkpoint of "
                             f"task {c.get('task')!r}, not {task!r}")
        for k in ("lr", "momentum", "clip", "batch", "hidden", "seq_len"):
            if k in c and not (k == "seq_len" and task in ("mnist", "digits")):
                base[k] = c[k]
        base["permuted"] = c.get("permuted", False) if task in ("mnist", "digits") else None
        cfgs = [dict(base, scheme=c["scheme"], seed=c["seed"], resume=args.resume)]
        if args.save:
            cfgs[0]["save"] = args.save if args.save.endswith(".npz") else \
                os.path.join(args.save, os.path.basename(args.resume))
        print(f"resuming {run_label(cfgs[0])} from step {ck['step']} of {args.resume}",
              flush=True)
    elif args.command == "sweep":
        seeds = list(range(args.seed, args.seed + (args.seeds or SWEEP_DEFAULTS["seeds"])))
        base["steps"] = args.steps or SWEEP_DEFAULTS["steps"]
        base["seq_len"] = args.seq_len or SWEEP_DEFAULTS["seq_len"]
        cfgs = _expand(base, args.schemes, seeds, args.lrs or list(SWEEP_DEFAULTS["lrs"]),
                       args.clips or list(SWEEP_DEFAULTS["clips"]), save_dir=args.save)
    else:
        seeds = list(range(args.seed, args.seed + (args.seeds or
                                                   TASK_DEFAULTS[task]["seeds"])))
        cfgs = _expand(base, args.schemes, seeds, save_dir=args.save)
    if task == "mnist":                              # say what is missing before any run
        try:
            load_mnist(base["data"])
        except (OSError, ValueError) as e:
            raise SystemExit(f"tasks.py: error: {e}") from None
    plot = None
    if args.plot is not None:
        plot = args.plot or (os.path.join(args.out, f"{args.command}.png") if args.out
                             else f"{args.command}.png")
    news = [args.out, plot if not (args.out and plot and plot.startswith(args.out)) else None]
    if not args.resume:
        news += [c.get("save") for c in cfgs]
    _check_new_paths(news, args.force)
    try:                                            # fail now, not after the runs
        if plot:
            _pyplot()
        if task == "digits":
            load_digits_data(np.random.default_rng(0))
    except ImportError as e:
        raise SystemExit(f"tasks.py: error: {e}") from None
    for c in cfgs:
        if c.get("save"):
            os.makedirs(os.path.dirname(os.path.abspath(c["save"])), exist_ok=True)
    c0 = cfgs[0]
    what = (f"{task}: T={c0['seq_len']}" if task in ("adding", "multiply") else
            f"{task}{' permuted' if c0.get('permuted') else ''}: epochs={c0['epochs']}")
    print(f"{what}, hidden={c0['hidden']}, batch={c0['batch']}, "
          f"{'steps=' + str(c0['steps']) + ', ' if c0.get('steps') else ''}"
          f"lr={c0['lr'] if args.command != 'sweep' else 'grid'}, momentum={c0['momentum']}, "
          f"clip={c0['clip'] if args.command != 'sweep' else 'grid'}; "
          f"{len(cfgs)} run(s) on {min(args.jobs, len(cfgs))} process(es)", flush=True)
    progress = Progress(every=args.progress_every)
    results = run_many(cfgs, jobs=args.jobs, threads=args.threads, progress=progress)
    records, curves, failed = _collect(results)
    wall = time.perf_counter() - t0
    regression = task in ("adding", "multiply")
    if records:
        print()
        print(results_table(records, regression))
    if args.command == "sweep" and records:
        text, fracs = sweep_table(records, sorted(set(r["lr"] for r in records)),
                                  sorted(set(r["clip"] for r in records),
                                         key=lambda c: math.inf if c is None else c))
        print()
        print(text)
    print(f"\nwall time {_fmt_time(wall)} ({wall:.0f} s)"
          + (f"; {len(failed)} run(s) failed" if failed else ""))
    options = {k: v for k, v in vars(args).items() if k != "func"}
    meta = {"command": args.command, "options": options, "task": task,
            "wall_seconds": wall, "failed": [{"run": run_label(c), "error": e}
                                             for c, e in failed]}
    if args.out:
        write_outputs(args.out, records, curves, meta)
        print(f"wrote {os.path.join(args.out, 'curves.csv')} and "
              f"{os.path.join(args.out, 'summary.json')}")
    if plot and records:
        title = f"{task}, " + (f"T={records[0]['seq_len']}, " if regression else "") + \
            f"hidden {records[0]['hidden']}, batch {records[0]['batch']}"
        if args.command == "sweep":
            plot_sweep(plot, fracs, sorted(set(r["lr"] for r in records)),
                       sorted(set(r["clip"] for r in records),
                              key=lambda c: math.inf if c is None else c),
                       title + f", {records[0]['steps']} steps: fraction solved")
        else:
            plot_curves(plot, records, curves, title + f", lr {records[0]['lr']:g}, "
                        f"clip {records[0]['clip']}, momentum {records[0]['momentum']:g}")
        print(f"wrote {plot}")
    return 1 if failed and not records else 0


def _add_experiment_commands(sub):
    helps = {
        "adding": "the adding problem: np-RNN against IRNN, i-RNN and a tanh RNN",
        "multiply": "the multiplication problem (target = product of the marked values)",
        "mnist": "pixel MNIST (784 steps) from files you already have; nothing downloaded",
        "digits": "scikit-learn's bundled 8x8 digits as 64-step pixel sequences",
        "sweep": "fraction of runs that solve adding/multiply over a grid of lr x clip",
    }
    for name, text in helps.items():
        d = TASK_DEFAULTS.get(name, TASK_DEFAULTS["adding"])
        p = sub.add_parser(name, help=text, description=text + ". Every scheme is trained "
                           "by SGD with BPTT on the same data stream; the runs go in "
                           "parallel worker processes (--jobs), one BLAS thread each.")
        if name == "sweep":
            p.add_argument("task", choices=("adding", "multiply"), help="the task to sweep")
            p.add_argument("--lrs", type=_float_list(_pos_float), metavar="LR,LR,...",
                           help="learning rates of the grid (default "
                           + ",".join(f"{v:g}" for v in SWEEP_DEFAULTS["lrs"]) + ")")
            p.add_argument("--clips", type=_float_list(_clip_arg), metavar="C,C,...",
                           help="clipping thresholds of the grid, 'none' for no clipping "
                           "(default " + ",".join(f"{v:g}" for v in SWEEP_DEFAULTS["clips"])
                           + ")")
        regression = name in ("adding", "multiply", "sweep")
        if regression:
            p.add_argument("--seq-len", type=_positive_int, metavar="T",
                           help="sequence length T (default "
                           f"{SWEEP_DEFAULTS['seq_len'] if name == 'sweep' else d['seq_len']})")
            p.add_argument("--steps", type=_positive_int, help="training steps (default "
                           f"{SWEEP_DEFAULTS['steps'] if name == 'sweep' else d['steps']})")
        else:
            p.add_argument("--epochs", type=_positive_int,
                           help=f"passes over the training set (default {d['epochs']})")
            p.add_argument("--train-size", type=_positive_int,
                           help="use only the first N training images (default all)")
        if name == "mnist":
            p.add_argument("--data", default=".", metavar="PATH",
                           help="mnist.npz, or a folder with mnist.npz or the four IDX files "
                           "(raw or .gz); default: the current folder")
        if name in ("mnist", "digits"):
            p.add_argument("--permuted", action="store_true",
                           help="read the pixels in a fixed random order (permutation seed 0)")
        p.add_argument("--hidden", type=_positive_int, default=100,
                       help="hidden units (default 100)")
        p.add_argument("--schemes", type=_schemes_arg, default=["np", "irnn", "i-rnn", "tanh"],
                       help="comma-separated schemes from nprnn_ref.SCHEMES "
                       f"({', '.join(nr.SCHEMES)}); default np,irnn,i-rnn,tanh")
        p.add_argument("--batch", type=_positive_int, default=16,
                       help="minibatch size (default 16)")
        if name != "sweep":
            p.add_argument("--lr", type=_pos_float, help=f"learning rate (default {d['lr']:g})")
            p.add_argument("--clip", type=_clip_arg, default=_CLIP_DEFAULT,
                           help="gradient clipping threshold on the global norm, 'none' to "
                           f"turn it off (default {d['clip']:g})")
        else:
            p.set_defaults(lr=None, clip=_CLIP_DEFAULT)
        p.add_argument("--momentum", type=_nonneg_float,
                       help=f"SGD momentum (default {d['momentum']:g})")
        p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
        p.add_argument("--seeds", type=_positive_int,
                       help="number of seeds: --seed, --seed+1, ... (default "
                       f"{SWEEP_DEFAULTS['seeds'] if name == 'sweep' else d['seeds']})")
        p.add_argument("--eval-every", type=_positive_int, metavar="K",
                       help="evaluate on the test set every K steps (default "
                       f"{d['eval_every'] or 'one epoch'})")
        p.add_argument("--test-size", type=_positive_int, metavar="N",
                       help="test sequences (default "
                       f"{d['test_size'] or 'the whole test split'})")
        p.add_argument("--target-mse", type=_pos_float, default=0.01,
                       help="a run has solved the task when its test MSE falls below this "
                       "(default 0.01)")
        p.add_argument("--out", metavar="DIR",
                       help="write curves.csv and summary.json there (never overwritten "
                       "without --force)")
        p.add_argument("--force", action="store_true",
                       help="allow overwriting --out, --plot and --save files")
        p.add_argument("--plot", nargs="?", const="", metavar="PNG",
                       help="write a PNG (test metric against step, or the sweep's heat "
                       "map; default path OUT/<command>.png or ./<command>.png); needs "
                       "matplotlib")
        p.add_argument("--save", metavar="DIR",
                       help="write each run's checkpoint (.npz) there at every evaluation")
        p.add_argument("--resume", metavar="CKPT",
                       help="continue the run of this checkpoint to --steps/--epochs "
                       "(its scheme, seed, lr, momentum, clip, batch, hidden, T are used)")
        p.add_argument("--jobs", type=_positive_int, default=2,
                       help="worker processes running the runs in parallel (default 2)")
        p.add_argument("--threads", type=_positive_int, default=1,
                       help="BLAS threads per process, set before numpy is imported "
                       "(default 1)")
        p.add_argument("--progress-every", type=_pos_float, default=30.0, metavar="S",
                       help="when the output is not a terminal, print each run's progress "
                       "every S seconds (default 30)")
        p.set_defaults(func=cmd_experiment)


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tasks.py", description="nprnn-ref: experiments, benchmarks and exports for "
        "the np-RNN reference (Talathi and Vartak, arXiv 1511.03771).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("bench", help="time loss_and_grads against its matrix-product floor "
                       "(and PyTorch when installed)",
                       description="Median time of loss_and_grads (relu, mse, last, float64) "
                       "and of its floor (the 2T recurrent products plus the input "
                       "projection, dW_hx and dW_hh products), interleaved in one run, and "
                       "their ratio; with torch importable, also torch.nn.RNN + Linear "
                       "forward and backward on the same data.")
    b.add_argument("--shape", type=_parse_shape, action="append", metavar="T,B,H,D",
                   help="a shape to time (repeatable); default: "
                   + " ".join(",".join(map(str, s)) for s in DEFAULT_BENCH_SHAPES))
    b.add_argument("--threads", type=_positive_int, default=1,
                   help="BLAS (and torch) threads, set before numpy is imported (default 1)")
    b.add_argument("--repeats", type=_positive_int, default=21,
                   help="timed repeats per shape (default 21)")
    b.add_argument("--seed", type=int, default=0, help="seed of the data (default 0)")
    b.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    b.set_defaults(func=cmd_bench)
    _add_experiment_commands(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
