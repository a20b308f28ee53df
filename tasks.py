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
# Analysis commands: dynamics, gradflow, sensitivity, spectrum (the paper's argument)
# ---------------------------------------------------------------------------------------

ANALYSIS_SCHEMES = ("np", "irnn", "i-rnn", "tanh")
FIGURES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
CHECKPOINT_FORMAT = "nprnn-ref-checkpoint/1"
MATPLOTLIB_MISSING = ("tasks.py: --plot needs matplotlib, which is not installed; install it "
                      "with `pip install matplotlib`, or run without --plot for the tables")


def _analysis_adding_batch(n: int, T: int, rng: np.random.Generator):
    """Adding-problem batch for the analysis commands (same format as the training data):
    x (T, n, 2), channel 0 uniform in [0, 1], channel 1 a marker that is 1 at exactly two
    steps, one in each half of the sequence; target (n, 1) = the sum of the two marked
    values. (Stand-in for adding_problem; T >= 2.)"""
    if T < 2:
        raise ValueError(f"the adding problem needs seq_len >= 2, got {T}")
    x = np.zeros((T, n, 2))
    x[:, :, 0] = rng.uniform(0.0, 1.0, size=(T, n))
    half = T // 2
    first = rng.integers(0, half, size=n)                  # a step in the first half
    second = rng.integers(half, T, size=n)                 # a step in the second half
    rows = np.arange(n)
    x[first, rows, 1] = 1.0
    x[second, rows, 1] = 1.0
    target = (x[first, rows, 0] + x[second, rows, 0])[:, None]   # (n, 1)
    return x, target


def _read_checkpoint_params(path: str):
    """Minimal reader of the training checkpoints (format "nprnn-ref-checkpoint/1", an
    .npz read with allow_pickle=False): returns dict(params, config, step)."""
    import json
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:                                 # not an npz, or pickled arrays
        raise ValueError(f"checkpoint {path!r} is not a readable .npz without pickle: {e}")
    fmt = str(data["format"]) if "format" in data else None
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path!r} must have format {CHECKPOINT_FORMAT!r}, "
                         f"got {fmt!r}")
    missing = [k for k in nr.PARAM_NAMES + ("config", "step") if k not in data]
    if missing:
        raise ValueError(f"checkpoint {path!r} is missing {', '.join(missing)}")
    try:
        config = json.loads(str(data["config"]))
    except ValueError as e:
        raise ValueError(f"checkpoint {path!r}: config is not valid JSON: {e}")
    need = [k for k in ("task", "scheme", "nonlinearity", "seq_len", "hidden")
            if not isinstance(config, dict) or k not in config]
    if need:
        raise ValueError(f"checkpoint {path!r}: config is missing {', '.join(need)}")
    params = {k: data[k] for k in nr.PARAM_NAMES}
    try:
        nr.check_params(params)
    except TypeError as e:
        raise ValueError(f"checkpoint {path!r}: {e}")
    return {"params": params, "config": config, "step": int(data["step"])}


def _load_trained(path: str):
    """(params, config, step) of a checkpoint, through load_checkpoint when this module
    has it, else the minimal reader above."""
    loader = globals().get("load_checkpoint", _read_checkpoint_params)
    ck = loader(path)
    params, config = ck["params"], ck["config"]
    H, D, O, _ = nr.check_params(params)
    if config.get("task") not in ("adding", "multiplication") or D != 2 or O != 1:
        raise ValueError(f"--trained needs a checkpoint of the adding or multiplication "
                         f"task (D=2 inputs, O=1 output), got task {config.get('task')!r} "
                         f"with D={D}, O={O}")
    if config.get("nonlinearity") not in nr.NONLINEARITIES:
        raise ValueError(f"checkpoint config nonlinearity must be one of "
                         f"{nr.NONLINEARITIES}, got {config.get('nonlinearity')!r}")
    return params, config, int(ck["step"])


