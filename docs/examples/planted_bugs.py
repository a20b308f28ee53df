"""Planted bugs: common mistakes of RNN backends, each one a backend the kit must catch.

Every function here has the contract of ``nprnn_ref.fixture_outputs``: it takes one fixture
case (a dict of NumPy arrays: x, h0, target, the five parameters W_hx, W_hh, b_h, W_yh,
b_y, and the 0-d strings nonlinearity, loss_kind, output) and returns a dict of outputs
(h, y, loss and the seven gradients). ``correct`` is right; every other function makes
one mistake, named in its docstring with the way the verification kit shows it. They are
built on ``_rnn`` below, a short per-step NumPy implementation of the model with a switch
for each mistake, so that each bug is the mistake alone and nothing else.

Run one against the golden fixtures, and read the report's "likely causes":

    python tasks.py export-fixtures fixtures
    python tasks.py verify-fixtures fixtures --against docs/examples/planted_bugs.py:sum_loss

or draw cases with hypothesis until one fails, shrunk to the smallest:

    python tasks.py verify --against docs/examples/planted_bugs.py:relu_grad_one

(``nprnn-ref`` runs the same commands once the package is installed.) The last three
functions make the check itself misbehave (sys.exit, os._exit, a hang): the kit runs a
backend in a separate process, so they fail their cases and the run goes on.
"""
import os
import sys
import time

import numpy as np

import nprnn_ref as nr

# The functions here, in the order of the docstrings above; `correct` is not a bug.
BUGS = ("sum_loss", "zero_grad_h0", "transposed_w_hh", "relu_grad_one", "relu_grad_half",
        "truncated_bptt", "first_step_dropped", "h0_ignored", "bias_twice",
        "grad_b_h_doubled", "float32_upcast", "tf32_matmuls", "python_float_loss",
        "tensor_outputs", "calls_sys_exit", "calls_os_exit", "hangs")


# --- the model, one step at a time, with a switch for each mistake ----------------------

