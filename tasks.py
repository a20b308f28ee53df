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
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