def _figure_class():
    """matplotlib's Figure (no pyplot, no global backend state), or None if missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _save(fig, path, out):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}", file=out)


def _report_steps(T: int):
    """A few steps t to tabulate, always 1 and T."""
    return sorted({1, max(1, T // 8), max(1, T // 4), max(1, T // 2),
                   max(1, 3 * T // 4), T})


def _fmt(v: float) -> str:
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


def dynamics_report(hidden=100, starts=200, matrices=20, draws=1000, seed=0,
                    out=None) -> dict:
    """The four 2-node cases, and np_init at N = hidden under the same zero-input map."""
    out = sys.stdout if out is None else out
    cases = nr.two_node_cases()
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

    N = hidden
    rng = np.random.default_rng(seed)
    steps = (1, 5, 10, 20, 50, 100, 200)
    tmax = steps[-1]
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
    relu = np.array(relu)                                   # (matrices, tmax + 1)
    linear = np.array(linear)
    Hc = rng.uniform(0.0, 1.0, size=(starts, N))            # IRNN, W = I, measured too
    irnn = np.median(np.linalg.norm(nr.autonomous_trajectories(np.eye(N), Hc, tmax), axis=2)
                     / np.linalg.norm(Hc, axis=1), axis=1)
    print(f"\nnp_init at N = {N} under the same map: median over {starts} non-negative "
          f"starts (uniform in [0, 1]^N) of |h_t| / |h_0|,\nper matrix; median and range "
          f"over {matrices} np_init draws (seed {seed}):", file=out)
    print(f"{'t':>5} {'np ReLU median':>15} {'np ReLU min':>12} {'np ReLU max':>12} "
          f"{'np linear':>10} {'IRNN (W=I)':>11}", file=out)
    for t in steps:
        r = relu[:, t]
        print(f"{t:>5} {np.median(r):15.3g} {r.min():12.3g} {r.max():12.3g} "
              f"{np.median(linear[:, t]):10.3g} {irnn[t]:11.3g}", file=out)
    print("np linear: the same W without ReLU (h_{t+1} = W h_t) keeps the component along "
          "the top eigenvector; with ReLU the mixed-sign top eigenvector is clipped away.",
          file=out)

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
    return {"cases": cases, "relu": relu, "linear": linear, "irnn": irnn,
            "fractions": fractions, "N": N}


def plot_dynamics(result, path, Figure, out=None):
    out = sys.stdout if out is None else out
    fig = Figure(figsize=(10.5, 6.7), layout="constrained")
    axes = fig.subplots(2, 3)
    g = np.linspace(0.0, 2.0, 11)
    GX, GY = np.meshgrid(g, g)
    P = np.stack([GX.ravel(), GY.ravel()], axis=1)          # (225, 2) grid of states
    starts = np.array([[2.0, 0.2], [2.0, 1.0], [1.6, 2.0], [0.8, 2.0], [0.2, 2.0],
                       [1.0, 0.1], [0.3, 0.6], [1.2, 1.4], [0.1, 1.2]]) * 0.9
    for ax, c in zip(axes.ravel()[:4], result["cases"]):
        step = np.maximum(P @ c.W.T, 0.0) - P                # displacement h_{t+1} - h_t
        ax.quiver(P[:, 0], P[:, 1], step[:, 0], step[:, 1], color="0.7",
                  angles="xy", scale_units="xy", scale=2.5, width=0.004)
        traj = nr.autonomous_trajectories(c.W, starts, 40)
        for k in range(starts.shape[0]):
            ax.plot(traj[:, k, 0], traj[:, k, 1], "-o", ms=2.5, lw=1, color="C0",
                    label="trajectory h_0, h_1, ..." if k == 0 else None)
        ax.plot(starts[:, 0], starts[:, 1], "s", ms=4, color="C3", label="start h_0")
        v = c.top_eigenvector
        if c.key != "b":                                    # for W = I every vector is one
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
    ax = axes[1, 1]
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
    ax = axes[1, 2]
    ns = list(result["fractions"])
    ax.bar([str(n) for n in ns], [result["fractions"][n] for n in ns], color="C4")
    for i, n in enumerate(ns):
        ax.text(i, result["fractions"][n] + 0.02, f"{result['fractions'][n]:.2f}",
                ha="center", fontsize=9)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("N")
    ax.set_ylabel("fraction of draws")
    ax.set_title("np_init: top eigenvector has mixed signs", fontsize=10)
    fig.suptitle("h_{t+1} = max(0, W h_t), zero input: the four 2-node cases (a)-(d) and "
                 "np_init", fontsize=11)
    _save(fig, path, out)


# ---- gradflow and sensitivity -----------------------------------------------------------

def _analysis_models(schemes, hidden, seed, trained):
    """[(label, params, nonlinearity)], and (task, seq_len) of the checkpoint or None.

    Without a checkpoint: a fresh initialisation of every scheme (weights seeded by
    (seed, 1), the same for every scheme). With one: a fresh initialisation of its scheme
    at its size (not the run's own initial weights), then the trained weights.
    """
    if trained is None:
        return [(s, nr.init_params(2, hidden, 1, s, np.random.default_rng((seed, 1))),
                 nr.SCHEMES[s].nonlinearity) for s in schemes], None
    params, config, step = _load_trained(trained)
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
    """One adding-problem batch shared by every model (the data rng is seeded by seed):
    x (T, B, 2), target (B, 1); a multiplication checkpoint gets the product target."""
    task, T = trained_info if trained_info else ("adding", 400)
    T = seq_len or T
    x, target = _analysis_adding_batch(batch, T, np.random.default_rng(seed))
    if task == "multiplication":
        marked = np.where(x[:, :, 1] == 1.0, x[:, :, 0], 1.0)          # (T, B)
        target = marked.prod(axis=0)[:, None]                           # (B, 1)
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
        print(f"{label:<{w}} " + " ".join(_fmt(c[t - 1]) for t in steps)
              + f" {_fmt(ratios[label])} {per:9.4g}", file=out)
    print("per step: the geometric-mean factor per step, (t=1 / t=T)^(1/(T-1)); "
          "0 means underflow to 0.0 in float64", file=out)
    return ratios


def gradflow_report(schemes=ANALYSIS_SCHEMES, hidden=100, seq_len=None, batch=32, seed=0,
                    trained=None, out=None) -> dict:
    out = sys.stdout if out is None else out
    models, info = _analysis_models(schemes, hidden, seed, trained)
    x, target = _analysis_data(models, info, seq_len, batch, seed)
    curves = {}
    for label, params, nl in models:
        curves[label] = nr.gradient_norms_through_time(params, x, target, loss="mse",
                                                       output="last", nonlinearity=nl)
    T, B = x.shape[:2]
    _curve_table(f"|dL/dh_t| (Frobenius norm over the batch of {B}), adding problem "
                 f"T = {T}, MSE at the last step, seed {seed}:", curves,
                 "t=1 / t=T", out)
    return curves


def sensitivity_report(schemes=ANALYSIS_SCHEMES, hidden=100, seq_len=None, batch=32, seed=0,
                       trained=None, out=None) -> dict:
    out = sys.stdout if out is None else out
    models, info = _analysis_models(schemes, hidden, seed, trained)
    x, _ = _analysis_data(models, info, seq_len, batch, seed)
    curves = {}
    for label, params, nl in models:
        curves[label] = nr.input_sensitivity(params, x, nonlinearity=nl)[1]
    T, B = x.shape[:2]
    _curve_table(f"||d h_T / d x_t||_F, mean over {B} adding-problem sequences, T = {T}, "
                 f"seed {seed}:", curves, "t=1 / t=T", out)
    return curves


def plot_curves(curves, path, Figure, ylabel, title, out=None):
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


# ---- spectrum ---------------------------------------------------------------------------

def spectrum_report(schemes=ANALYSIS_SCHEMES, hidden=100, seed=0, trained=None,
                    out=None) -> dict:
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
        end = nr.autonomous_trajectories(W, h0, 200)[-1]
        decay = np.median(np.linalg.norm(end, axis=1) / np.linalg.norm(h0, axis=1))
        print(f"{label:<{w}} {m.size:>4} {str(s.symmetric):>9} {s.radius:9.4g} "
              f"{s.norm:9.4g} {second:9.4g} {np.median(m):10.4g} {m[-1]:9.4g} "
              f"{int((m > 0.9).sum()):>8} {int((m > 1.0 + 1e-12).sum()):>6} "
              f"{_fmt(decay):>9}", file=out)
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


# ---- command wiring ---------------------------------------------------------------------

def _parse_schemes(text: str):
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in nr.SCHEMES]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"--schemes must be a comma-separated list of {', '.join(nr.SCHEMES)}, "
            f"got {text!r}")
    return names


def _run_analysis(args, name, report, plot):
    Figure = None
    if args.plot:
        Figure = _figure_class()
        if Figure is None:
            print(MATPLOTLIB_MISSING, file=sys.stderr)
            return 2
    try:
        result = report()
    except ValueError as e:
        print(f"tasks.py {name}: error: {e}", file=sys.stderr)
        return 2
    if Figure is not None:
        plot(result, args.out_fig or os.path.join(FIGURES_DIR, f"{name}.png"), Figure)
    return 0


def cmd_dynamics(args):
    return _run_analysis(
        args, "dynamics",
        lambda: dynamics_report(args.hidden, args.starts, args.matrices, args.draws,
                                args.seed),
        plot_dynamics)


def cmd_gradflow(args):
    return _run_analysis(
        args, "gradflow",
        lambda: gradflow_report(args.schemes, args.hidden, args.seq_len, args.batch,
                                args.seed, args.trained),
        lambda r, path, F: plot_curves(
            r, path, F, "|dL/dh_t| (Frobenius, over the batch)",
            f"gradient flowing back to h_t, adding problem, T = {len(next(iter(r.values())))}"
            " (MSE at t = T)"))


def cmd_sensitivity(args):
    return _run_analysis(
        args, "sensitivity",
        lambda: sensitivity_report(args.schemes, args.hidden, args.seq_len, args.batch,
                                   args.seed, args.trained),
        lambda r, path, F: plot_curves(
            r, path, F, "mean ||d h_T / d x_t||_F",
            f"sensitivity of the last state to the input at step t, "
            f"T = {len(next(iter(r.values())))}"))


def cmd_spectrum(args):
    return _run_analysis(
        args, "spectrum",
        lambda: spectrum_report(args.schemes, args.hidden, args.seed, args.trained),
        plot_spectrum)


def _add_analysis_commands(sub):
    def common(p, name, seq=True, schemes=True, trained=True):
        p.add_argument("--hidden", type=_positive_int, default=100,
                       help="hidden units N (default 100)")
        if seq:
            p.add_argument("--seq-len", type=_positive_int, default=None,
                           help="sequence length T of the adding problem (default 400, or "
                           "the checkpoint's with --trained)")
            p.add_argument("--batch", type=_positive_int, default=32,
                           help="adding-problem sequences (default 32)")
        if schemes:
            p.add_argument("--schemes", type=_parse_schemes, default=ANALYSIS_SCHEMES,
                           help="comma-separated initialisations (default "
                           f"{','.join(ANALYSIS_SCHEMES)}; any of {', '.join(nr.SCHEMES)})")
        if trained:
            p.add_argument("--trained", metavar="CHECKPOINT", default=None,
                           help="a training checkpoint (.npz): compare its weights with a "
                           "fresh initialisation of its scheme (--schemes, --hidden ignored)")
        p.add_argument("--seed", type=int, default=0, help="seed of data and weights "
                       "(default 0)")
        p.add_argument("--plot", action="store_true",
                       help=f"also draw the figure (needs matplotlib), default "
                       f"figures/{name}.png")
        p.add_argument("--out-fig", metavar="PATH", default=None,
                       help=f"where --plot writes the PNG (default figures/{name}.png)")
        p.add_argument("--threads", type=_positive_int, default=1,
                       help="BLAS threads, set before numpy is imported (default 1)")

    d = sub.add_parser("dynamics", help="the 2-node phase portraits (cases a-d) and np_init "
                       "at N = --hidden under the zero-input ReLU map",
                       description="Tables of the paper's four 2-node cases of "
                       "h_{t+1} = max(0, W h_t) and of what an np_init matrix does under the "
                       "same map (measured decay beside IRNN), and the fraction of np_init "
                       "draws whose top eigenvector has mixed signs.")
    common(d, "dynamics", seq=False, schemes=False, trained=False)
    d.add_argument("--starts", type=_positive_int, default=200,
                   help="non-negative random starting states per matrix (default 200)")
    d.add_argument("--matrices", type=_positive_int, default=20,
                   help="np_init draws for the decay table (default 20)")
    d.add_argument("--draws", type=_positive_int, default=1000,
                   help="np_init draws per N for the mixed-sign fraction (default 1000)")
    d.set_defaults(func=cmd_dynamics)

    g = sub.add_parser("gradflow", help="|dL/dh_t| against t per initialisation (adding "
                       "problem)", description="The norm of the loss gradient reaching each "
                       "hidden state h_t, at initialisation (or for a trained checkpoint), "
                       "on one adding-problem batch: vanishing and exploding gradients.")
    common(g, "gradflow")
    g.set_defaults(func=cmd_gradflow)

    s = sub.add_parser("sensitivity", help="||d h_T / d x_t|| against t per initialisation",
                       description="The Frobenius norm of the Jacobian of the last hidden "
                       "state with respect to the input at step t, averaged over an "
                       "adding-problem batch, computed with H backward passes.")
    common(s, "sensitivity")
    s.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("spectrum", help="eigenvalues of W_hh per initialisation (or before "
                       "and after training)", description="Spectral radius, norm and "
                       "eigenvalue distribution of W_hh for each initialisation, or for a "
                       "checkpoint beside a fresh initialisation of its scheme.")
    common(p, "spectrum", seq=False)
    p.set_defaults(func=cmd_spectrum)


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
    _add_analysis_commands(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