def _rnn(case, *, transposed_w_hh=False, relu_grad_at_zero=0.0, bptt_steps=None,
         first_step=0, ignore_h0=False, bias_copies=1, reduction="mean",
         compute_dtype=None):
    """h_t = f(W_hx x_t + W_hh h_{t-1} + b_h), y = W_yh h + b_y, the loss, and BPTT, in
    the case's dtype (or ``compute_dtype``). With the default switches it is the model of
    the fixtures; each switch plants one mistake:

    transposed_w_hh   use W_hh^T where W_hh belongs (and differentiate that model)
    relu_grad_at_zero the value taken for ReLU'(0) (the convention is 0)
    bptt_steps        back-propagate each read-out's gradient through this many steps only
    first_step        start the time loop at this step (1: `range(1, T)`, an off-by-one)
    ignore_h0         start from zeros instead of h0
    bias_copies       how many times b_h is added (2: torch's two biases both set to b_h)
    reduction         "mean" (the convention) or "sum" of the loss's terms
    compute_dtype     compute (and return) in this dtype instead of the case's
    """
    dt = np.dtype(compute_dtype or np.asarray(case["x"]).dtype)
    x, h0 = np.asarray(case["x"], dt), np.asarray(case["h0"], dt)
    W_hx, W_hh, b_h, W_yh, b_y = (np.asarray(case[k], dt) for k in nr.PARAM_NAMES)
    nonlinearity, loss_kind, output = (str(case[k]) for k in
                                       ("nonlinearity", "loss_kind", "output"))
    target = np.asarray(case["target"])
    T, B, _ = x.shape
    H = W_hh.shape[0]
    W = W_hh.T if transposed_w_hh else W_hh          # the matrix the model applies
    bias = bias_copies * b_h                         # torch adds bias_ih and bias_hh

    # Forward: the states h_1..h_T and each step's derivative f'(z_t).
    state = np.zeros((B, H), dt) if ignore_h0 else h0
    h = np.zeros((T, B, H), dt)
    h_prev = np.zeros((T, B, H), dt)                 # h_{t-1} as each step saw it
    fprime = np.zeros((T, B, H), dt)                 # 0 where a step was never run
    for t in range(first_step, T):
        h_prev[t] = state
        z = x[t] @ W_hx.T + state @ W.T + bias
        if nonlinearity == "relu":
            state = np.maximum(z, dt.type(0))
            fprime[t] = (z > 0) + dt.type(relu_grad_at_zero) * (z == 0)
        else:
            state = np.tanh(z)
            fprime[t] = 1 - state * state
        h[t] = state

    # Read-out and loss: the mean over every element of y (mse) or over every
    # (step, sequence) row (xent), as torch's MSELoss and CrossEntropyLoss.
    read = h[-1] if output == "last" else h          # (B, H) or (T, B, H)
    y = read @ W_yh.T + b_y
    rows = y.reshape(-1, y.shape[-1])                # one row per (step, sequence)
    if loss_kind == "mse":
        diff = y - target.astype(dt)
        n = diff.size if reduction == "mean" else 1
        loss = np.sum(diff * diff) / n
        dy = 2 * diff / n
    else:
        labels = target.reshape(-1)
        m = rows.max(axis=1, keepdims=True)
        e = np.exp(rows - m)
        p = e / e.sum(axis=1, keepdims=True)         # softmax
        picked = np.arange(rows.shape[0]), labels
        n = rows.shape[0] if reduction == "mean" else 1
        loss = np.sum(np.log(e.sum(axis=1)) + m[:, 0] - rows[picked]) / n
        onehot = np.zeros_like(p)
        onehot[picked] = 1
        dy = ((p - onehot) / n).reshape(y.shape)
    dyf = dy.reshape(-1, dy.shape[-1])
    grads = {"grad_W_yh": dyf.T @ read.reshape(-1, H), "grad_b_y": dyf.sum(axis=0)}

    # BPTT: dh_out[t] is the read-out's gradient at step t (only t = T - 1 for "last").
    dh_out = np.zeros((T, B, H), dt)
    if output == "last":
        dh_out[-1] = dy @ W_yh
    else:
        dh_out[:] = dy @ W_yh
    dz = np.zeros((T, B, H), dt)                     # dloss / dz_t
    grad_h0 = np.zeros((B, H), dt)
    if bptt_steps is None:                           # the usual backward loop
        carry = np.zeros((B, H), dt)                 # dloss/dh_t through h_{t+1}
        for t in range(T - 1, -1, -1):
            dz[t] = (carry + dh_out[t]) * fprime[t]
            carry = dz[t] @ W
        grad_h0 = carry
    else:                                            # each read-out's gradient walks
        for s in range(T):                           # back bptt_steps steps, no more
            g = dh_out[s]
            for t in range(s, max(s - bptt_steps, -1), -1):
                dz[t] += g * fprime[t]
                g = (g * fprime[t]) @ W
            if s - bptt_steps < 0:                   # it reached h0
                grad_h0 += g
    if ignore_h0 or first_step > 0:                  # h0 is not used: no gradient
        grad_h0 = np.zeros((B, H), dt)
    grad_W = sum(dz[t].T @ h_prev[t] for t in range(T))
    grads.update({
        "grad_W_hx": sum(dz[t].T @ x[t] for t in range(T)),
        # The model applied W = W_hh^T, so dloss/dW_hh = (dloss/dW)^T.
        "grad_W_hh": grad_W.T if transposed_w_hh else grad_W,
        "grad_b_h": dz.sum(axis=(0, 1)),             # the gradient of either torch bias
        "grad_x": dz @ W_hx, "grad_h0": grad_h0})
    out = {"h": h, "y": y, "loss": np.asarray(loss, dt)}
    out.update(grads)
    return {k: np.asarray(v, dt) for k, v in out.items()}


# --- the correct backend -----------------------------------------------------------------

def correct(case):
    """No mistake: passes verify-fixtures and verify (the planted bugs below are this
    function with one thing changed)."""
    return _rnn(case)


# --- wrong numbers -----------------------------------------------------------------------

def sum_loss(case):
    """The loss is the sum of its terms where the mean was meant (torch's MSELoss and
    CrossEntropyLoss default to the mean; jnp.sum instead of jnp.mean). Shows as every
    tensor but h and y equal to the reference times the number of terms (the elements
    of y for mse, the (step, sequence) rows for xent): a constant factor that is a count.
    """
    return _rnn(case, reduction="sum")


def zero_grad_h0(case):
    """grad_h0 returned as zeros: the initial state created without requires_grad, or
    its gradient never copied back. Shows as grad_h0 all zero (relative error 1) in
    every case whose grad_h0 is not exactly 0, small scales included; every other tensor
    passes."""
    out = _rnn(case)
    out["grad_h0"] = np.zeros_like(out["grad_h0"])
    return out


def transposed_w_hh(case):
    """W_hh applied transposed in the forward pass (h_{t-1} @ W_hh where h_{t-1} @ W_hh^T
    was meant, i.e. W_hh^T h_{t-1}), a real backend bug (a row-major weight read as
    column-major), and that model differentiated correctly. With a symmetric W_hh (the
    np-RNN and IRNN schemes) the forward pass agrees and grad_W_hh comes out transposed;
    with a non-symmetric one (tanh, nrnn, grnn, ornn, nonsym and zeros cases) the states
    differ from the first step on (the second, when h0 is 0)."""
    return _rnn(case, transposed_w_hh=True)


def relu_grad_one(case):
    """ReLU'(0) = 1: the mask z >= 0 (torch.where(z >= 0, ...), a clamp's gradient taken
    as 1 at the kink). The convention is ReLU'(0) = 0 (mask z > 0, as torch.relu). Shows
    only where a pre-activation is exactly 0: the relu cases with zeros=True fail, all
    others pass."""
    return _rnn(case, relu_grad_at_zero=1.0)


def relu_grad_half(case):
    """ReLU'(0) = 1/2, what jax.grad of jnp.maximum(z, 0) gives (the gradient split
    between the two equal arguments). Shows as relu_grad_one: only the relu cases with
    exact-zero pre-activations fail."""
    return _rnn(case, relu_grad_at_zero=0.5)


def truncated_bptt(case):
    """Truncated BPTT: each read-out's gradient flows back only k = 2 steps (a hidden
    state detached, or a backward loop over a window). Shows as grad_x wrong at the early
    steps only (the last two steps pass), the weight gradients and grad_h0 wrong (zero,
    for output "last"), the forward pass right; cases with T <= 2 pass."""
    return _rnn(case, bptt_steps=2)


def first_step_dropped(case):
    """An off-by-one in the time loop: `for t in range(1, T)`, so h_1 stays 0 and x_1 and
    h0 are never used (grad_x[0] and grad_h0 come out zero). Shows as h wrong from the
    first step on, in every case."""
    return _rnn(case, first_step=1)


def h0_ignored(case):
    """h0 ignored: the recurrence starts from zeros whatever the case's h0 (an initial
    state argument never passed on). Shows as h wrong from the first step and grad_h0
    all zero; where h0 is 0 (h0=False) the forward pass agrees and only grad_h0 is wrong
    (an h0 of zeros still has a gradient), unless that gradient is exactly 0 too."""
    return _rnn(case, ignore_h0=True)


def bias_twice(case):
    """b_h counted twice: torch.nn.RNN's bias_ih_l0 and bias_hh_l0 both set to b_h (the
    convention: bias_ih_l0 + bias_hh_l0 = b_h). Shows as every case with a non-zero b_h
    failing from h on; the cases with b_h = 0 (zeros=True) pass."""
    return _rnn(case, bias_copies=2)


def grad_b_h_doubled(case):
    """grad_b_h twice the reference: the gradients of torch's two biases added (either
    one is grad_b_h). Shows as grad_b_h = 2 x expected, every other tensor passing."""
    out = _rnn(case)
    out["grad_b_h"] = out["grad_b_h"] * out["grad_b_h"].dtype.type(2)
    return out


# --- wrong arithmetic or types -----------------------------------------------------------

def float32_upcast(case):
    """float32 cases computed in float64 and returned as float64 (an upcast: the numbers
    are better than float32 arithmetic gives, and nothing of the float32 path is
    tested). Shows as status "dtype" for every tensor of every float32 case; the float64
    cases pass."""
    return _rnn(case, compute_dtype=np.float64)


def tf32_matmuls(case):
    """float32 with TF32 matrix products (cuDNN's default on Ampere and later GPUs:
    every matrix product operand rounded to a 10-bit mantissa), emulated by
    nprnn_ref.gpu_emulation_outputs. Shows as float32 cases failing the float32 tier by
    about 5-50x and passing --tier tf32; the float64 cases pass."""
    if np.asarray(case["x"]).dtype == np.float32:
        return nr.gpu_emulation_outputs(case)
    return _rnn(case)


def python_float_loss(case):
    """The loss returned as a Python float (loss.item()) instead of a 0-d array of the
    case's dtype. Shows as status "type" for loss in every case."""
    out = _rnn(case)
    out["loss"] = float(out["loss"])
    return out


class _TensorLike:
    """Stands for a torch.Tensor: converts with np.asarray, has .detach() and .numpy(),
    but is not a numpy.ndarray."""

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)

    def detach(self):
        return self

    def numpy(self):
        return self._a


def tensor_outputs(case):
    """Every output returned as a framework tensor (here a stand-in for torch.Tensor)
    instead of a NumPy array: .detach().cpu().numpy() forgotten. Shows as status "type"
    for every tensor, with the hint to call .detach().cpu().numpy()."""
    return {k: _TensorLike(v) for k, v in _rnn(case).items()}


# --- backends that break the check itself (the kit fails closed) ------------------------

def calls_sys_exit(case):
    """sys.exit(0) inside the function (a script's main() left in): raises SystemExit,
    which must not end the check with exit status 0. Shows as every case an error, "the
    function raised SystemExit"."""
    sys.exit(0)


def calls_os_exit(case):
    """os._exit(0) inside the function (or a crash, an abort): the process ends with no
    exception to catch. Shows as every case an error, "the backend's process ended"; each
    case starts a fresh process."""
    os._exit(0)


def hangs(case):
    """Never returns (a deadlock, a wait on a device, an endless loop). Shows as every
    case an error after --timeout seconds, "no answer within the timeout"."""
    time.sleep(3600)
