"""nprnn_ref: a pure-NumPy reference implementation of the np-RNN.

Talathi and Vartak, "Improving performance of recurrent neural network with ReLU
nonlinearity", arXiv 1511.03771 (ICLR 2016 workshop), and the recurrent networks it is
compared with: IRNN (Le, Jaitly and Hinton, arXiv 1504.00941), i-RNN and tanh RNNs.

The model (a simple RNN, "sRNN")::

    h_t = f(W_hx x_t + W_hh h_{t-1} + b_h)      f = relu or tanh
    y_t = W_yh h_t + b_y                         (logits for softmax cross-entropy)

Where to start reading
----------------------
1. ``forward_per_step``, ``backward_per_step`` and ``loss_and_grads_per_step``: the
   recurrence and back-propagation through time one step at a time, written from the
   equations in their docstrings (min-char-rnn's layout, BPTT carrying dh_next). Each
   section below starts with its per-step function.
2. ``forward``, ``backward`` and ``loss_and_grads``, next to them: the same maths
   vectorised, with the same arguments, results and errors (the tests check that the two
   paths agree to rounding). Everything outside the time loop is a few large matrix
   products: all input projections before the loop, all weight gradients after it.
3. ``init_params`` and ``np_init`` (the first section): the paper's initialisation, its
   Eq. 9; ``SCHEMES`` holds the networks it is compared with.
4. The analysis section: the paper's dynamical-systems argument, made runnable.

Conventions
-----------
- Time-major: x has shape (T, B, D), hidden states h have shape (T, B, H), h0 (B, H).
- Parameters are a dict of arrays named after the paper: W_hx (H, D), W_hh (H, H),
  b_h (H,), W_yh (O, H), b_y (O,). Batched code computes ``x @ W_hx.T``, the layout of
  PyTorch's ``weight_ih_l0`` / ``weight_hh_l0``.
- The nonlinearity is an argument ("relu" by default), not part of the parameters: a
  scheme's is ``nonlinearity_of(scheme)`` (= ``SCHEMES[scheme].nonlinearity``).
- "N(0, s^2)" means standard deviation s.
- float64 by default; float32 works too. Every float array passed to one call must share
  the parameters' dtype (a mismatch is a TypeError, never a silent cast) and every result
  has that dtype. float32 flushes subnormal states and BPTT terms to zero (FLOAT32_FLUSH).
- ReLU'(0) = 0: the ReLU mask is ``pre-activation > 0``, as in PyTorch and TensorFlow.
- Losses equal PyTorch's defaults: "mse" is the mean over all elements of
  (y - target)^2 (``torch.nn.MSELoss()``); "xent" is the mean over all (step, sequence)
  pairs of the softmax cross-entropy of logits y against integer labels
  (``torch.nn.CrossEntropyLoss()``).
- output="last" reads out only h_T (y has shape (B, O)); output="all" reads out every
  step (y has shape (T, B, O)).
- Functions are pure: nothing passed in is modified, randomness comes only from the numpy
  Generator ``rng`` passed in.
- Errors: bad input raises ValueError or TypeError naming the argument, the expected and
  the actual value; nothing is broadcast, cast or converted. Arrays must be plain
  ndarrays (or memmaps) in the machine's byte order: np.matrix, masked arrays and other
  subclasses are refused. NaN or inf in an argument, and finite arguments whose results
  overflow, raise NonFiniteError (a ValueError) saying which argument, or which result
  and at which step. NumPy's RuntimeWarnings are silenced inside the computations.

Sections, in reading order: initialisers, forward, backward (BPTT), losses, optimiser,
analysis (the paper's dynamical-systems argument), validation (the argument checks every
public function runs first, and the checks of its results), backend bridge (PyTorch
weight names, the fixture file format, compare), and the verification kit (cases, tiers,
the backend runner, fixtures, differential testing, diagnoses, reports and the
``nprnn-ref`` command line: everything a team checking its own backend needs).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
import traceback
import zipfile
import zlib
from dataclasses import asdict as dataclasses_asdict
from dataclasses import dataclass
from dataclasses import replace as dataclasses_replace
from typing import Callable

import numpy as np

# The package's version, the same string as pyproject.toml's (a test checks). Module
# metadata like __doc__, so not in __all__, which lists the API.
__version__ = "0.1.0"

__all__ = [
    # constants and initialisers
    "PARAM_NAMES", "NONLINEARITIES", "LOSSES", "OUTPUTS", "SCHEMES", "Scheme",
    "NonFiniteError",
    "INPUT_RECIPES", "alpha", "np_init", "identity_init", "orthogonal_init",
    "gaussian_init", "normalized_gaussian_init", "spectral_radius", "nonlinearity_of",
    "init_params",
    # the model: per step, then vectorised
    "forward_per_step", "forward", "readout", "backward_per_step", "backward",
    "readout_backward", "loss_fn", "loss_and_grads_per_step", "loss_and_grads",
    # optimiser
    "clip_grads", "sgd_step", "rmsprop_step", "cooled_lr",
    # gradient checking
    "GradCheck", "GradCheckReport", "check_gradients",
    # analysis
    "autonomous_trajectories", "TwoNodeCase", "two_node_cases",
    "gradient_norms_through_time", "input_sensitivity", "Spectrum", "spectrum",
    # backend bridge
    "TORCH_KEYS", "FIXTURE_FORMAT_VERSION", "FIXTURE_INPUT_KEYS", "FIXTURE_OUTPUT_KEYS",
    "FIXTURE_KEYS", "to_torch_state_dict", "from_torch_state_dict", "fixture_outputs",
    "load_fixture", "TensorCheck", "CompareReport", "compare",
    # verification kit (main and add_verification_commands, the command line, aside)
    "Tier", "TIERS", "FLOAT32_FLOOR", "VERIFY_TIMEOUT", "CaseSpec", "FIXTURE_CASES",
    "FIXTURE_BASE_SEED", "RELU_MARGIN", "TANH_MAX_Z", "make_case", "TensorResult",
    "check_case", "round_mantissa", "gpu_emulation_outputs", "load_backend",
    "CaseResult", "Diagnosis", "VerifyReport", "export_fixtures", "read_manifest",
    "verify_fixtures", "DIFFERENTIAL_BOUNDS", "SHAPE_BUCKETS", "DIFFERENTIAL_EXAMPLES",
    "case_specs", "verify_differential", "diagnose", "survey_backend", "UsageError",
]

PARAM_NAMES = ("W_hx", "W_hh", "b_h", "W_yh", "b_y")
RECURRENT_NAMES = ("W_hx", "W_hh", "b_h")
NONLINEARITIES = ("relu", "tanh")
LOSSES = ("mse", "xent")
OUTPUTS = ("last", "all")


class NonFiniteError(ValueError):
    """NaN or inf where only finite numbers make sense.

    Raised for an argument that holds one (the message names it and the first index) and
    for a result that overflowed although every argument was finite (the message says
    which result and at which time step): finite inputs too large for the dtype, such as
    x * 1e200 or a W_hh whose powers blow up. It is a ValueError, so ``except
    ValueError`` catches it with every other bad input; a training loop catches it by
    name to record a divergence. The functions compute under ``np.errstate(all="ignore")``
    so that this error, not NumPy's RuntimeWarnings, is what a caller sees.
    """


# ---------------------------------------------------------------------------------------
# Initialisers
# ---------------------------------------------------------------------------------------

def alpha(n: int) -> float:
    """Input-weight gain of the np-RNN (Sussillo and Abbott's ReLU gain, arXiv 1412.6558).

        alpha(N) = sqrt(2) * exp(1.2 / (max(N, 6) - 2.4))

    alpha(100) ~ 1.4317: W_hx ~ N(0, alpha(N)^2 / N).
    """
    n = _check_size("n", n)
    return math.sqrt(2.0) * math.exp(1.2 / (max(n, 6) - 2.4))


def np_init(n: int, rng: np.random.Generator) -> np.ndarray:
    """The np-RNN recurrent matrix (the paper's Eq. 9), float64, shape (n, n).

        R ~ N(0, 1)^{n x n},  A = R^T R / n,  W_hh = (A + I) / lambda_max(A + I)

    Invariants (tested for every n from 1 to 200): W_hh is exactly symmetric and positive
    definite; its largest eigenvalue is 1 (to rounding) and, for n >= 2, all others are
    below 1 (almost surely); every eigenvalue is at least 1 / lambda_max(A + I), because
    A is positive semi-definite. ``rng.standard_normal((n, n))`` is the only draw.
    """
    n = _check_matrix_size(n)
    rng = _check_rng(rng)
    R = rng.standard_normal((n, n))                 # (n, n)
    M = R.T @ R / n + np.eye(n)                      # A + I, (n, n)
    M = 0.5 * (M + M.T)                              # exactly symmetric: a+b == b+a
    lam = np.linalg.eigvalsh(M)[-1]                  # eigvalsh sorts ascending
    return M / lam                                   # elementwise: stays symmetric


def identity_init(n: int, scale: float = 1.0) -> np.ndarray:
    """W_hh = scale * I: IRNN (scale = 1, Le et al.) and i-RNN (scale < 1, e.g. 0.01)."""
    n = _check_matrix_size(n)
    _check_real("scale", scale, "a finite number")
    return float(scale) * np.eye(n)


def orthogonal_init(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal matrix: Q of the QR decomposition of a Gaussian (n, n) matrix,
    with the signs of its columns fixed by sign(diag(R)) so that Q is Haar-distributed."""
    n = _check_matrix_size(n)
    rng = _check_rng(rng)
    G = rng.standard_normal((n, n))
    Q, R = np.linalg.qr(G)
    d = np.sign(np.diag(R))
    d[d == 0] = 1.0
    return Q * d                                     # scales column j by d[j]


def gaussian_init(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random Gaussian matrix with i.i.d. N(0, 1/n) entries (the paper's gRNN).

    The paper gives no scale for its gRNN; 1/n is the scale at which the spectral radius
    tends to 1 as n grows (circular law). At n = 100 its median is about 1.05, so most
    draws are slightly expanding. ``rng.standard_normal((n, n))`` is the only draw.
    """
    n = _check_matrix_size(n)
    rng = _check_rng(rng)
    return rng.standard_normal((n, n)) / math.sqrt(n)


def spectral_radius(W: np.ndarray) -> float:
    """rho(W) = max |lambda_i(W)| over the (complex) eigenvalues of a square matrix.

    A NonFiniteError when W is finite but so large that the result overflows."""
    W = _check_square("W", W)
    with np.errstate(all="ignore"):
        rho = float(np.max(np.abs(_eigenvalues("W", W, symmetric=False))))
    if not math.isfinite(rho):
        raise NonFiniteError(f"the spectral radius of W overflowed ({rho}), though W is "
                             f"finite: {_overflow_hint(W.dtype)}")
    return rho


def normalized_gaussian_init(n: int, rng: np.random.Generator) -> np.ndarray:
    """The paper's nRNN: a Gaussian matrix divided by its spectral radius (the echo-state
    recipe), W_hh = G / rho(G) with G ~ N(0, 1)^{n x n}.

    rho(W_hh) = 1 to rounding, usually reached by a complex pair of eigenvalues: W_hh is
    neither symmetric nor positive definite. ``rng.standard_normal((n, n))`` is the only
    draw (the scale of G cancels).
    """
    n = _check_matrix_size(n)
    rng = _check_rng(rng)
    G = rng.standard_normal((n, n))
    return G / spectral_radius(G)


@dataclass(frozen=True)
class Scheme:
    """One row of SCHEMES: the nonlinearity and the recipe of every weight.

    w_hh(n, rng, **options) -> (n, n) float64; w_hx_std(H) -> the standard deviation of
    the i.i.d. normal W_hx under the scheme's own input recipe (``inputs="scheme"``);
    W_yh is always Glorot normal N(0, 2 / (H + O)); biases 0. paper_name is the network's
    name in Table 1 of Talathi and Vartak ("" for the project's extra tanh RNN).
    """
    nonlinearity: str
    w_hh: Callable
    w_hx_std: Callable
    w_hh_text: str
    w_hx_text: str
    options: tuple = ()
    paper_name: str = ""


def _paper_std(H):
    return alpha(H) / math.sqrt(H)


SCHEMES = {
    "np": Scheme("relu", lambda n, rng: np_init(n, rng), _paper_std,
                 "np_init: (A + I) / lambda_max(A + I)", "N(0, alpha(H)^2 / H)",
                 paper_name="np-RNN"),
    "np-tanh": Scheme("tanh", lambda n, rng: np_init(n, rng), _paper_std,
                      "np_init: (A + I) / lambda_max(A + I)", "N(0, alpha(H)^2 / H)",
                      paper_name="np-tanhRNN"),
    "irnn": Scheme("relu", lambda n, rng: identity_init(n),
                   lambda H: 1e-3, "I", "N(0, 0.001^2)", paper_name="IRNN"),
    "i-rnn": Scheme("relu", lambda n, rng, scale=0.01: identity_init(n, scale),
                    lambda H: 1e-3, "scale * I (scale=0.01)", "N(0, 0.001^2)",
                    options=("scale",), paper_name="iRNN"),
    "tanh": Scheme("tanh", lambda n, rng: orthogonal_init(n, rng),
                   lambda H: 1.0 / math.sqrt(H),
                   "random orthogonal (QR of a Gaussian, sign-fixed)", "N(0, 1 / H)"),
    "nrnn": Scheme("relu", lambda n, rng: normalized_gaussian_init(n, rng), _paper_std,
                   "G / rho(G), G Gaussian (spectral radius 1)", "N(0, alpha(H)^2 / H)",
                   paper_name="nRNN"),
    "ornn": Scheme("relu", lambda n, rng: orthogonal_init(n, rng), _paper_std,
                   "random orthogonal (QR of a Gaussian, sign-fixed)",
                   "N(0, alpha(H)^2 / H)", paper_name="oRNN"),
    "grnn": Scheme("relu", lambda n, rng: gaussian_init(n, rng), _paper_std,
                   "Gaussian N(0, 1 / H)", "N(0, alpha(H)^2 / H)", paper_name="gRNN"),
}

# Input-weight recipes: W_hx ~ N(0, std^2) with std = INPUT_RECIPES[name](H, scheme).
#   "scheme": each scheme's own (Le et al.'s N(0, 0.001^2) for irnn and i-rnn, N(0, 1/H)
#             for tanh, the paper's for the others); init_params' default.
#   "paper":  Talathi and Vartak's recipe for every network, N(0, alpha(H)^2 / H).
#   "le":     Le et al.'s N(0, 0.001^2) for every network.
INPUT_RECIPES = {
    "scheme": lambda H, scheme: SCHEMES[scheme].w_hx_std(H),
    "paper": lambda H, scheme: _paper_std(H),
    "le": lambda H, scheme: 1e-3,
}


def nonlinearity_of(scheme: str) -> str:
    """The nonlinearity f of a scheme's network, ``SCHEMES[scheme].nonlinearity``: "tanh"
    for "np-tanh" and "tanh", "relu" for every other scheme.

    Pass it on wherever a nonlinearity is asked for: the parameters of ``init_params``
    hold the five arrays only, and ``forward`` and ``loss_and_grads`` default to "relu"::

        params = init_params(D, H, O, scheme, rng)
        h, cache = forward(params, x, nonlinearity=nonlinearity_of(scheme))
    """
    _check_choice("scheme", scheme, tuple(SCHEMES))
    return SCHEMES[scheme].nonlinearity


def init_params(n_in: int, n_hidden: int, n_out: int, scheme: str,
                rng: np.random.Generator, dtype=np.float64, *, inputs: str = "scheme",
                **scheme_options) -> dict:
    """Initial parameters for one of SCHEMES; draws W_hx, then W_hh, then W_yh.

    inputs names the W_hx recipe (INPUT_RECIPES): "scheme" (the scheme's own, the
    default), "paper" (N(0, alpha(H)^2 / H) for every scheme, as Talathi and Vartak) or
    "le" (N(0, 0.001^2) for every scheme, as Le et al.). The recipe changes only the scale
    of W_hx: the draws, and so W_hh and W_yh, are the same under every recipe.

    Returns {"W_hx": (H, D), "W_hh": (H, H), "b_h": (H,), "W_yh": (O, H), "b_y": (O,)},
    every array of ``dtype`` (float64 or float32; weights are drawn in float64 and cast).

    The parameters do not record the scheme's nonlinearity, ``SCHEMES[scheme].nonlinearity``
    (also ``nonlinearity_of(scheme)``), and ``forward``, ``loss_and_grads`` and the rest
    default to "relu": for "np-tanh" and "tanh" pass ``nonlinearity="tanh"``, or a tanh
    network silently runs ReLU.
    """
    D = _check_size("n_in", n_in)
    H = _check_size("n_hidden", n_hidden)
    O = _check_size("n_out", n_out)
    _check_choice("scheme", scheme, tuple(SCHEMES))
    _check_choice("inputs", inputs, tuple(INPUT_RECIPES))
    rng = _check_rng(rng)
    dtype = _check_dtype_arg("dtype", dtype)
    _check_memory(f"n_in={D}, n_hidden={H}, n_out={O}",      # float64 draws, W_hh twice
                  8 * (H * D + 2 * H * H + O * H))
    s = SCHEMES[scheme]
    unknown = sorted(set(scheme_options) - set(s.options))
    if unknown:
        raise TypeError(f"scheme {scheme!r} takes options {list(s.options) or 'none'}, "
                        f"got unexpected {unknown}")
    W_hx = rng.standard_normal((H, D)) * INPUT_RECIPES[inputs](H, scheme)   # (H, D)
    W_hh = s.w_hh(H, rng, **scheme_options)                       # (H, H)
    W_yh = rng.standard_normal((O, H)) * math.sqrt(2.0 / (H + O))  # (O, H) Glorot normal
    with np.errstate(all="ignore"):
        params = {
            "W_hx": W_hx.astype(dtype), "W_hh": W_hh.astype(dtype),
            "b_h": np.zeros(H, dtype), "W_yh": W_yh.astype(dtype), "b_y": np.zeros(O, dtype),
        }
    if not np.isfinite(params["W_hh"]).all():          # an option beyond the dtype's range
        raise NonFiniteError(f"params['W_hh'] of scheme {scheme!r} with options "
                             f"{scheme_options} overflows {dtype.name}")
    return params


# ---------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------

# FLOAT32_FLUSH. In float32, the hidden states h_t (forward) and the BPTT terms
# delta_t = g_t * f'(z_t) (backward) whose magnitude is below the smallest normal float32
# (np.finfo(np.float32).tiny, about 1.18e-38) are set to zero at every step, as GPUs do
# with flush-to-zero. Gradients that fade through hundreds of steps reach such subnormal
# numbers, on which many CPUs compute very slowly; flushed, they cost nothing, and what is
# lost is below 1.2e-38 in each term. For ReLU a flushed state has ReLU'(z) = 0, as at
# z = 0. float64 is computed without any flushing. The per-step and the vectorised paths
# flush alike, so their float32 results differ only by the order of their sums.
FLOAT32_FLUSH = float(np.finfo(np.float32).tiny)


def forward_per_step(params: dict, x: np.ndarray, h0: np.ndarray | None = None,
                     nonlinearity: str = "relu"):
    """The recurrence one time step at a time, as the paper writes it.

    For t = 1..T, from h_0 = h0::

        z_t = W_hx x_t + W_hh h_{t-1} + b_h
        h_t = f(z_t),        f(z) = max(0, z) for "relu", tanh(z) for "tanh"

    Each step treats the whole batch: row b of x_t, z_t and h_t belongs to sequence b, so
    W_hx x_t is ``x_t @ W_hx.T``. In float32 each h_t is flushed as in ``forward``
    (FLOAT32_FLUSH).

    Parameters
    ----------
    params : dict
        W_hx (H, D), W_hh (H, H), b_h (H,); W_yh and b_y are not read.
    x : ndarray, shape (T, B, D)
        The inputs; x[t - 1] is x_t.
    h0 : ndarray, shape (B, H), optional
        The initial state h_0, zeros when None.
    nonlinearity : {"relu", "tanh"}
        f. A scheme's is ``nonlinearity_of(scheme)``.

    Returns
    -------
    h : ndarray, shape (T, B, H)
        h[t - 1] is h_t (a read-only view into the cache).
    cache : dict
        What ``backward_per_step`` (and ``backward``) need: x, the states h_0..h_T and the
        weights, laid out as ``forward``'s cache. It holds references to your x, W_hx
        and W_hh, not copies: change them before ``backward`` and the gradients change.

    Raises
    ------
    NonFiniteError
        When finite arguments overflow (as in ``forward``).
    """
    h0 = _check_forward_args(params, x, h0, nonlinearity)
    with np.errstate(all="ignore"):
        h, cache = _forward_per_step(params, x, h0, nonlinearity)
    _check_states(h, "params, x and h0")
    return h, cache


def _forward_per_step(params, x, h0, nonlinearity):
    """``forward_per_step`` on validated arguments (h0 an array)."""
    W_hx, W_hh, b_h = params["W_hx"], params["W_hh"], params["b_h"]
    T, B, _ = x.shape
    H = W_hh.shape[0]
    dtype = W_hh.dtype
    hs = np.empty((T + 1, B, H), dtype)                  # hs[t] = h_t, hs[0] = h_0
    hs[0] = h0
    for t in range(1, T + 1):
        x_t, h_prev = x[t - 1], hs[t - 1]                # (B, D), (B, H)
        z_t = x_t @ W_hx.T + h_prev @ W_hh.T + b_h       # (B, H)
        if nonlinearity == "relu":
            h_t = np.maximum(z_t, 0.0)                   # (B, H)
        else:
            h_t = np.tanh(z_t)                           # (B, H)
        if dtype == np.float32:
            h_t[np.abs(h_t) < FLOAT32_FLUSH] = 0.0       # FLOAT32_FLUSH
        hs[t] = h_t
    h = hs[1:]                                           # (T, B, H)
    h.flags.writeable = False
    cache = {"x": x, "hs": hs, "W_hx": W_hx, "W_hh": W_hh, "nonlinearity": nonlinearity}
    return h, cache


def forward(params: dict, x: np.ndarray, h0: np.ndarray | None = None,
            nonlinearity: str = "relu"):
    """Run the recurrence over a batch of sequences (``forward_per_step``, vectorised).

        z_t = W_hx x_t + W_hh h_{t-1} + b_h,    h_t = f(z_t),    t = 1..T

    Inputs
    - params: dict with W_hx (H, D), W_hh (H, H), b_h (H,) (W_yh, b_y are not read)
    - x: (T, B, D) inputs
    - h0: (B, H) initial state, zeros when None
    - nonlinearity: "relu" or "tanh". It defaults to "relu" whatever scheme made the
      parameters: for a tanh scheme pass ``nonlinearity_of(scheme)``
      (= ``SCHEMES[scheme].nonlinearity``).

    Returns
    - h: (T, B, H), h[t-1] is h_t (a read-only view into the cache)
    - cache: what ``backward`` needs, O(T*B*(H + D)) numbers: the inputs, h0 and every
      hidden state (no pre-activations: f'(z_t) is recovered from h_t). The cache holds
      references to your x, W_hx and W_hh, not copies (a copy would cost time on every
      call): change them between ``forward`` and ``backward`` and the gradients change
      with them. ``backward`` checks that they are still consistent and finite, nothing
      more.

    Errors: bad arguments raise ValueError or TypeError naming them. Finite arguments
    whose states overflow the dtype (x * 1e200, a W_hh with a large eigenvalue over many
    steps) raise NonFiniteError, a ValueError, naming the first step t whose h_t is not
    finite (every h_t is checked, by one reduction over h). Under tanh an overflowing
    pre-activation saturates instead: tanh(+-inf) = +-1, tanh's own limit, so the states
    stay finite and no error is raised unless inf - inf makes a NaN.
    """
    h0 = _check_forward_args(params, x, h0, nonlinearity)
    with np.errstate(all="ignore"):
        h, cache = _forward(params, x, h0, nonlinearity)
    _check_states(h, "params, x and h0")
    return h, cache


def _forward(params, x, h0, nonlinearity):
    """``forward`` on validated arguments (h0 an array)."""
    W_hx, W_hh, b_h = params["W_hx"], params["W_hh"], params["b_h"]
    T, B, D = x.shape
    H = W_hh.shape[0]
    dtype = W_hh.dtype

    hs = np.empty((T + 1, B, H), dtype)                  # hs[0] = h0, hs[t] = h_t
    hs[0] = h0
    # All input projections in one product before the loop: W_hx x_t + b_h for every t.
    np.matmul(x.reshape(T * B, D), W_hx.T, out=hs[1:].reshape(T * B, H))   # (T*B, H)
    hs[1:] += b_h
    Whh_T = W_hh.T                                       # (H, H) view, no copy
    rec = np.empty((B, H), dtype)                        # reused buffer for W_hh h_{t-1}
    relu = nonlinearity == "relu"
    zero = np.zeros((B, H), dtype)                       # the 0 of max(0, z_t)
    # Inside the loop only the recurrent product, one addition and f, all in place.
    prev = hs[0]
    if dtype == np.float32:             # FLOAT32_FLUSH (see above): |h_t| < tiny -> 0
        tiny = np.finfo(np.float32).tiny
        small = np.empty((B, H), bool)                   # (B, H): where h_t becomes 0
        mag = np.empty((B, H), dtype)                    # (B, H): |h_t| for tanh
        for t in range(1, T + 1):
            z = hs[t]                                    # holds W_hx x_t + b_h
            np.dot(prev, Whh_T, out=rec)                 # (B, H) = h_{t-1} W_hh^T
            z += rec                                     # z_t, in place
            if relu:                                     # max(0, z_t), |z_t| < tiny -> 0
                np.less(z, tiny, out=small)
            else:
                np.tanh(z, out=z)                        # h_t = tanh(z_t)
                np.less(np.abs(z, out=mag), tiny, out=small)
            np.copyto(z, zero, where=small)              # h_t, flushed
            prev = z
    else:
        for t in range(1, T + 1):
            z = hs[t]                                    # holds W_hx x_t + b_h
            np.dot(prev, Whh_T, out=rec)                 # (B, H) = h_{t-1} W_hh^T
            z += rec                                     # z_t, in place
            if relu:
                np.maximum(z, zero, out=z)               # h_t = max(0, z_t)
            else:
                np.tanh(z, out=z)                        # h_t = tanh(z_t)
            prev = z
    h = hs[1:]
    h.flags.writeable = False
    cache = {"x": x, "hs": hs, "W_hx": W_hx, "W_hh": W_hh, "nonlinearity": nonlinearity}
    return h, cache


def readout(params: dict, h: np.ndarray, output: str = "last") -> np.ndarray:
    """y = W_yh h_t + b_y.

    Inputs: h (T, B, H) with T, B >= 1, finite where read; output "last" (read h_T
    only) or "all".
    Returns y: (B, O) for "last", (T, B, O) for "all" (logits for "xent").
    A NonFiniteError when finite arguments overflow.
    """
    _check_choice("output", output, OUTPUTS)
    H, _, O, dtype = check_params(params)
    T, B = _check_h(h, H, dtype, output)
    _check_memory(f"h of shape {h.shape} with O={O}",
                  (T if output == "all" else 1) * B * O * dtype.itemsize)
    with np.errstate(all="ignore"):
        y = _readout(params, h, output)
    _check_readout_result(y, output, "params and h")
    return y


def _readout(params, h, output):
    """``readout`` on validated arguments."""
    W_yh, b_y = params["W_yh"], params["b_y"]
    O, H = W_yh.shape
    if output == "last":
        return h[-1] @ W_yh.T + b_y                      # (B, O)
    T, B, _ = h.shape
    y = h.reshape(T * B, H) @ W_yh.T                     # (T*B, O), one product
    y += b_y
    return y.reshape(T, B, O)


# ---------------------------------------------------------------------------------------
# Backward: back-propagation through time
# ---------------------------------------------------------------------------------------

def backward_per_step(dh: np.ndarray, cache: dict, return_dh: bool = False):
    """BPTT one time step at a time, from t = T down to 1, carrying dh_next.

    With g_t = dL/dh_t the total gradient reaching h_t (directly, dh_t, and through
    h_{t+1}, dh_next) and delta_t = dL/dz_t::

        g_t = dh_t + dh_next,    dh_next = W_hh^T delta_{t+1}   (0 at t = T: g_T = dh_T)
        delta_t = g_t * f'(z_t)
        f'(z_t) = [z_t > 0] = [h_t > 0] for relu (ReLU'(0) = 0), 1 - h_t^2 for tanh
        dW_hx += delta_t x_t^T,    dW_hh += delta_t h_{t-1}^T,    db_h += delta_t
        dx_t = W_hx^T delta_t,     dh_0 = W_hh^T delta_1 (the last dh_next)

    In float32 each delta_t is flushed as in ``backward`` (FLOAT32_FLUSH).

    Parameters
    ----------
    dh : ndarray, shape (T, B, H)
        dL/dh_t arriving at each h_t directly, not through h_{t+1} (zeros except dh[-1]
        for output="last").
    cache : dict
        From ``forward_per_step`` or ``forward``, unchanged since (see ``backward``).
    return_dh : bool
        Also return g, the total dL/dh_t.

    Returns
    -------
    dx : ndarray, shape (T, B, D)
    dh0 : ndarray, shape (B, H)
    grads : dict
        {"W_hx": (H, D), "W_hh": (H, H), "b_h": (H,)}
    g : ndarray, shape (T, B, H)
        Only with return_dh: g[t - 1] is g_t.

    Raises
    ------
    NonFiniteError
        When finite arguments overflow (as in ``backward``).
    """
    _check_backward_args(dh, cache, return_dh)
    with np.errstate(all="ignore"):
        out = _backward_per_step(dh, cache, return_dh)
    _check_backward_results(out, cache, dh, "all", "dh and the cache")
    return out


def _backward_per_step(dh, cache, return_dh):
    """``backward_per_step`` on validated arguments."""
    x, hs, W_hx, W_hh = cache["x"], cache["hs"], cache["W_hx"], cache["W_hh"]
    T, B, D = x.shape
    H = W_hh.shape[0]
    dtype = hs.dtype
    dW_hx = np.zeros((H, D), dtype)                      # (H, D)
    dW_hh = np.zeros((H, H), dtype)                      # (H, H)
    db_h = np.zeros(H, dtype)                            # (H,)
    dx = np.empty((T, B, D), dtype)                      # (T, B, D)
    g = np.empty((T, B, H), dtype)                       # (T, B, H): g[t - 1] = g_t
    dh_next = np.zeros((B, H), dtype)                    # (B, H): nothing after h_T
    for t in range(T, 0, -1):
        x_t, h_prev, h_t = x[t - 1], hs[t - 1], hs[t]    # (B, D), (B, H), (B, H)
        g_t = dh[t - 1] + dh_next                        # (B, H)
        if cache["nonlinearity"] == "relu":
            f_prime = (h_t > 0).astype(dtype)            # (B, H): ReLU'(0) = 0
        else:
            f_prime = 1.0 - h_t * h_t                    # (B, H)
        delta_t = g_t * f_prime                          # (B, H)
        if dtype == np.float32:
            delta_t[np.abs(delta_t) < FLOAT32_FLUSH] = 0.0   # FLOAT32_FLUSH
        dW_hx += delta_t.T @ x_t                         # (H, D)
        dW_hh += delta_t.T @ h_prev                      # (H, H)
        db_h += delta_t.sum(axis=0)                      # (H,)
        dx[t - 1] = delta_t @ W_hx                       # (B, D): rows of W_hx^T delta_t
        dh_next = delta_t @ W_hh                         # (B, H): rows of W_hh^T delta_t
        g[t - 1] = g_t
    dh0 = dh_next                                        # (B, H): W_hh^T delta_1
    grads = {"W_hx": dW_hx, "W_hh": dW_hh, "b_h": db_h}
    return (dx, dh0, grads, g) if return_dh else (dx, dh0, grads)


def backward(dh: np.ndarray, cache: dict, return_dh: bool = False):
    """BPTT through the recurrence (``backward_per_step``, vectorised), given the loss
    gradient arriving at every h_t directly.

    With g_t = dL/dh_t the total gradient reaching h_t (directly and through h_{t+1}):

        g_T = dh_T,    g_t = dh_t + W_hh^T delta_{t+1},    delta_t = g_t * f'(z_t)
        f'(z) = [z > 0] for relu (so ReLU'(0) = 0), 1 - tanh(z)^2 = 1 - h^2 for tanh
        dW_hh = sum_t delta_t h_{t-1}^T,  dW_hx = sum_t delta_t x_t^T,  db_h = sum_t delta_t
        dx_t = W_hx^T delta_t,            dh0 = W_hh^T delta_1

    Inputs
    - dh: (T, B, H) gradient of the loss with respect to each h_t, not counting the path
      through h_{t+1} (zeros except dh[-1] for output="last")
    - cache: from ``forward`` (or ``forward_per_step``). It holds references to the x,
      W_hx and W_hh that were passed to ``forward``, not copies: if they were changed
      since, the gradients are those of the changed values, silently. Its keys, shapes,
      dtypes and finiteness are checked ("cache must be the cache returned by forward").
    - return_dh: also return g, the total dL/dh_t, shape (T, B, H)

    Returns (dx, dh0, grads) or, with return_dh, (dx, dh0, grads, g)
    - dx: (T, B, D), dh0: (B, H)
    - grads: {"W_hx": (H, D), "W_hh": (H, H), "b_h": (H,)}

    A NonFiniteError, naming the step, when finite arguments overflow (a large dh, or a
    W_hh whose powers grow over many steps).
    """
    _check_backward_args(dh, cache, return_dh)
    with np.errstate(all="ignore"):
        out = _bptt(cache, dh, "all", return_dh)
    _check_backward_results(out, cache, dh, "all", "dh and the cache")
    return out


def _check_backward_args(dh, cache, return_dh):
    """The checks of ``backward`` and ``backward_per_step``."""
    T, B, D, H, dtype = _check_cache(cache)
    _check_dh(dh, T, B, H, dtype)
    _check_bool("return_dh", return_dh)
    _check_memory(f"dh of shape {dh.shape} with D={D}",
                  ((2 if return_dh else 1) * T * B * H + T * B * D) * dtype.itemsize)


def _check_backward_results(out, cache, dh, output, argnames):
    """BPTT's dx, dh0 and gradients finite, else a NonFiniteError naming the step."""
    dx, dh0, grads = out[:3]
    bad = _first_bad([("dx", dx), ("dh0", dh0)]
                     + [(f"grads[{k!r}]", v) for k, v in grads.items()])
    if bad is not None:
        raise _bptt_overflow(bad, cache, dh, output, argnames)


def _bptt(cache: dict, dh, output: str, return_dh: bool = False):
    """``backward``'s equations on validated arguments, from the dL/dh_t of the read steps:
    dh is (T, B, H), one per step, for output "all"; (B, H), dL/dh_T alone, for "last"
    (every earlier dh_t is zero, so no array of zeros is made and no zeros are added)."""
    x, hs, W_hx, W_hh = cache["x"], cache["hs"], cache["W_hx"], cache["W_hh"]
    T, B, D = x.shape
    H = W_hh.shape[0]
    dtype = hs.dtype
    every_step = output == "all"
    # f'(z_t) for every t at once before the loop, in the array that then receives
    # delta_t = g_t * f'(z_t) step by step (one (T, B, H) allocation in all).
    delta = _f_prime(hs[1:], cache["nonlinearity"])      # (T, B, H)
    g = np.empty((T, B, H), dtype) if return_dh else None    # g[t - 1] = g_t
    buf = np.empty((B, H), dtype)                        # g_t when g is not returned
    flush = dtype == np.float32         # FLOAT32_FLUSH (see Forward): |delta_t| < tiny -> 0
    if flush:
        tiny, zero = np.finfo(np.float32).tiny, dtype.type(0)
        small, mag = np.empty((B, H), bool), np.empty((B, H), dtype)   # (B, H) work arrays
    g_T = dh[T - 1] if every_step else dh                # (B, H): g_T = dh_T
    if return_dh:
        g[T - 1] = g_T
    delta_next = delta[T - 1]
    np.multiply(g_T, delta_next, out=delta_next)         # delta_T = g_T * f'(z_T)
    if flush:
        np.less(np.abs(delta_next, out=mag), tiny, out=small)
        np.copyto(delta_next, zero, where=small)
    for t in range(T - 1, 0, -1):                        # t = T-1 .. 1
        g_t = g[t - 1] if return_dh else buf
        np.dot(delta_next, W_hh, out=g_t)                # (B, H): W_hh^T delta_{t+1}
        if every_step:
            g_t += dh[t - 1]                             # g_t = dh_t + W_hh^T delta_{t+1}
        delta_t = delta[t - 1]
        np.multiply(g_t, delta_t, out=delta_t)           # delta_t = g_t * f'(z_t)
        if flush:
            np.less(np.abs(delta_t, out=mag), tiny, out=small)
            np.copyto(delta_t, zero, where=small)
        delta_next = delta_t
    # All weight gradients after the loop, one product each.
    d2 = delta.reshape(T * B, H)                         # (T*B, H)
    grads = {
        "W_hx": d2.T @ x.reshape(T * B, D),              # (H, D)
        "W_hh": d2.T @ hs[:-1].reshape(T * B, H),        # (H, H): h_{t-1} for every t
        "b_h": d2.sum(axis=0),                           # (H,)
    }
    dx = (d2 @ W_hx).reshape(T, B, D)                    # (T, B, D)
    dh0 = delta[0] @ W_hh                                # (B, H)
    if return_dh:
        return dx, dh0, grads, g
    return dx, dh0, grads


def _f_prime(h, nonlinearity):
    """f'(z_t) for every step at once, from h_t = f(z_t): (T, B, H)."""
    if nonlinearity == "relu":
        fp = np.empty(h.shape, h.dtype)
        np.greater(h, h.dtype.type(0), out=fp)           # [z_t > 0] == [h_t > 0], as 0/1
    else:
        fp = h * h
        np.subtract(1.0, fp, out=fp)                     # 1 - h_t^2
    return fp


def readout_backward(dy: np.ndarray, params: dict, h: np.ndarray, output: str = "last"):
    """Gradients of y = W_yh h_t + b_y.

    Inputs: dy ((B, O) for "last", (T, B, O) for "all"), params, h (T, B, H), all of
    the params' dtype and finite (h where it is read).
    Returns (dh, grads): dh (T, B, H), zero except the read steps;
    grads {"W_yh": (O, H), "b_y": (O,)}. A NonFiniteError when finite arguments overflow.
    """
    _check_choice("output", output, OUTPUTS)
    H, _, O, dtype = check_params(params)
    T, B = _check_h(h, H, dtype, output)
    lead = (("B", B),) if output == "last" else (("T", T), ("B", B))
    _as_array("dy", dy)
    _check_shape("dy", dy, lead + (("O", O),))
    _check_float("dy", dy, dtype)
    _check_finite("dy", dy)
    _check_memory(f"h of shape {h.shape}", T * B * H * dtype.itemsize)
    with np.errstate(all="ignore"):
        dh_read, grads = _readout_grads(dy, params, h, output)
    bad = _first_bad([("dh", dh_read)] + [(f"grads[{k!r}]", v) for k, v in grads.items()])
    if bad is not None:
        raise NonFiniteError(f"the read-out's gradient {bad} overflowed, though dy, params "
                             f"and h are finite: {_overflow_hint(dtype)}")
    if output == "all":
        return dh_read, grads
    dh = np.zeros((T, B, H), dtype)
    dh[-1] = dh_read
    return dh, grads


def _readout_grads(dy, params, h, output):
    """``readout_backward`` on validated arguments, with dh only at the read steps:
    (B, H) for "last" (the gradient reaching h_T), (T, B, H) for "all"."""
    W_yh = params["W_yh"]
    if output == "last":
        return dy @ W_yh, {"W_yh": dy.T @ h[-1], "b_y": dy.sum(axis=0)}   # (B, H)
    T, B, H = h.shape
    dy2 = dy.reshape(T * B, -1)                          # (T*B, O)
    dh = (dy2 @ W_yh).reshape(T, B, H)                   # (T, B, H)
    return dh, {"W_yh": dy2.T @ h.reshape(T * B, H), "b_y": dy2.sum(axis=0)}


# ---------------------------------------------------------------------------------------
# Losses (PyTorch's default mean reductions)
# ---------------------------------------------------------------------------------------

def loss_fn(y: np.ndarray, target: np.ndarray, loss: str = "mse"):
    """Loss and its gradient dL/dy.

    mse:  L = mean((y - target)^2),  dL/dy = 2 (y - target) / y.size
    xent: L = mean_n(logsumexp(y_n) - y_n[c_n]) over the n = y.size / O rows,
          dL/dy = (softmax(y) - onehot(c)) / n, with a stable log-sum-exp.

    Inputs: y (B, O) or (T, B, O), float32 or float64; target of y's shape and dtype
    (mse) or integer labels in [0, O) of shape y.shape[:-1] (xent). The checks are only
    the cheap ones (loss, types, shapes, dtypes, label range): the values of y and target
    are not scanned, so a NaN or inf in y (a diverged network) gives a non-finite loss
    and gradient, which is how a training loop sees the divergence, and no warning.
    """
    _check_choice("loss", loss, LOSSES)
    _as_array("y", y)
    if y.dtype not in (np.float32, np.float64):
        raise TypeError(f"y must have dtype float32 or float64, got {_dtype_text(y.dtype)}")
    if y.ndim not in (2, 3) or 0 in y.shape:
        raise ValueError(f"y must have shape (B, O) or (T, B, O) with every size >= 1, "
                         f"got {tuple(y.shape)}")
    _as_array("target", target)
    if loss == "mse":
        if target.shape != y.shape:
            raise ValueError(f"target must have y's shape {tuple(y.shape)} for loss='mse', "
                             f"got {tuple(target.shape)}")
        _check_float("target", target, y.dtype, "y's")
    else:
        if target.shape != y.shape[:-1]:
            raise ValueError(f"target must have shape {tuple(y.shape[:-1])} (y's without O) "
                             f"for loss='xent', got {tuple(target.shape)}")
        _check_labels(target, y.shape[-1])
    with np.errstate(all="ignore"):
        return _loss_fn(y, target, loss)


def _loss_fn(y, target, loss):
    """``loss_fn`` on validated arguments."""
    if loss == "mse":
        diff = y - target
        return np.mean(diff * diff), diff * (2.0 / diff.size)
    O = y.shape[-1]
    y2 = y.reshape(-1, O)
    c = target.reshape(-1)
    n = y2.shape[0]
    m = y2.max(axis=1, keepdims=True)
    e = np.exp(y2 - m)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    L = np.mean(np.log(s[:, 0]) + m[:, 0] - y2[rows, c])
    p = e / s                                            # softmax
    p[rows, c] -= 1.0
    p *= 1.0 / n
    return L, p.reshape(y.shape)


def loss_and_grads_per_step(params: dict, x: np.ndarray, target: np.ndarray, *,
                            loss: str = "mse", output: str = "last",
                            nonlinearity: str = "relu", h0: np.ndarray | None = None):
    """``loss_and_grads`` one time step at a time: ``forward_per_step``, then the read-out
    and the loss at each read step s (s = T for "last", s = 1..T for "all"), then
    ``backward_per_step`` from the read-out's gradients::

        y_s = W_yh h_s + b_y,    L = (1/n) sum_s sum_b l(y_s[b], target_s[b])
        mse:  l = sum_o (y_o - target_o)^2,        dl/dy = 2 (y - target)
        xent: l = logsumexp(y) - y[c],             dl/dy = softmax(y) - onehot(c)
        dy_s = (1/n) dl/dy_s,   dW_yh = sum_s dy_s h_s^T,   db_y = sum_s dy_s,
        dh_s = W_yh^T dy_s (dh_t = 0 at the steps that are not read)

    where n counts the terms of the mean, as in ``loss_fn``: every element of y for
    "mse", every (step, sequence) pair for "xent".

    Parameters, returns and errors are those of ``loss_and_grads``.
    """
    h0 = _check_loss_args(params, x, target, loss, output, nonlinearity, h0)
    with np.errstate(all="ignore"):
        h, cache = _forward_per_step(params, x, h0, nonlinearity)     # (T, B, H)
    _check_states(h, _LOSS_ARGS)
    with np.errstate(all="ignore"):
        L, grads, dh = _loss_and_grads_per_step(params, h, cache, target, loss, output)
    if not math.isfinite(L):
        with np.errstate(all="ignore"):
            raise _loss_overflow(L, _readout(params, h, output), output)
    _check_grads_result(grads, h, cache, dh, "all")
    return L, grads


def _loss_and_grads_per_step(params, h, cache, target, loss, output):
    """The read-out, loss and BPTT of ``loss_and_grads_per_step`` after its forward pass;
    returns (loss, grads, dh)."""
    W_yh, b_y = params["W_yh"], params["b_y"]
    T, B, H = h.shape
    O = W_yh.shape[0]
    dtype = h.dtype
    read = [T] if output == "last" else list(range(1, T + 1))    # the read steps s
    n = len(read) * B * (O if loss == "mse" else 1)              # terms of the mean
    L = dtype.type(0)
    dW_yh = np.zeros((O, H), dtype)                              # (O, H)
    db_y = np.zeros(O, dtype)                                    # (O,)
    dh = np.zeros((T, B, H), dtype)                              # (T, B, H)
    for s in read:
        h_s = h[s - 1]                                           # (B, H)
        y_s = h_s @ W_yh.T + b_y                                 # (B, O)
        target_s = target if output == "last" else target[s - 1]   # (B, O) or (B,)
        l_s, dl_s = _step_loss(y_s, target_s, loss)              # sum over b; (B, O)
        L += l_s
        dy_s = dl_s / n                                          # (B, O)
        dW_yh += dy_s.T @ h_s                                    # (O, H)
        db_y += dy_s.sum(axis=0)                                 # (O,)
        dh[s - 1] = dy_s @ W_yh                                  # (B, H)
    dx, dh0, grads = _backward_per_step(dh, cache, False)
    grads.update(W_yh=dW_yh, b_y=db_y, x=dx, h0=dh0)
    return dtype.type(L / n), {k: grads[k] for k in PARAM_NAMES + ("x", "h0")}, dh


def _step_loss(y_s, target_s, loss):
    """The loss of one read step summed over its sequences, l_s = sum_b l(y_s[b],
    target_s[b]), and dl_s / dy_s: (B, O)."""
    if loss == "mse":
        diff = y_s - target_s                                    # (B, O)
        return (diff * diff).sum(), 2.0 * diff
    rows = np.arange(y_s.shape[0])                               # (B,)
    m = y_s.max(axis=1, keepdims=True)                           # (B, 1): for stability
    e = np.exp(y_s - m)                                          # (B, O)
    s = e.sum(axis=1, keepdims=True)                             # (B, 1)
    l_s = (np.log(s[:, 0]) + m[:, 0] - y_s[rows, target_s]).sum()
    p = e / s                                                    # (B, O): softmax(y_s)
    p[rows, target_s] -= 1.0                                     # softmax - onehot
    return l_s, p


def loss_and_grads(params: dict, x: np.ndarray, target: np.ndarray, *, loss: str = "mse",
                   output: str = "last", nonlinearity: str = "relu",
                   h0: np.ndarray | None = None):
    """Loss and the gradient of every parameter, of x and of h0 (``loss_and_grads_per_step``,
    vectorised).

    Inputs
    - params: the five arrays; x (T, B, D); h0 (B, H) or None (zeros)
    - target: mse: (B, O) for "last", (T, B, O) for "all", floats of the params' dtype;
      xent: integer labels in [0, O), (B,) for "last", (T, B) for "all"
    - loss "mse" or "xent", output "last" or "all", nonlinearity "relu" or "tanh" (for a
      tanh scheme pass ``nonlinearity_of(scheme)``)

    Returns (loss, grads): loss a NumPy scalar of the params' dtype; grads with keys
    W_hx, W_hh, b_h, W_yh, b_y, x, h0, each shaped like its input. No clipping here.

    Errors: bad arguments raise ValueError or TypeError naming them; finite arguments
    that overflow raise NonFiniteError (a ValueError) saying where: the first step whose
    h_t is not finite (as ``forward``), the read-out, the loss, or the step at which
    back-propagation overflowed. Training loops catch it to record a divergence.
    """
    L, dy, h, _, cache = _loss_forward(params, x, target, loss, output, nonlinearity, h0)
    return h.dtype.type(L), _checked_grads_from(dy, params, h, cache, output)


def _loss_forward(params, x, target, loss, output, nonlinearity, h0):
    """Validate every argument of a loss evaluation, run forward, read-out and loss, and
    check that the states and the loss are finite. Returns (L, dy, h, y, cache)."""
    h0 = _check_loss_args(params, x, target, loss, output, nonlinearity, h0)
    with np.errstate(all="ignore"):
        h, cache = _forward(params, x, h0, nonlinearity)    # (T, B, H)
    _check_states(h, _LOSS_ARGS)
    with np.errstate(all="ignore"):
        y = _readout(params, h, output)
        L, dy = _loss_fn(y, target, loss)
    if not math.isfinite(L):
        raise _loss_overflow(L, y, output)
    return L, dy, h, y, cache


def _checked_grads_from(dy, params, h, cache, output):
    """_grads_from, with every gradient checked finite."""
    with np.errstate(all="ignore"):
        grads = _grads_from(dy, params, h, cache, output)
    _check_grads_result(grads, h, cache, lambda: _readout_grads(dy, params, h, output)[0],
                        output)
    return grads


def _loss_overflow(L, y, output):
    """The NonFiniteError for a loss that is not finite although the arguments were."""
    _check_readout_result(y, output, _LOSS_ARGS)
    return NonFiniteError(f"the loss overflowed to {L}: y - target is too large to "
                          f"square, though the read-out y is finite, as are {_LOSS_ARGS}: "
                          f"{_overflow_hint(y.dtype)}")


def _check_grads_result(grads, h, cache, dh, output):
    """The gradients of a loss evaluation all finite, else a NonFiniteError saying where
    they overflowed (the read-out's, or the BPTT step). dh: the dL/dh of the read steps,
    or a function that computes it (only needed on failure)."""
    bad = _first_bad((f"grads[{k!r}]", grads[k]) for k in ("W_yh", "b_y"))
    if bad is not None:
        raise NonFiniteError(f"the read-out's gradient {bad} overflowed, though "
                             f"{_LOSS_ARGS} are finite: {_overflow_hint(h.dtype)}")
    bad = _first_bad((f"grads[{k!r}]", v) for k, v in grads.items()
                     if k not in ("W_yh", "b_y"))
    if bad is not None:
        with np.errstate(all="ignore"):
            dh = dh() if callable(dh) else dh
        raise _bptt_overflow(bad, cache, dh, output, _LOSS_ARGS)


def _grads_from(dy, params, h, cache, output):
    """Every gradient of loss_and_grads from dL/dy and the forward pass's h and cache."""
    dh, grads = _readout_grads(dy, params, h, output)    # dL/dh at the read steps
    dx, dh0, rec_grads = _bptt(cache, dh, output)
    grads.update(rec_grads, x=dx, h0=dh0)
    return {k: grads[k] for k in PARAM_NAMES + ("x", "h0")}


# ---------------------------------------------------------------------------------------
# Optimiser
# ---------------------------------------------------------------------------------------

def clip_grads(grads: dict, max_norm: float):
    """Rescale the parameter gradients to global norm at most ``max_norm``.

        norm = sqrt(sum_k ||g_k||^2) over k in PARAM_NAMES;  g_k <- g_k * max_norm / norm
        when norm > max_norm.

    "x" and "h0" are never counted nor scaled (they are passed through). Returns
    (clipped, norm): a new dict, and the norm measured before clipping. Unlike PyTorch's
    clip_grad_norm_, no 1e-6 is added to the norm.

    grads is a dict as ``loss_and_grads`` returns it: the five parameters' gradients
    (shapes consistent with each other, one float dtype) and optionally "x" and "h0";
    any other key is refused. A NaN or inf in a parameter's gradient is a NonFiniteError
    naming it (found from the norm, which is computed anyway). The norm is computed in
    the gradients' dtype; if that overflows although every gradient is finite (float32
    gradients beyond about 1e19), it is recomputed in float64 from the gradients divided
    by their largest magnitude, so the clipping stays right.
    """
    dtype = _check_grads(grads, None, finite=False)
    _check_real("max_norm", max_norm, "a finite number > 0",
                lambda f: math.isfinite(f) and f > 0)
    norm = math.sqrt(sum(float(np.vdot(grads[k], grads[k])) for k in PARAM_NAMES))
    if not math.isfinite(norm):                 # a NaN or inf, or an overflowing sum
        norm = _rescaled_norm(grads)
    scale = max_norm / norm if norm > max_norm else 1.0
    if scale > 0 and dtype.type(scale) == 0:    # below the dtype's range: scale in float64
        with np.errstate(under="ignore"):
            return {k: ((v.astype(np.float64) * scale).astype(dtype) if k in PARAM_NAMES
                        else v)
                    for k, v in grads.items()}, norm
    clipped = {k: (v * v.dtype.type(scale) if k in PARAM_NAMES else v)
               for k, v in grads.items()}
    return clipped, norm


def _rescaled_norm(grads) -> float:
    """The global norm of the parameter gradients when the plain sum of squares was not
    finite: a NonFiniteError if a gradient is not finite, else the norm computed in
    float64 as m * sqrt(sum (g / m)^2), m the largest magnitude."""
    for k in PARAM_NAMES:
        _check_finite(f"grads[{k!r}]", grads[k])
    m = max(float(np.max(np.abs(grads[k]))) for k in PARAM_NAMES)
    norm = m * math.sqrt(sum(float(np.vdot(g, g)) for g in
                             (grads[k].astype(np.float64) / m for k in PARAM_NAMES)))
    if not math.isfinite(norm):
        raise NonFiniteError(f"the global norm of grads overflows float64 (its largest "
                             f"entry is {m:.3g}), though every gradient is finite")
    return norm


def sgd_step(params: dict, grads: dict, velocity: dict | None, lr: float,
             momentum: float = 0.0):
    """One SGD step with momentum, in PyTorch's form (torch.optim.SGD, dampening 0):

        v <- momentum * v + g,    p <- p - lr * v

    velocity None means zeros (PyTorch's first step), else the dict the previous step
    returned. Returns new (params, velocity) dicts; nothing passed in is modified. grads
    may also hold "x" and "h0" (as loss_and_grads returns them), which are ignored; any
    other key, in grads, params or velocity, is refused. A NaN or inf in grads or
    velocity, or an update that overflows (a huge lr), is a NonFiniteError naming it.
    """
    for name, v in (("lr", lr), ("momentum", momentum)):
        _check_rate(name, v)
    dtype = _check_step_args(params, grads, velocity, "velocity")
    with np.errstate(all="ignore"):
        new_p, new_v = _sgd_update(params, grads, velocity, lr, momentum, dtype)
    _check_step_results(params, grads, velocity, "velocity", new_p, None, "lr * velocity")
    return new_p, new_v


def _sgd_update(params, grads, velocity, lr, momentum, dtype):
    """``sgd_step`` on validated arguments."""
    new_p, new_v = {}, {}
    for k in PARAM_NAMES:
        g = grads[k]
        v = g.copy() if velocity is None else momentum * velocity[k] + g
        v = v.astype(dtype, copy=False)
        new_v[k] = v
        new_p[k] = (params[k] - dtype.type(lr) * v).astype(dtype, copy=False)
    return new_p, new_v


def rmsprop_step(params: dict, grads: dict, square_avg: dict | None, lr: float,
                 alpha: float = 0.99, eps: float = 1e-8):
    """One RMSprop step in PyTorch's form (torch.optim.RMSprop, its defaults: not
    centred, no momentum, no weight decay):

        s <- alpha * s + (1 - alpha) * g^2,    p <- p - lr * g / (sqrt(s) + eps)

    eps is added outside the square root. square_avg None means zeros (PyTorch's first
    step), else the dict the previous step returned. Returns new (params, square_avg)
    dicts; nothing passed in is modified. grads may also hold "x" and "h0", which are
    ignored; any other key is refused. A NaN or inf in grads or square_avg, or an update
    that overflows, is a NonFiniteError naming it.
    """
    _check_rate("lr", lr)
    _check_real("alpha", alpha, "a number in [0, 1)", lambda f: 0 <= f < 1)
    _check_rate("eps", eps, positive=True)
    dtype = _check_step_args(params, grads, square_avg, "square_avg")
    with np.errstate(all="ignore"):
        new_p, new_s = _rmsprop_update(params, grads, square_avg, lr, alpha, eps, dtype)
    _check_step_results(params, grads, square_avg, "square_avg", new_p, new_s,
                        "lr * g / (sqrt(s) + eps) or g^2")
    return new_p, new_s


def _rmsprop_update(params, grads, square_avg, lr, alpha, eps, dtype):
    """``rmsprop_step`` on validated arguments."""
    a, one_minus_a = dtype.type(alpha), dtype.type(1.0 - alpha)
    new_p, new_s = {}, {}
    for k in PARAM_NAMES:
        g = grads[k]
        s = one_minus_a * (g * g)
        if square_avg is not None:
            s = a * square_avg[k] + s
        new_s[k] = s
        new_p[k] = params[k] - dtype.type(lr) * (g / (np.sqrt(s) + dtype.type(eps)))
    return new_p, new_s


def cooled_lr(lr: float, epoch: int, factor: float = 0.1, milestones=()) -> float:
    """Step cooling of the learning rate: lr times ``factor`` once for every milestone
    m <= epoch (epochs counted from 0, as torch.optim.lr_scheduler.MultiStepLR stepped
    once per epoch). The paper's pixel protocol, 100 epochs cooled by 10 after epochs 33
    and 66, is ``cooled_lr(1e-4, e, 0.1, (33, 66))``: 1e-4 for epochs 0-32, 1e-5 for
    33-65 and 1e-6 for 66-99. milestones: a tuple, list, range or 1-D array of ints."""
    _check_rate("lr", lr)
    epoch = _check_size("epoch", epoch, minimum=0)
    _check_rate("factor", factor, positive=True)
    if isinstance(milestones, np.ndarray):
        if _as_array("milestones", milestones).ndim != 1:
            raise ValueError(f"milestones must be 1-D, got shape {milestones.shape}")
    elif not isinstance(milestones, (tuple, list, range)):
        raise TypeError(f"milestones must be a tuple or list of epochs (ints >= 1), got "
                        f"{type(milestones).__name__} {_short(milestones)}")
    ms = tuple(milestones)
    for i, m in enumerate(ms):
        _check_size(f"milestones[{i}]", m, minimum=1)
    if list(ms) != sorted(set(ms)):
        raise ValueError(f"milestones must be increasing epochs, got {_short(ms)}")
    with np.errstate(all="ignore"):
        for m in ms:
            if epoch >= m:
                lr = lr * factor
        out = float(lr)
    if not math.isfinite(out):
        raise NonFiniteError(f"the cooled learning rate overflowed ({out}): lr times "
                             f"factor once per milestone passed is too large for a float")
    return out


# ---------------------------------------------------------------------------------------
# Analysis: the paper's dynamical-systems argument, made runnable
# ---------------------------------------------------------------------------------------
#
# With zero input and zero bias the ReLU network is the map h_{t+1} = max(0, W_hh h_t).
# For a symmetric positive-definite W_hh with non-negative entries a non-negative state is
# never clipped, so the map is linear on the non-negative orthant and its eigenvalues
# decide everything (the paper's 2-node picture, cases (a) to (d)). The np_init matrix
# has entries of both signs: there ReLU clips, and the picture must be measured, not
# assumed. The functions below compute the quantities the argument is about.

def autonomous_trajectories(W: np.ndarray, h0s: np.ndarray, steps: int) -> np.ndarray:
    """The zero-input, zero-bias ReLU map, from K starting points at once.

        h_{t+1} = max(0, W h_t),    t = 0 .. steps - 1

    Inputs
    - W: (N, N) recurrent matrix (W_hh), float32 or float64
    - h0s: (K, N) starting states, one per row, of W's dtype
    - steps: number of steps, an int >= 0

    Returns traj: (steps + 1, K, N), traj[t, k] = h_t from the start h0s[k]
    (traj[0] is a copy of h0s). Starts with negative entries are allowed; the first
    step clips them like any other state. States that grow beyond the dtype's range
    (case (d) over thousands of steps) raise NonFiniteError naming the step.
    """
    W = _check_square("W", W)
    N = W.shape[0]
    _as_array("h0s", h0s)
    if h0s.ndim != 2 or h0s.shape[1] != N or h0s.shape[0] < 1:
        raise ValueError(f"h0s must have shape (K, N={N}) with K >= 1 (one starting state "
                         f"per row), got {tuple(h0s.shape)}")
    _check_float("h0s", h0s, W.dtype)
    _check_finite("h0s", h0s)
    steps = _check_size("steps", steps, minimum=0)
    _check_memory(f"steps={steps} with h0s of shape {h0s.shape}",
                  (steps + 1) * h0s.size * W.dtype.itemsize)
    traj = np.empty((steps + 1,) + h0s.shape, W.dtype)   # (steps + 1, K, N)
    traj[0] = h0s
    W_T = W.T
    with np.errstate(all="ignore"):
        for t in range(steps):
            np.matmul(traj[t], W_T, out=traj[t + 1])            # (K, N): rows W h_t
            np.maximum(traj[t + 1], 0.0, out=traj[t + 1])
    if steps:
        _check_states(traj[1:], "W and h0s")
    return traj


@dataclass(frozen=True)
class TwoNodeCase:
    """One of the paper's 2-node cases: a 2 x 2 symmetric positive-definite W with
    non-negative entries, its eigenvalues (decreasing), its top eigenvector (unit norm,
    non-negative: the Perron vector) and where non-negative trajectories end."""
    key: str
    title: str
    W: np.ndarray
    eigenvalues: np.ndarray
    top_eigenvector: np.ndarray
    fate: str


def two_node_cases() -> tuple:
    """The four 2-node cases of the paper, as TwoNodeCase (a), (b), (c), (d).

    Every W is symmetric, positive definite and has non-negative entries, so
    W h >= 0 whenever h >= 0: ReLU never clips a non-negative state and
    h_t = W^t h_0 = sum_i lambda_i^t (u_i . h_0) u_i exactly (u_i the eigenvectors).
    The entries are dyadic, so every W and eigenvalue is exact in binary floating point:

    - (a) [[1/2, 1/4], [1/4, 1/2]]: lambda = 3/4, 1/4 < 1: h_t -> 0
    - (b) I: lambda = 1, 1: h_t = h_0, every state is a (neutral) fixed point
    - (c) [[3/4, 1/4], [1/4, 3/4]]: lambda = 1, 1/2: h_t -> (v . h_0) v,
      v = (1, 1) / sqrt(2), a line attractor along the top eigenvector
    - (d) [[1, 1/4], [1/4, 1]]: lambda = 5/4, 3/4: |h_t| ~ (5/4)^t (v . h_0), growing
      along v = (1, 1) / sqrt(2)
    """
    s = 1.0 / math.sqrt(2.0)
    specs = (
        ("a", "all eigenvalues < 1", [[0.5, 0.25], [0.25, 0.5]],
         "the origin: every state decays (like 0.75^t)"),
        ("b", "all eigenvalues = 1 (W = I, IRNN)", [[1.0, 0.0], [0.0, 1.0]],
         "where it started: every state is a neutral fixed point"),
        ("c", "largest eigenvalue = 1, other < 1", [[0.75, 0.25], [0.25, 0.75]],
         "(v . h0) v on the line along v = (1, 1)/sqrt 2 (line attractor)"),
        ("d", "one eigenvalue > 1", [[1.0, 0.25], [0.25, 1.0]],
         "infinity along v = (1, 1)/sqrt 2, |h_t| ~ 1.25^t"),
    )
    cases = []
    for key, title, W, fate in specs:
        W = np.array(W)
        lam, U = np.linalg.eigh(W)                       # ascending
        v = U[:, -1] * np.sign(U[:, -1].sum())           # the non-negative Perron vector
        if key == "b":
            v = np.array([s, s])                         # any unit vector is "top" for I
        cases.append(TwoNodeCase(key, title, W, lam[::-1].copy(), v, fate))
    return tuple(cases)


def gradient_norms_through_time(params: dict, x: np.ndarray, target: np.ndarray, *,
                                loss: str = "mse", output: str = "last",
                                nonlinearity: str = "relu",
                                h0: np.ndarray | None = None) -> np.ndarray:
    """|dL/dh_t| for t = 1..T: how the loss gradient flows back through time.

        g_t = dL/dh_t (the total gradient, as in ``backward``: g_t = dh_t + W_hh^T delta_{t+1})
        norm_t = ||g_t||_F = sqrt(sum_{b, i} g_t[b, i]^2)

    L is the batch loss of ``loss_and_grads`` (a mean over the batch), and the norm is
    the Frobenius norm of the (B, H) gradient at step t, i.e. the Euclidean norm of the
    gradient of L with respect to the stacked states h_t of all B sequences. Vanishing
    gradients show as norm_1 << norm_T, exploding ones as norm_1 >> norm_T.

    Inputs as in ``loss_and_grads``: params, x (T, B, D), target, loss, output,
    nonlinearity, h0 (B, H) or None.
    Returns norms: (T,), norms[t - 1] = ||dL/dh_t||_F, of the params' dtype.
    """
    _, dy, h, _, cache = _loss_forward(params, x, target, loss, output, nonlinearity, h0)
    with np.errstate(all="ignore"):
        dh_read, _ = _readout_grads(dy, params, h, output)   # gradient at the read steps
        g = _bptt(cache, dh_read, output, return_dh=True)[3]   # (T, B, H): the total g_t
        norms = np.sqrt(np.einsum("tbh,tbh->t", g, g))      # (T,)
    if not np.isfinite(norms).all():
        if not np.isfinite(g).all():
            raise _bptt_overflow("dL/dh_t", cache, dh_read, output, _LOSS_ARGS)
        with np.errstate(all="ignore"):       # g finite, its squares not: scale by max |g_t|
            m = np.abs(g).reshape(g.shape[0], -1).max(axis=1)             # (T,)
            s = np.where(m > 0, m, 1)[:, None, None]
            norms = np.where(np.isfinite(norms), norms,
                             m * np.sqrt(np.einsum("tbh,tbh->t", g / s, g / s)))
        if not np.isfinite(norms).all():
            t = int(np.argmax(~np.isfinite(norms))) + 1
            raise NonFiniteError(f"||dL/dh_t|| overflows {norms.dtype.name} at step t={t}, "
                                 f"though {_LOSS_ARGS} are finite")
    return norms


def input_sensitivity(params: dict, x: np.ndarray, *, nonlinearity: str = "relu",
                      h0: np.ndarray | None = None):
    """How strongly the last hidden state depends on each input: ||d h_T / d x_t||_F.

        J_t[b] = d h_T[b] / d x_t[b],  an (H, D) Jacobian per sequence b
        S[t, b] = ||J_t[b]||_F = sqrt(sum_{i, d} (d h_T[b, i] / d x_t[b, d])^2)

    Computed exactly with H backward passes through one forward pass: pass i seeds
    dL/dh_T = e_i for every sequence at once (sequences do not interact), so backward's
    dx[t, b] is row i of J_t[b]; S sums the squares over the H passes.

    Inputs: params (W_hx, W_hh, b_h are read), x (T, B, D), nonlinearity, h0 (B, H) or None.
    Returns (per_sequence, mean): per_sequence (T, B) with per_sequence[t - 1, b] =
    ||J_t[b]||_F, and mean (T,), its mean over the batch.
    """
    h0 = _check_forward_args(params, x, h0, nonlinearity)
    T, B, D = x.shape
    H, dtype = h0.shape[1], h0.dtype
    _check_memory(f"x of shape {x.shape} with H={H}",          # hs, then delta and dx
                  ((2 * T + 1) * B * H + T * B * D) * dtype.itemsize)
    with np.errstate(all="ignore"):
        h, cache = _forward(params, x, h0, nonlinearity)
    _check_states(h, "params, x and h0")
    with np.errstate(all="ignore"):
        sq = np.zeros((T, B), dtype)                     # running sum of squares
        seed = np.zeros((B, H), dtype)                   # dL/dh_T = e_i, nothing earlier
        for i in range(H):
            seed[:, i] = 1.0
            dx = _bptt(cache, seed, "last")[0]           # (T, B, D): row i of J_t[b]
            sq += np.einsum("tbd,tbd->tb", dx, dx)
            seed[:, i] = 0.0
        per_sequence = np.sqrt(sq)                       # (T, B)
        mean = per_sequence.mean(axis=1)
    if not np.isfinite(mean).all():
        t = int(np.nonzero(~np.isfinite(mean))[0].max()) + 1
        raise NonFiniteError(f"the sensitivity ||d h_T / d x_t|| overflowed at step t={t} "
                             f"of T={T} (going back from T), though params, x and h0 are "
                             f"finite: {_overflow_hint(dtype)}")
    return per_sequence, mean


@dataclass(frozen=True)
class Spectrum:
    """eigenvalues: all N, sorted by decreasing modulus (float if W is symmetric, else
    complex); radius: the spectral radius max |lambda|; norm: the spectral norm, the
    largest singular value; symmetric: whether W == W^T exactly (eigvalsh was used)."""
    eigenvalues: np.ndarray
    radius: float
    norm: float
    symmetric: bool


def spectrum(W: np.ndarray) -> Spectrum:
    """Eigenvalues, spectral radius and norm of a recurrent matrix.

        W u_i = lambda_i u_i,  |lambda_1| >= |lambda_2| >= ... >= |lambda_N|
        radius = |lambda_1|,   norm = sigma_max(W) = max_{|h| = 1} |W h| >= radius

    eigvalsh (real eigenvalues, stable) when W is exactly symmetric, eigvals otherwise
    (trained weights are in general not symmetric). Ties in modulus keep eigvalsh's /
    eigvals' order (a stable sort). A NonFiniteError when W is finite but so large that
    a result overflows.
    """
    W = _check_square("W", W)
    symmetric = bool(np.array_equal(W, W.T))
    with np.errstate(all="ignore"):
        ev = _eigenvalues("W", W, symmetric)
        ev = ev[np.argsort(-np.abs(ev), kind="stable")]
        radius = float(np.abs(ev[0]))
        try:
            norm = float(np.linalg.norm(W, 2))
        except np.linalg.LinAlgError as e:
            raise np.linalg.LinAlgError(f"the spectral norm of W could not be computed: "
                                        f"{e}") from None
    if not (np.isfinite(ev).all() and math.isfinite(radius) and math.isfinite(norm)):
        raise NonFiniteError(f"the spectrum of W overflowed (radius {radius}, norm {norm}), "
                             f"though W is finite: {_overflow_hint(W.dtype)}")
    return Spectrum(ev, radius, norm, symmetric)


# ---------------------------------------------------------------------------------------
# Gradient checking: central differences, element by element, aware of kinks
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GradCheck:
    """One element of a gradient check: where, the two values, the tolerance, and the
    status: "pass", "fail", or "kink" (the state changed within +-step: not checked)."""
    name: str
    index: tuple
    numeric: float
    analytic: float
    tolerance: float
    status: str


@dataclass(frozen=True)
class GradCheckReport:
    """What ``check_gradients`` found. ``ok`` only when at least one element was checked
    and none failed: elements skipped at a kink are not passes."""
    checks: tuple
    step: float

    @property
    def n_checked(self) -> int:
        return sum(c.status != "kink" for c in self.checks)

    @property
    def n_kinks(self) -> int:
        return sum(c.status == "kink" for c in self.checks)

    def failures(self) -> list:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def ok(self) -> bool:
        return self.n_checked > 0 and not self.failures()

    def __str__(self):
        lines = [f"gradient check, central differences with step {self.step:g}: "
                 f"{self.n_checked} elements checked, {len(self.failures())} failed, "
                 f"{self.n_kinks} skipped at a kink"]
        for c in self.failures()[:10]:
            lines.append(f"  FAIL {c.name}{list(c.index)}: numeric {c.numeric:.6g}, "
                         f"analytic {c.analytic:.6g}, |difference| "
                         f"{abs(c.numeric - c.analytic):.3g} > tolerance {c.tolerance:.3g}")
        return "\n".join(lines)


def check_gradients(loss: Callable, arrays: dict, grads: dict, *, state=None,
                    step: float = 1e-5, rtol: float = 1e-6, atol=None) -> GradCheckReport:
    """Check analytic gradients against central differences, element by element.

        numeric = (L(theta + step e_i) - L(theta - step e_i)) / (2 step)
        passes when |numeric - analytic| <= rtol |analytic| + atol

    Inputs
    - loss: a function of no arguments returning the loss (a float) computed from the
      arrays of ``arrays``. Each element is perturbed in place and always restored, so
      ``loss`` must read the arrays themselves, not copies.
    - arrays: {name: float64 ndarray}, the variables to check (parameters, x, h0, ...).
    - grads: {name: array of the same shape}: the analytic gradients, same keys.
    - state: optional function of no arguments returning a discrete state of the model
      (for a ReLU network, ``lambda: h > 0`` of a forward pass made inside ``loss``, or
      the masks themselves). Where it differs at theta + step or theta - step from its
      value at theta, the difference quotient crosses a kink and means nothing there: the
      element is reported as "kink", neither passed nor failed. A test that must not skip
      rejects such draws (hypothesis ``assume(report.n_kinks == 0)``).
    - step: the difference step (1e-5 balances truncation, O(step^2), against rounding,
      O(eps / step), in float64).
    - rtol: relative tolerance for the truncation term (1e-6 with step 1e-5).
    - atol: absolute tolerance; default 100 eps max(|L|, 1) / step: each loss evaluation
      carries a rounding error of a few eps |L| (100 eps covers sums of many terms),
      divided by the step in the difference quotient.

    Returns a GradCheckReport (``.ok``, ``.failures()``, ``str(report)``). Example::

        params, x, target = ..., ..., ...
        L, g = nr.loss_and_grads(params, x, target, nonlinearity="tanh")
        f = lambda: float(nr.loss_and_grads(params, x, target, nonlinearity="tanh")[0])
        report = nr.check_gradients(f, dict(params, x=x), g)
        assert report.ok, report
    """
    if not callable(loss):
        raise TypeError(f"loss must be a function of no arguments, got {type(loss).__name__}")
    if state is not None and not callable(state):
        raise TypeError(f"state must be None or a function of no arguments, got "
                        f"{type(state).__name__}")
    _check_real("step", step, "a number in (0, 1), the difference step",
                lambda f: 0 < f < 1)
    _check_rate("rtol", rtol)
    if atol is not None:
        _check_rate("atol", atol)
    step, rtol = float(step), float(rtol)
    _check_grad_check_arrays(arrays, grads)
    L0 = _loss_value(loss)
    atol = 100 * np.finfo(np.float64).eps * max(abs(L0), 1.0) / step if atol is None \
        else float(atol)
    s0 = None if state is None else np.asarray(state()).copy()
    checks = []
    for name, a in arrays.items():
        g = np.asarray(grads[name], dtype=np.float64)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            try:
                a[idx] = old + step
                Lp, sp = _loss_value(loss), None if state is None else np.asarray(state())
                a[idx] = old - step
                Lm, sm = _loss_value(loss), None if state is None else np.asarray(state())
            finally:
                a[idx] = old
            num, ana = (Lp - Lm) / (2 * step), float(g[idx])
            tol = rtol * abs(ana) + atol
            if s0 is not None and not (np.array_equal(sp, s0) and np.array_equal(sm, s0)):
                status = "kink"
            else:
                status = "pass" if abs(num - ana) <= tol else "fail"
            checks.append(GradCheck(name, tuple(int(i) for i in idx), num, ana, tol, status))
    return GradCheckReport(tuple(checks), float(step))


def _loss_value(loss) -> float:
    v = loss()
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"loss must return a number, got {type(v).__name__}")
    if not math.isfinite(float(v)):
        raise NonFiniteError(f"loss returned {float(v)}, not a finite number")
    return float(v)


def _check_grad_check_arrays(arrays, grads) -> None:
    for argname, d in (("arrays", arrays), ("grads", grads)):
        if not isinstance(d, dict) or not d:
            raise TypeError(f"{argname} must be a non-empty dict of arrays, got "
                            f"{type(d).__name__ if not isinstance(d, dict) else 'an empty dict'}")
    if set(arrays) != set(grads):
        raise ValueError(f"grads must have the keys of arrays, {sorted(map(str, arrays))}, "
                         f"got {sorted(map(str, grads))}")
    for k, a in arrays.items():
        _as_array(f"arrays[{k!r}]", a)
        _check_float(f"arrays[{k!r}]", a, np.float64, "the check's")
        _check_finite(f"arrays[{k!r}]", a)
        if not a.flags.writeable:
            raise ValueError(f"arrays[{k!r}] must be writeable: each element is perturbed "
                             "in place and restored")
        g = _as_array(f"grads[{k!r}]", grads[k])
        if g.shape != a.shape:
            raise ValueError(f"grads[{k!r}] must have shape {a.shape} (that of "
                             f"arrays[{k!r}]), got {g.shape}")
        if g.dtype.kind != "f":
            raise TypeError(f"grads[{k!r}] must hold floats, got dtype {g.dtype.name}")
        _check_finite(f"grads[{k!r}]", g)


# ---------------------------------------------------------------------------------------
# Validation: every error names the argument, what was expected and what came.
# ---------------------------------------------------------------------------------------
#
# What the public functions accept, decided here once for all of them:
# - Arrays (_as_array): a plain numpy.ndarray (any view, memory layout or writeability) or
#   a numpy.memmap, whose arithmetic is ndarray's (its results are plain arrays), with a
#   dtype in the machine's byte order. Refused with a TypeError: numpy.matrix (* and **
#   are matrix products and results stay 2-D: the numbers would be silently wrong),
#   masked arrays (the mask is ignored by the arithmetic, and a masked NaN slips past the
#   finiteness check), every other ndarray subclass (it may change what the operators
#   mean), other byte orders, and anything that is not an ndarray (lists, scalars, torch
#   tensors). Nothing is converted: the caller decides how.
# - Sizes (_check_size): ints (Python or NumPy, not bool) below 2**63; an array that
#   cannot fit in the machine's physical memory is refused before it is allocated
#   (_check_memory).
# - Real numbers (_check_real): int or float (Python or NumPy, not bool, not complex)
#   that converts to a float without overflow.
# - Non-finite values: a NonFiniteError (a ValueError), for an argument and for a result
#   that overflowed (_check_states, _check_results).

_SIZE_LIMIT = 2 ** 63
_LOSS_ARGS = "params, x, target and h0"       # the arguments of a loss evaluation


def _short(v, limit: int = 80) -> str:
    """repr(v) for an error message: huge ints by their size (their repr may be refused
    by Python's int-to-string limit), long reprs cut."""
    if isinstance(v, int) and not isinstance(v, bool) and not -10 ** 40 < v < 10 ** 40:
        digits = int(abs(v).bit_length() * 0.30103) + 1
        return f"{'-' if v < 0 else ''}an int of about {digits} digits"
    try:
        r = repr(v)
    except Exception:  # noqa: BLE001  (a repr that fails must not hide the real error)
        r = f"<{type(v).__name__}>"
    return r if len(r) <= limit else r[:limit - 3] + "..."


def _check_choice(argname: str, value, valid) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{argname} must be one of {', '.join(map(repr, valid))}, "
                         f"got {_short(value)}")
    return value


def _check_size(argname: str, n, minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{argname} must be an int >= {minimum}, "
                        f"got {type(n).__name__} {_short(n)}")
    if n < minimum:
        raise ValueError(f"{argname} must be an int >= {minimum}, got {_short(n)}")
    if n >= _SIZE_LIMIT:
        raise ValueError(f"{argname} must be an int >= {minimum} and below 2**63, "
                         f"got {_short(n)}")
    return int(n)


def _check_real(argname: str, v, what: str, ok=math.isfinite) -> float:
    """v as a float when v is a real number (int or float, Python or NumPy; not bool or
    complex) within float's range and ok(float(v)) holds; else ValueError '{argname}
    must be {what}'. Only checks: callers compute with v itself, as before."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{argname} must be {what}, got {_short(v)}")
    try:
        with np.errstate(over="ignore"):
            f = float(v)
    except OverflowError:
        raise ValueError(f"{argname} must be {what}, got {_short(v)}, which is too large "
                         f"for a float (at most {np.finfo(np.float64).max:.4g})") from None
    if not ok(f):
        raise ValueError(f"{argname} must be {what}, got {_short(v)}")
    return f


def _check_rate(name, v, positive=False):
    _check_real(name, v, f"a finite number {'>' if positive else '>='} 0",
                lambda f: math.isfinite(f) and (f > 0 if positive else f >= 0))


def _check_matrix_size(n) -> int:
    """n of an initialiser's (n, n) matrix: a size whose matrices (two at a time) fit."""
    n = _check_size("n", n)
    _check_memory(f"n={n} (an n x n float64 matrix, two at a time)", 2 * 8 * n * n)
    return n


def _check_dtype_arg(argname, dtype) -> np.dtype:
    """A dtype argument: float32 or float64 (a NumPy type, dtype or name) in this
    machine's byte order. None is refused (np.dtype(None) would be float64)."""
    what = f"{argname} must be np.float32 or np.float64 (or 'float32', 'float64')"
    if dtype is None:
        raise TypeError(f"{what}, got None")
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise TypeError(f"{what}, got {type(dtype).__name__} {_short(dtype)}") from None
    if dt not in (np.float32, np.float64) or not dt.isnative:
        raise TypeError(f"{what}, got {_dtype_text(dt)}")
    return dt


def _eigenvalues(argname, W, symmetric):
    """eigvalsh or eigvals of W, with LAPACK's failure named after the argument."""
    try:
        return np.linalg.eigvalsh(W) if symmetric else np.linalg.eigvals(W)
    except np.linalg.LinAlgError as e:           # a ValueError, as the other errors
        raise np.linalg.LinAlgError(f"the eigenvalues of {argname} could not be computed: "
                                    f"{e}") from None


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator (e.g. "
                        f"np.random.default_rng(0)), got {type(rng).__name__}")
    return rng


def _physical_memory():
    """The machine's physical memory in bytes, or None where the system does not say:
    os.sysconf and its SC_PAGE_SIZE / SC_PHYS_PAGES names exist on Linux and most POSIX
    systems; elsewhere (Windows, for one) the up-front memory check is skipped and an
    oversized request meets NumPy's own MemoryError instead."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _gib(nbytes) -> str:
    return f"{nbytes / 2 ** 30:.4g} GiB"


def _check_memory(what: str, nbytes: int) -> None:
    """Refuse up front a computation whose arrays alone (nbytes, a lower bound) exceed the
    machine's physical memory, rather than let NumPy try and raise MemoryError, or swap.
    ``what`` names the arguments that set the size."""
    available = _physical_memory()
    if available is not None and nbytes > available:
        raise ValueError(f"{what} would need at least {_gib(nbytes)} of memory ({nbytes} "
                         f"bytes), more than this machine's physical memory of "
                         f"{_gib(available)} ({available} bytes)")


def _dtype_text(dt) -> str:
    """A dtype's name, with its byte order when that is not the machine's."""
    dt = np.dtype(dt)
    if dt.isnative:
        return dt.name
    order = {">": "big-endian", "<": "little-endian"}.get(dt.byteorder, "non-native")
    return f"{dt.name} ({dt.str!r}, {order})"


def _as_array(argname: str, a) -> np.ndarray:
    """The one place that decides which arrays are accepted (see the top of this section)."""
    t = type(a)
    if t is not np.ndarray and t is not np.memmap:
        if not isinstance(a, np.ndarray):
            hint = (" (a torch tensor? convert it with .detach().cpu().numpy())"
                    if hasattr(a, "detach") else "")
            raise TypeError(f"{argname} must be a numpy.ndarray, got {t.__name__}{hint}")
        if isinstance(a, np.ma.MaskedArray):
            why = (f"a masked array, whose mask the computation would ignore; pass "
                   f"{argname}.filled(value) or leave out the masked entries")
        elif isinstance(a, np.matrix):
            why = ("a numpy.matrix, whose * is a matrix product and whose results stay "
                   f"2-D; pass np.asarray({argname})")
        else:
            why = (f"{t.__module__}.{t.__qualname__}, a subclass of numpy.ndarray, which "
                   f"may change what the operators mean; pass np.asarray({argname})")
        raise TypeError(f"{argname} must be a plain numpy.ndarray (or numpy.memmap), "
                        f"got {why}")
    if not a.dtype.isnative:
        native = a.dtype.newbyteorder("=").str
        raise TypeError(f"{argname} must be in this machine's byte order ({native!r}), got "
                        f"{_dtype_text(a.dtype)}; convert it with "
                        f"{argname}.astype({native!r}) or "
                        f"{argname}.byteswap().view({argname}.dtype.newbyteorder())")
    return a


def _check_finite(argname: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise NonFiniteError(f"{argname} must be finite, got {a[tuple(bad)]} at index "
                             f"{tuple(int(i) for i in bad)}")


def _check_float(argname: str, a: np.ndarray, dtype, whose: str = "the parameters'") -> None:
    if a.dtype != dtype:
        name = np.dtype(dtype).name
        raise TypeError(f"{argname} must have dtype {name} ({whose} dtype), got "
                        f"{_dtype_text(a.dtype)}; convert it with .astype(np.{name})")


def _shape_str(names_and_sizes) -> str:
    """"(T, B=2, H=3)" from (("T", None), ("B", 2), ("H", 3))."""
    return "(" + ", ".join(k if v is None else f"{k}={v}" if k else str(v)
                           for k, v in names_and_sizes) + ")"


def _check_shape(argname: str, a: np.ndarray, expected) -> None:
    """expected: tuple of (name, size) pairs; size None means any."""
    ok = a.ndim == len(expected) and all(
        size is None or a.shape[i] == size for i, (_, size) in enumerate(expected))
    if not ok:
        raise ValueError(f"{argname} must have shape {_shape_str(expected)}, "
                         f"got {tuple(a.shape)}")


def _key_list(keys) -> str:
    return ", ".join(k if isinstance(k, str) else _short(k) for k in keys)


def check_params(params, *, readout: bool = True):
    """Validate a parameter dict; return (H, D, O, dtype). O is None without readout.

    Raises KeyError-free, readable errors: missing or unknown keys, non-arrays, wrong
    ranks, inconsistent shapes, mixed or non-float dtypes, non-finite values. Without
    readout, W_yh and b_y may be absent (they are not read); when present they are checked
    all the same, and no other key may be there.
    """
    return _check_param_dict(params, "params", readout)


def _check_param_dict(d, argname: str, readout: bool = True, extra=(), finite: bool = True):
    """check_params for a dict named ``argname`` (params, grads, ...) that may also hold
    the keys ``extra`` (not checked here); without ``finite`` values are not scanned."""
    if not isinstance(d, dict):
        raise TypeError(f"{argname} must be a dict of arrays, got {type(d).__name__}")
    readout = readout or "W_yh" in d or "b_y" in d      # present: checked, though unread
    names = PARAM_NAMES if readout else RECURRENT_NAMES
    missing = [k for k in names if k not in d]
    if missing:
        raise ValueError(f"{argname} is missing {', '.join(missing)}; expected keys "
                         f"{', '.join(names)}, got {_key_list(d) or 'none'}")
    unknown = [k for k in d if k not in PARAM_NAMES and k not in extra]
    if unknown:
        hint = (" (the nonlinearity is an argument of forward and loss_and_grads, not a "
                "parameter)" if "nonlinearity" in unknown else "")
        raise ValueError(f"{argname} has unknown keys {_key_list(unknown)}; it may hold "
                         f"only {', '.join(PARAM_NAMES + tuple(extra))}{hint}")
    for k in names:
        _as_array(f"{argname}[{k!r}]", d[k])
    W_hh = d["W_hh"]
    if W_hh.ndim != 2 or W_hh.shape[0] != W_hh.shape[1] or W_hh.shape[0] < 1:
        raise ValueError(f"{argname}['W_hh'] must have shape (H, H), got {W_hh.shape}")
    H = W_hh.shape[0]
    dtype = W_hh.dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{argname}['W_hh'] must have dtype float32 or float64, "
                        f"got {_dtype_text(dtype)}")
    W_hx = d["W_hx"]
    if W_hx.ndim != 2 or W_hx.shape[0] != H or W_hx.shape[1] < 1:
        raise ValueError(f"{argname}['W_hx'] must have shape (H={H}, D), got {W_hx.shape}")
    D = W_hx.shape[1]
    _check_shape(f"{argname}['b_h']", d["b_h"], (("H", H),))
    O = None
    if readout:
        W_yh = d["W_yh"]
        if W_yh.ndim != 2 or W_yh.shape[1] != H or W_yh.shape[0] < 1:
            raise ValueError(f"{argname}['W_yh'] must have shape (O, H={H}), "
                             f"got {W_yh.shape}")
        O = W_yh.shape[0]
        _check_shape(f"{argname}['b_y']", d["b_y"], (("O", O),))
    for k in names:
        _check_float(f"{argname}[{k!r}]", d[k], dtype)
        if finite:
            _check_finite(f"{argname}[{k!r}]", d[k])
    return H, D, O, dtype


def _check_x(x, D, dtype):
    _as_array("x", x)
    if x.ndim != 3 or x.shape[2] != D or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must have shape (T, B, D={D}) with T, B >= 1, "
                         f"got {tuple(x.shape)}")
    _check_float("x", x, dtype)
    _check_finite("x", x)
    return x.shape[0], x.shape[1]


def _check_h0(h0, B, H, dtype):
    if h0 is None:
        return np.zeros((B, H), dtype=dtype)
    _as_array("h0", h0)
    _check_shape("h0", h0, (("B", B), ("H", H)))
    _check_float("h0", h0, dtype)
    _check_finite("h0", h0)
    return h0


def _check_forward_args(params, x, h0, nonlinearity):
    """The checks of ``forward`` and ``forward_per_step``; returns h0 as an array."""
    _check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    H, D, _, dtype = check_params(params, readout=False)
    T, B = _check_x(x, D, dtype)
    _check_memory(f"x of shape {x.shape} with H={H}", (T + 1) * B * H * dtype.itemsize)
    return _check_h0(h0, B, H, dtype)


CACHE_KEYS = ("x", "hs", "W_hx", "W_hh", "nonlinearity")


def _check_cache(cache):
    """The cache of forward: its keys, types, shapes and dtypes against each other, and
    finite values (the cache holds the caller's x and weights, which may have changed).
    Returns (T, B, D, H, dtype)."""
    what = "cache must be the cache returned by forward (or forward_per_step)"
    if not isinstance(cache, dict):
        raise TypeError(f"{what}, a dict; got {type(cache).__name__}")
    missing = [k for k in CACHE_KEYS if k not in cache]
    extra = [k for k in cache if k not in CACHE_KEYS]
    if missing or extra:
        raise ValueError(f"{what}, with exactly the keys {', '.join(CACHE_KEYS)}; "
                         + (f"missing {', '.join(missing)}" if missing else "")
                         + ("; " if missing and extra else "")
                         + (f"unexpected {_key_list(extra)}" if extra else ""))
    try:
        _check_choice("cache['nonlinearity']", cache["nonlinearity"], NONLINEARITIES)
        x, hs, W_hx, W_hh = (_as_array(f"cache[{k!r}]", cache[k])
                             for k in ("x", "hs", "W_hx", "W_hh"))
        if W_hh.ndim != 2 or W_hh.shape[0] != W_hh.shape[1] or W_hh.shape[0] < 1:
            raise ValueError(f"cache['W_hh'] must have shape (H, H), got {W_hh.shape}")
        H, dtype = W_hh.shape[0], W_hh.dtype
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"cache['W_hh'] must have dtype float32 or float64, "
                            f"got {_dtype_text(dtype)}")
        if W_hx.ndim != 2 or W_hx.shape[0] != H or W_hx.shape[1] < 1:
            raise ValueError(f"cache['W_hx'] must have shape (H={H}, D), got {W_hx.shape}")
        D = W_hx.shape[1]
        if x.ndim != 3 or x.shape[2] != D or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"cache['x'] must have shape (T, B, D={D}) with T, B >= 1, "
                             f"got {tuple(x.shape)}")
        T, B = x.shape[:2]
        _check_shape("cache['hs']", hs, (("T+1", T + 1), ("B", B), ("H", H)))
        for k, a in (("x", x), ("hs", hs), ("W_hx", W_hx), ("W_hh", W_hh)):
            _check_float(f"cache[{k!r}]", a, dtype, "cache['W_hh']'s")
            _check_finite(f"cache[{k!r}]", a)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{what}: {e}") from None
    return T, B, D, H, dtype


def _check_dh(dh, T, B, H, dtype):
    """backward's dh: (T, B, H), finite, of the cache's dtype."""
    _as_array("dh", dh)
    _check_shape("dh", dh, (("T", T), ("B", B), ("H", H)))
    _check_float("dh", dh, dtype, "the cache's")
    _check_finite("dh", dh)


def _check_bool(argname, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{argname} must be True or False, got {type(v).__name__} "
                        f"{_short(v)}")
    return bool(v)


def _check_h(h, H, dtype, output):
    """readout's and readout_backward's h: (T, B, H) with T, B >= 1, of the params' dtype,
    finite where it is read (h_T for "last", every step for "all"). Returns (T, B)."""
    _as_array("h", h)
    if h.ndim != 3 or h.shape[2] != H or h.shape[0] < 1 or h.shape[1] < 1:
        raise ValueError(f"h must have shape (T, B, H={H}) with T, B >= 1, "
                         f"got {tuple(h.shape)}")
    _check_float("h", h, dtype)
    if output == "last":
        if not np.all(np.isfinite(h[-1])):
            bad = np.argwhere(~np.isfinite(h[-1]))[0]
            raise NonFiniteError(f"h must be finite at the read step T (h[-1]), got "
                                 f"{h[-1][tuple(bad)]} at index "
                                 f"{(h.shape[0] - 1,) + tuple(int(i) for i in bad)}")
    else:
        _check_finite("h", h)
    return h.shape[0], h.shape[1]


def _check_target(target, loss, output, T, B, O, dtype):
    _as_array("target", target)
    lead = (("B", B),) if output == "last" else (("T", T), ("B", B))
    if loss == "mse":
        _check_shape("target", target, lead + (("O", O),))
        _check_float("target", target, dtype)
        _check_finite("target", target)
    else:
        _check_shape("target", target, lead)
        _check_labels(target, O)


def _check_labels(target, O):
    if not np.issubdtype(target.dtype, np.integer):
        raise TypeError(f"target must hold integer class labels for loss='xent', "
                        f"got dtype {_dtype_text(target.dtype)}")
    if target.size and (target.min() < 0 or target.max() >= O):
        bad = target.min() if target.min() < 0 else target.max()
        raise ValueError(f"target labels must lie in [0, O={O}), got {bad}")


def _check_loss_args(params, x, target, loss, output, nonlinearity, h0):
    """The checks of ``loss_and_grads`` and its relatives; returns h0 as an array."""
    _check_choice("loss", loss, LOSSES)
    _check_choice("output", output, OUTPUTS)
    _check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    H, D, O, dtype = check_params(params)
    T, B = _check_x(x, D, dtype)
    _check_target(target, loss, output, T, B, O, dtype)
    # hs, the f'(z) / delta array and the read-out's dh (T, B, H), dx (T, B, D)
    _check_memory(f"x of shape {x.shape} with H={H}",
                  ((T + 1) * B * H + T * B * H + T * B * D) * dtype.itemsize)
    return _check_h0(h0, B, H, dtype)


def _check_grads(grads, dtype, shapes=None, *, finite: bool = True):
    """A gradient dict: the five parameters' gradients (of the shapes of ``shapes``, the
    params, when given, else consistent with each other), and optionally "x" (T, B, D) and
    "h0" (B, H), as loss_and_grads returns them; nothing else. x and h0 are passed
    through by the optimiser functions, so their values are not scanned."""
    if shapes is None:
        H, D, _, dtype = _check_param_dict(grads, "grads", extra=("x", "h0"),
                                           finite=finite)
    else:
        if not isinstance(grads, dict):
            raise TypeError(f"grads must be a dict of arrays, got {type(grads).__name__}")
        for k in PARAM_NAMES:
            if k not in grads:
                raise ValueError(f"grads is missing {k}")
            g = _as_array(f"grads[{k!r}]", grads[k])
            if g.shape != shapes[k].shape:
                raise ValueError(f"grads[{k!r}] must have shape {shapes[k].shape}, "
                                 f"got {g.shape}")
            _check_float(f"grads[{k!r}]", g, dtype)
            if finite:
                _check_finite(f"grads[{k!r}]", g)
        unknown = [k for k in grads if k not in PARAM_NAMES and k not in ("x", "h0")]
        if unknown:
            raise ValueError(f"grads has unknown keys {_key_list(unknown)}; it may hold "
                             f"only {', '.join(PARAM_NAMES)}, x, h0")
        H, D = shapes["W_hx"].shape
    B = None
    if "x" in grads:
        gx = _as_array("grads['x']", grads["x"])
        if gx.ndim != 3 or gx.shape[2] != D or gx.shape[0] < 1 or gx.shape[1] < 1:
            raise ValueError(f"grads['x'] must have shape (T, B, D={D}), got {gx.shape}")
        _check_float("grads['x']", gx, dtype)
        B = gx.shape[1]
    if "h0" in grads:
        gh = _as_array("grads['h0']", grads["h0"])
        _check_shape("grads['h0']", gh, (("B", B), ("H", H)))
        _check_float("grads['h0']", gh, dtype)
    return dtype


def _check_step_args(params, grads, state, state_name):
    """Validate the arguments of an optimiser step; return the parameters' dtype. The
    values of grads and of the state are checked for finiteness after the step, from its
    results (_check_step_results): one scan instead of two."""
    dtype = check_params(params)[3]
    _check_grads(grads, dtype, params, finite=False)
    if state is not None:
        if not isinstance(state, dict):
            raise TypeError(f"{state_name} must be None (the first step) or the dict of "
                            f"arrays the previous step returned, got {type(state).__name__}")
        for k in PARAM_NAMES:
            p = params[k]
            if k not in state:
                raise ValueError(f"{state_name}[{k!r}] must have shape {p.shape}, got missing")
            v = _as_array(f"{state_name}[{k!r}]", state[k])
            if v.shape != p.shape:
                raise ValueError(f"{state_name}[{k!r}] must have shape {p.shape}, "
                                 f"got {v.shape}")
            _check_float(f"{state_name}[{k!r}]", v, dtype)
            if state_name == "square_avg" and np.any(v < 0):
                raise ValueError(f"square_avg[{k!r}] must be >= 0 (a running mean of "
                                 f"squares), got {v.min()}")
        unknown = [k for k in state if k not in PARAM_NAMES]
        if unknown:
            raise ValueError(f"{state_name} has unknown keys {_key_list(unknown)}; it may "
                             f"hold only {', '.join(PARAM_NAMES)}")
    return dtype


def _check_step_results(params, grads, state, state_name, new_p, new_s, what):
    """After an optimiser step: every new parameter (and new state) finite, else a
    NonFiniteError naming the non-finite argument or, when all were finite, saying that
    the update overflowed. A NaN or inf in grads or in the state always reaches the new
    parameters or the new state, so checking those checks the arguments too."""
    for k in PARAM_NAMES:
        p_ok = np.isfinite(new_p[k]).all()
        if p_ok and (new_s is None or np.isfinite(new_s[k]).all()):
            continue
        _check_finite(f"grads[{k!r}]", grads[k])
        if state is not None:
            _check_finite(f"{state_name}[{k!r}]", state[k])
        which = state_name if p_ok else "params"
        raise NonFiniteError(f"the update overflowed: the new {which}[{k!r}] is not "
                             f"finite, though params, grads and {state_name} are finite "
                             f"({what} is too large): "
                             f"{_overflow_hint(params[k].dtype)}")


def _check_square(argname: str, W) -> np.ndarray:
    _as_array(argname, W)
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] < 1:
        raise ValueError(f"{argname} must be a square matrix of shape (N, N) with N >= 1, "
                         f"got shape {tuple(W.shape)}")
    if W.dtype not in (np.float32, np.float64):
        raise TypeError(f"{argname} must have dtype float32 or float64, "
                        f"got {_dtype_text(W.dtype)}")
    _check_finite(argname, W)
    return W


# --- results: overflow from finite arguments -------------------------------------------

def _overflow_hint(dtype) -> str:
    return (f"their magnitudes are too large for {np.dtype(dtype).name} (largest "
            f"{np.finfo(dtype).max:.3g}); scale the inputs down or the weights")


def _check_states(h, argnames: str) -> None:
    """The hidden states h (T, B, H) of a ReLU or tanh recurrence all finite, else a
    NonFiniteError naming the first step that is not. ReLU states lie in [0, inf] (or are
    NaN) and tanh states in [-1, 1] (or NaN); max propagates NaN, so one reduction is an
    exact test; the step is looked for only on failure."""
    if np.isfinite(h.max()):
        return
    T = h.shape[0]
    bad = ~np.isfinite(h).reshape(T, -1).all(axis=1)               # (T,)
    t = int(np.argmax(bad)) + 1
    b, i = (int(j) for j in np.argwhere(~np.isfinite(h[t - 1]))[0])
    raise NonFiniteError(f"the recurrence overflowed: h_t is not finite from step t={t} "
                         f"of T={T} on (row {b}, unit {i}: {h[t - 1, b, i]}), though "
                         f"{argnames} are finite: {_overflow_hint(h.dtype)}")


def _first_bad(arrays):
    """The name of the first array of (name, array) pairs with a non-finite value."""
    for name, a in arrays:
        if not np.isfinite(a).all():
            return name
    return None


def _check_readout_result(y, output, argnames):
    """The read-out y finite, else a NonFiniteError saying at which step it overflowed."""
    if np.isfinite(y).all():
        return
    where = ""
    if output == "all":
        t = int(np.argmax(~np.isfinite(y).reshape(y.shape[0], -1).all(axis=1))) + 1
        where = f" at step t={t} of T={y.shape[0]}"
    raise NonFiniteError(f"the read-out y = W_yh h_t + b_y overflowed{where}, though "
                         f"{argnames} are finite: {_overflow_hint(y.dtype)}")


def _bptt_overflow(name, cache, dh, output, argnames):
    """The NonFiniteError for a gradient ``name`` that BPTT made non-finite: at which step
    (dL/dh_t, from T down), found by running BPTT again with g."""
    T = cache["x"].shape[0]
    with np.errstate(all="ignore"):
        g = _bptt(cache, dh, output, return_dh=True)[3]          # (T, B, H)
    bad = ~np.isfinite(g).reshape(T, -1).all(axis=1)
    if bad.any():
        t = int(np.nonzero(bad)[0].max()) + 1
        where = (f"at step t={t} of T={T}, counting back from T (dL/dh_t is not finite "
                 f"there)")
    else:
        where = ("in the products with the inputs or the sums over the steps (every "
                 "dL/dh_t is finite)")
    return NonFiniteError(f"back-propagation through time overflowed {where}, so {name} "
                          f"is not finite, though {argnames} are finite: "
                          f"{_overflow_hint(cache['hs'].dtype)}")


# ---------------------------------------------------------------------------------------
# Backend bridge: PyTorch weight names, golden-fixture files and a tensor-by-tensor checker
# (NumPy only: nothing here imports torch)
# ---------------------------------------------------------------------------------------

TORCH_KEYS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
              "readout.weight", "readout.bias")
FIXTURE_FORMAT_VERSION = 2
FIXTURE_INPUT_KEYS = ("x", "h0", "target") + PARAM_NAMES + ("nonlinearity", "loss_kind",
                                                           "output")
FIXTURE_OUTPUT_KEYS = ("h", "y", "loss", "grad_W_hx", "grad_W_hh", "grad_b_h",
                       "grad_W_yh", "grad_b_y", "grad_x", "grad_h0")
FIXTURE_KEYS = FIXTURE_INPUT_KEYS + FIXTURE_OUTPUT_KEYS + ("format_version",)


def to_torch_state_dict(params: dict) -> dict:
    """The parameters under the names of a ``torch.nn.RNN`` (one layer, unidirectional)
    with a ``torch.nn.Linear`` read-out attached as its ``readout`` attribute.

        weight_ih_l0 = W_hx (H, D)     weight_hh_l0 = W_hh (H, H)
        bias_ih_l0   = b_h  (H,)       bias_hh_l0   = 0    (H,)
        readout.weight = W_yh (O, H)   readout.bias = b_y  (O,)

    PyTorch adds two biases, h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh); this model has
    one, so b_h goes to bias_ih and bias_hh is zero. The values are NumPy copies of the
    params' dtype; load them with ``module.load_state_dict({k: torch.from_numpy(v) ...})``.
    """
    check_params(params)
    p = params
    return {"weight_ih_l0": p["W_hx"].copy(), "weight_hh_l0": p["W_hh"].copy(),
            "bias_ih_l0": p["b_h"].copy(), "bias_hh_l0": np.zeros_like(p["b_h"]),
            "readout.weight": p["W_yh"].copy(), "readout.bias": p["b_y"].copy()}


def from_torch_state_dict(state) -> dict:
    """Parameters from the six arrays of ``to_torch_state_dict``'s layout.

    b_h = bias_ih_l0 + bias_hh_l0 (the two PyTorch biases act as one). Values must be NumPy
    arrays of one float dtype: convert torch tensors first, e.g.
    ``{k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}``. Every shape
    is checked and an error names the tensor. Use it for parameters only, not gradients:
    the gradient of b_h equals the gradient of either bias, not their sum.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of arrays, got {type(state).__name__}")
    missing = [k for k in TORCH_KEYS if k not in state]
    extra = [k for k in state if k not in TORCH_KEYS]
    if missing or extra:
        raise ValueError(
            "state must hold exactly the keys " + ", ".join(TORCH_KEYS) + " (a one-layer, "
            "unidirectional torch.nn.RNN with a Linear read-out named 'readout'); "
            + (f"missing {', '.join(missing)}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"unexpected {_key_list(extra)}" if extra else ""))
    for k in TORCH_KEYS:
        _as_array(f"state[{k!r}]", state[k])
    W_hh = state["weight_hh_l0"]
    if W_hh.ndim != 2 or W_hh.shape[0] != W_hh.shape[1] or W_hh.shape[0] < 1:
        raise ValueError(f"state['weight_hh_l0'] must have shape (H, H), got {W_hh.shape}")
    H = W_hh.shape[0]
    W_ih = state["weight_ih_l0"]
    if W_ih.ndim != 2 or W_ih.shape[0] != H or W_ih.shape[1] < 1:
        raise ValueError(f"state['weight_ih_l0'] must have shape (H={H}, D), "
                         f"got {W_ih.shape}")
    W_out = state["readout.weight"]
    if W_out.ndim != 2 or W_out.shape[1] != H or W_out.shape[0] < 1:
        raise ValueError(f"state['readout.weight'] must have shape (O, H={H}), "
                         f"got {W_out.shape}")
    O = W_out.shape[0]
    _check_shape("state['bias_ih_l0']", state["bias_ih_l0"], (("H", H),))
    _check_shape("state['bias_hh_l0']", state["bias_hh_l0"], (("H", H),))
    _check_shape("state['readout.bias']", state["readout.bias"], (("O", O),))
    dtype = W_hh.dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"state['weight_hh_l0'] must have dtype float32 or float64, "
                        f"got {_dtype_text(dtype)}")
    for k in TORCH_KEYS:
        _check_float(f"state[{k!r}]", state[k], dtype, "state['weight_hh_l0']'s")
        _check_finite(f"state[{k!r}]", state[k])
    with np.errstate(all="ignore"):
        b_h = state["bias_ih_l0"] + state["bias_hh_l0"]
    if not np.isfinite(b_h).all():
        raise NonFiniteError("state['bias_ih_l0'] + state['bias_hh_l0'] overflows "
                             f"{dtype.name}, though both are finite")
    return {"W_hx": W_ih.copy(), "W_hh": W_hh.copy(), "b_h": b_h,
            "W_yh": W_out.copy(), "b_y": state["readout.bias"].copy()}


def fixture_outputs(case: dict) -> dict:
    """This reference run on one fixture case: the function ``verify-fixtures`` expects.

    Inputs: a dict with (at least) FIXTURE_INPUT_KEYS: x, h0, target, the five parameters
    and the conventions nonlinearity, loss_kind, output (str or 0-d string arrays).
    Returns {"h", "y", "loss" (0-d array), "grad_W_hx", ..., "grad_x", "grad_h0"}.
    Errors are those of ``loss_and_grads``, prefixed "case is not a valid fixture case".
    """
    what = "case is not a valid fixture case"
    if not isinstance(case, dict):
        raise TypeError(f"case must be a dict of a fixture's arrays, got "
                        f"{type(case).__name__}")
    missing = [k for k in FIXTURE_INPUT_KEYS if k not in case]
    if missing:
        raise ValueError(f"{what}: it is missing {', '.join(missing)}")
    conv = {}
    for k in ("nonlinearity", "loss_kind", "output"):
        v = case[k]
        if not (isinstance(v, str) or (type(v) is np.ndarray and v.shape == ()
                                       and v.dtype.kind == "U")):
            raise TypeError(f"{what}: case[{k!r}] must be a str or a 0-d string array, "
                            f"got {type(v).__name__} {_short(v)}")
        conv[k] = str(v)
    params = {k: case[k] for k in PARAM_NAMES}
    try:
        if case["h0"] is None:
            raise TypeError("case['h0'] must be an array, got None")
        L, dy, h, y, cache = _loss_forward(params, case["x"], case["target"],
                                           conv["loss_kind"], conv["output"],
                                           conv["nonlinearity"], case["h0"])
        grads = _checked_grads_from(dy, params, h, cache, conv["output"])
    except (TypeError, ValueError) as e:
        raise type(e)(f"{what}: {e}") from None
    out = {"h": np.array(h), "y": y, "loss": np.asarray(h.dtype.type(L))}
    out.update({f"grad_{k}": v for k, v in grads.items()})
    return out


def _fixture_error(path, what):
    return ValueError(f"{path} is not a valid nprnn-ref fixture (format version "
                      f"{FIXTURE_FORMAT_VERSION}): {what}")


def load_fixture(path) -> dict:
    """Read and validate one golden-fixture .npz file (never unpickles anything).

    Returns a dict with FIXTURE_KEYS: the arrays, with 0-d string arrays for the
    conventions and a 0-d integer format_version. Raises FileNotFoundError for a missing
    file and ValueError naming the problem for a damaged or foreign file: not a zip archive,
    a corrupt member, pickled objects, missing or unexpected keys, another format version,
    unknown conventions, wrong shapes or dtypes, non-finite values.
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} "
                        f"{_short(path)}") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fixture file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise _fixture_error(path, "not an .npz (zip) archive")
    try:
        with np.load(path, allow_pickle=False) as z:
            case = {k: z[k] for k in z.files}            # reads (and CRC-checks) every member
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as e:
        raise _fixture_error(path, f"cannot read it ({type(e).__name__}: {e})") from None
    _check_fixture_keys(path, case)
    _check_fixture_arrays(path, case)
    return case


def _check_fixture_keys(path, case) -> None:
    """The keys, format version and conventions of a fixture case."""
    missing = [k for k in FIXTURE_KEYS if k not in case]
    extra = sorted(set(case) - set(FIXTURE_KEYS))
    if "format_version" in case:
        v = case["format_version"]
        if v.shape != () or not np.issubdtype(v.dtype, np.integer) \
                or int(v) != FIXTURE_FORMAT_VERSION:
            raise _fixture_error(path, f"format_version is {v!r}, this reader understands "
                                 f"{FIXTURE_FORMAT_VERSION}")
    if missing or extra:
        raise _fixture_error(path, (f"missing keys {', '.join(missing)}" if missing else "")
                             + ("; " if missing and extra else "")
                             + (f"unexpected keys {', '.join(extra)}" if extra else ""))
    for k, valid in (("nonlinearity", NONLINEARITIES), ("loss_kind", LOSSES),
                     ("output", OUTPUTS)):
        v = case[k]
        if v.shape != () or v.dtype.kind != "U" or str(v) not in valid:
            raise _fixture_error(path, f"{k} must be a 0-d string, one of {valid}, "
                                 f"got {v!r}")


def _check_fixture_arrays(path, case) -> None:
    """Every array of a fixture case: shapes, dtypes and values agree with each other."""
    try:
        H, D, O, dtype = check_params({k: case[k] for k in PARAM_NAMES})
    except (TypeError, ValueError) as e:
        raise _fixture_error(path, str(e)) from None
    x = case["x"]
    if x.ndim != 3 or x.shape[0] < 1 or x.shape[1] < 1:
        raise _fixture_error(path, f"x must have shape (T, B, D={D}), got {x.shape}")
    T, B = x.shape[:2]
    last = case["output"] == "last"
    lead = (B,) if last else (T, B)
    xent = case["loss_kind"] == "xent"
    shapes = {"x": (T, B, D), "h0": (B, H), "target": lead if xent else lead + (O,),
              "h": (T, B, H), "y": lead + (O,), "loss": (),
              "grad_x": (T, B, D), "grad_h0": (B, H)}
    shapes.update({f"grad_{k}": case[k].shape for k in PARAM_NAMES})
    for k, shape in shapes.items():
        a = case[k]
        if a.shape != shape:
            raise _fixture_error(path, f"{k} must have shape {shape}, got {a.shape}")
        if k == "target" and xent:
            if not np.issubdtype(a.dtype, np.integer):
                raise _fixture_error(path, f"target must hold integer labels for xent, "
                                     f"got dtype {a.dtype.name}")
            if a.size and (a.min() < 0 or a.max() >= O):
                raise _fixture_error(path, f"target labels must lie in [0, O={O})")
            continue
        if a.dtype != dtype:
            raise _fixture_error(path, f"{k} must have dtype {dtype.name} (the "
                                 f"parameters'), got {a.dtype.name}")
        if not np.all(np.isfinite(a)):
            raise _fixture_error(path, f"{k} has non-finite values")


@dataclass(frozen=True)
class TensorCheck:
    """One row of a CompareReport.

    status: "pass", "fail" (some element outside tolerance), "missing" (not in actual),
    "shape" (shape mismatch), "non-finite" (NaN or inf in actual or expected), "type"
    (actual is not a numeric NumPy array or scalar), "extra" (in actual only: not compared,
    does not fail). Errors are None when not computed; indices are tuples.
    """
    name: str
    status: str
    shape: tuple | None = None
    max_abs: float | None = None          # max |a - e|
    abs_index: tuple | None = None
    max_rel: float | None = None          # max |a - e| / |e| (inf where e = 0 != a)
    rel_index: tuple | None = None
    worst_ratio: float | None = None      # max |a - e| / (atol + rtol |e|): passes iff <= 1
    n_bad: int = 0                        # elements with |a - e| > atol + rtol |e|
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "extra")


@dataclass(frozen=True)
class CompareReport:
    """The verdict of ``compare``: one TensorCheck per tensor; ``ok`` is True when every
    expected tensor passed. ``str(report)`` is ``report.table()``."""
    checks: tuple
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list:
        return [c for c in self.checks if not c.ok]

    def table(self) -> str:
        def idx(i, err):
            if i is None or not err:
                return ""
            return "(" + ",".join(map(str, i)) + ("," if len(i) == 1 else "") + ")"

        def num(v):
            return "" if v is None else f"{v:.3g}"
        rows = [("tensor", "status", "shape", "max abs err", "at", "max rel err", "at",
                 "err/tol", "bad elems")]
        for c in self.checks:
            rows.append((str(c.name), c.status.upper() if not c.ok else c.status,
                         "" if c.shape is None else str(c.shape), num(c.max_abs),
                         idx(c.abs_index, c.max_abs), num(c.max_rel),
                         idx(c.rel_index, c.max_rel), num(c.worst_ratio),
                         str(c.n_bad) if c.status in ("fail", "non-finite") else ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        for c in self.checks:
            if c.detail:
                lines.append(f"  {c.name!s}: {c.detail}")
        verdict = "PASS" if self.ok else f"FAIL ({len(self.failures())} tensor(s))"
        lines.append(f"{verdict} with rtol={self.rtol:g}, atol={self.atol:g} "
                     "(element passes when |a - e| <= atol + rtol * |e|)")
        return "\n".join(lines)

    __str__ = table


def _numeric_problem(v):
    """Why v cannot be compared as numbers (None if it can): compare takes plain arrays
    (as _as_array) and NumPy or Python int and float scalars of real, non-bool dtypes."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (np.ndarray, np.generic,
                                                              int, float)):
        hint = " (a torch tensor? return .detach().cpu().numpy())" \
            if hasattr(v, "detach") else ""
        return f"expected a numpy.ndarray, got {type(v).__name__}{hint}"
    if isinstance(v, np.ndarray):
        try:
            _as_array("it", v)
        except TypeError as e:
            return str(e)
    kind = np.asarray(v).dtype.kind
    if kind not in "iuf":
        return (f"expected a real numeric array (integer or float), got dtype "
                f"{np.asarray(v).dtype}")
    return None


def _check_one(name, e, a, rtol, atol) -> TensorCheck:
    problem = _numeric_problem(a)
    if problem is not None:
        return TensorCheck(name, "type", detail=problem)
    a, e = np.asarray(a), np.asarray(e)
    if a.shape != e.shape:
        return TensorCheck(name, "shape", shape=a.shape,
                           detail=f"expected shape {e.shape}, got {a.shape}")
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    for which, arr in (("actual", a64), ("expected", e64)):
        bad = ~np.isfinite(arr)
        if bad.any():
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            return TensorCheck(name, "non-finite", shape=a.shape, n_bad=int(bad.sum()),
                               detail=f"{which} has {int(bad.sum())} non-finite value(s), "
                               f"first {arr[i]} at index {i}")
    if a.size == 0:
        return TensorCheck(name, "pass", shape=a.shape, max_abs=0.0, max_rel=0.0,
                           worst_ratio=0.0)
    with np.errstate(all="ignore"):      # an error beyond float64's range counts as inf
        err = np.abs(a64 - e64)
        tol = atol + rtol * np.abs(e64)
        rel = np.where(err == 0, 0.0, err / np.abs(e64))
        ratio = np.where(err == 0, 0.0, err / tol)
    ia, ir = np.unravel_index(np.argmax(err), err.shape), \
        np.unravel_index(np.argmax(rel), rel.shape)
    n_bad = int(np.count_nonzero(err > tol))
    return TensorCheck(name, "pass" if n_bad == 0 else "fail", shape=a.shape,
                       max_abs=float(err[ia]), abs_index=tuple(int(i) for i in ia),
                       max_rel=float(rel[ir]), rel_index=tuple(int(i) for i in ir),
                       worst_ratio=float(ratio.max()), n_bad=n_bad)


def compare(expected: dict, actual: dict, rtol: float, atol: float) -> CompareReport:
    """Compare two dicts of arrays tensor by tensor, with numpy.isclose's rule.

    An expected tensor passes when actual has it, with the same shape, all values finite,
    and every element satisfies |a - e| <= atol + rtol * |e| (computed in float64). Each
    TensorCheck records the worst absolute error |a - e| and the worst relative error
    |a - e| / |e| with the index where each occurs. Keys only in ``actual`` are listed as
    "extra" and not compared. Dtypes may differ (a float32 result can be checked against
    float64 values); values must be plain NumPy arrays or NumPy / Python int or float
    scalars, not bool or complex: an unusable actual value is reported as "type", an
    unusable expected value is a TypeError.
    """
    for argname, d in (("expected", expected), ("actual", actual)):
        if not isinstance(d, dict):
            raise TypeError(f"{argname} must be a dict of arrays, got {type(d).__name__}")
    for argname, v in (("rtol", rtol), ("atol", atol)):
        _check_rate(argname, v)
    for k, v in expected.items():
        problem = _numeric_problem(v)
        if problem is not None:
            raise TypeError(f"expected[{_short(k)}] must be a real numeric array: "
                            f"{problem.replace('it must', 'it must')}")
    checks = [TensorCheck(k, "missing", detail="not returned") if k not in actual
              else _check_one(k, expected[k], actual[k], float(rtol), float(atol))
              for k in expected]
    checks += [TensorCheck(k, "extra", detail="not in expected, not compared")
               for k in actual if k not in expected]
    return CompareReport(tuple(checks), float(rtol), float(atol))


# =======================================================================================
# Verification kit: golden fixtures, scale-aware checks, tolerance tiers, an isolated
# backend runner, property-based differential testing, diagnoses and reports
# =======================================================================================
#
# Everything a team checking its own backend needs, reachable after `pip install
# nprnn-ref`: ``export_fixtures`` writes golden cases for any language; ``verify_fixtures``
# checks a Python function against a fixture directory; ``verify_differential`` draws cases
# with hypothesis and shrinks a failure to the smallest case; ``check_case`` checks one
# result; ``main`` is the ``nprnn-ref`` console command (tasks.py reuses its parsers).
#
# Fail closed: a case passes only when the backend, run in a separate process (so that
# sys.exit, os._exit, a crash or a hang cannot end or stall the check), returned in time a
# dict of plain arrays of the case's dtype and shapes, every tensor within the tier's
# tolerance. The case list and the tolerances come from this module, never from the
# fixture directory's editable manifest.

VERIFY_TIMEOUT = 120.0      # seconds per case, the first including the backend's start
_CASE_KEYS = ("name", "dtype", "tier", "status", "problem", "seconds")


@dataclass(frozen=True)
class Tier:
    """A tolerance tier: a tensor (or, for tensors indexed by time, each time step of it)
    passes when every element has |a - e| <= rtol * S + floor, with S the largest |e| of
    that tensor or step. An all-zero expected tensor or step (S = 0) therefore requires
    |a| <= floor: exact zeros in float64."""
    name: str
    dtype: str
    rtol: float
    floor: float
    reason: str


# The only absolute floor is the one float32 forces: values below the smallest normal
# number (FLOAT32_FLUSH, 1.18e-38) are flushed to zero by this reference's float32 path and
# by GPUs, and kept as subnormals by CPU backends; the difference (at most FLOAT32_FLUSH per
# element) passes through at most a few products with weights of norm below 8 within a case.
FLOAT32_FLOOR = 1024 * FLOAT32_FLUSH

TIERS = {
    "float64": Tier("float64", "float64", 1e-12, 0.0,
                    "float64 backends differ by rounding alone: unit roundoff 1.1e-16 "
                    "times the accumulation length and the recurrence's growth. Over 870 "
                    "random cases of the fixture specs (survey-fixtures --seeds 30) "
                    "torch.nn.RNN, JAX and the per-step path stayed below 0.003 of this "
                    "tolerance; any modelling mistake is off by far more than 1e-12."),
    "float32": Tier("float32", "float32", 1e-4, FLOAT32_FLOOR,
                    "float32 backends (unit roundoff 6e-8) stay within about 1e-6 of each "
                    "tensor's or step's error scale; expected values are computed in "
                    "float64 from the float32 inputs and rounded once. Over 870 random "
                    "cases the worst err/tol was 0.039 (torch.nn.RNN) and 0.050 (the "
                    "per-step path); TF32 arithmetic exceeds it up to 43 times. Floor: "
                    "subnormals (FLOAT32_FLOOR)."),
    "tf32": Tier("tf32", "float32", 3e-2, FLOAT32_FLOOR,
                 "float32 on a GPU whose matrix products round their operands to TF32 "
                 "(a 10-bit mantissa, unit roundoff 4.9e-4), the default of cuDNN's RNN "
                 "kernels (torch.backends.cudnn.allow_tf32) on Ampere and later GPUs. "
                 "gpu_emulation_outputs, which rounds every operand of every product so, "
                 "reached a worst err/tol of 0.14 over 870 random float32 cases (and "
                 "exceeds the float32 tier up to 43 times)."),
}
DTYPE_TIERS = {"float64": ("float64",), "float32": ("float32", "tf32")}


def _tier(tier) -> Tier:
    if isinstance(tier, Tier):
        for k in ("rtol", "floor"):
            v = _check_real(f"tier.{k}", getattr(tier, k), "a finite number >= 0")
            if v < 0:
                raise ValueError(f"tier.{k} must be >= 0, got {v:g}")
        _check_choice("tier.dtype", tier.dtype, ("float64", "float32"))
        return tier
    if not isinstance(tier, str) or tier not in TIERS:
        raise ValueError(f"tier must be a Tier or one of {', '.join(TIERS)}, got "
                         f"{_short(tier)}")
    return TIERS[tier]


def _tighter(tier: Tier, rtol) -> Tier:
    """The tier with rtol replaced by a tighter one (a looser rtol is refused: looser
    tolerances come only from a named tier)."""
    if rtol is None:
        return tier
    rtol = _check_real("rtol", rtol, "a finite number >= 0")
    if not 0 <= rtol <= tier.rtol:
        raise ValueError(f"rtol may only tighten the {tier.name} tier's {tier.rtol:g}, got "
                         f"{rtol:g}; choose a looser named tier instead (one of "
                         f"{', '.join(TIERS)})")
    return dataclasses_replace(tier, rtol=rtol, name=f"{tier.name} (rtol {rtol:g})")


# --- Cases: one spec, drawn reproducibly ------------------------------------------------

RELU_MARGIN = 1e-3          # relative to the case's largest |pre-activation|
TANH_MAX_Z = 4.0            # tanh cases keep |z| <= 4: 1 - tanh^2 >= 1.3e-3 stays accurate
MAX_LABEL_PROB = 0.99       # xent: softmax(y)[label] above it makes dL/dy = p - 1 cancel
FIXTURE_BASE_SEED = 1511_03771      # the paper's arXiv number
FIXTURE_MAX_DRAWS = 100
SYMMETRIC_SCHEMES = ("np", "np-tanh", "irnn", "i-rnn")   # whose W_hh is symmetric


@dataclass(frozen=True)
class CaseSpec:
    """One verification case. Its rng is np.random.default_rng([base_seed, seed]), so no
    case depends on another.

    scale multiplies x, h0 and b_h; w_scale multiplies W_hx and W_yh (targets and b_y
    follow the read-out's scale, scale * w_scale^2). zeros makes exact-zero ReLU
    pre-activations structurally: the first ceil(H / 3) units have zero rows in W_hx, W_hh
    and b_h (their z is 0 at every step), b_h is 0 elsewhere too and sequence 0 starts
    from x_1 = 0 and h0 = 0 (every z of its first step is 0), so backends that take
    ReLU'(0) = 1 or 1/2 fail. h0=False starts every sequence from 0. nonsym replaces W_hh
    by W_hh Q (Q random orthogonal), which keeps its singular values and breaks symmetry.
    """
    seed: int
    scheme: str
    loss: str
    output: str
    T: int
    B: int
    D: int
    H: int
    O: int
    dtype: str = "float64"
    scale: float = 1.0
    w_scale: float = 1.0
    zeros: bool = False
    h0: bool = True
    nonsym: bool = False

    @property
    def nonlinearity(self) -> str:
        return SCHEMES[self.scheme].nonlinearity

    @property
    def name(self) -> str:
        tags = "".join([f"_s{self.scale:g}" if self.scale != 1 else "",
                        f"_w{self.w_scale:g}" if self.w_scale != 1 else "",
                        "_zeros" if self.zeros else "", "" if self.h0 else "_noh0",
                        "_nonsym" if self.nonsym else ""])
        short = {"float64": "f64", "float32": "f32"}[self.dtype]
        return (f"{self.scheme}_{self.nonlinearity}_{self.loss}_{self.output}"
                f"_T{self.T}_B{self.B}{tags}_{short}")

    @property
    def symmetric_w_hh(self) -> bool:
        return self.scheme in SYMMETRIC_SCHEMES and not (self.nonsym or self.zeros)


def _check_case_spec(spec, argname: str = "spec") -> CaseSpec:
    if not isinstance(spec, CaseSpec):
        raise TypeError(f"{argname} must be a CaseSpec, got {type(spec).__name__}")
    _check_choice(f"{argname}.scheme", spec.scheme, tuple(SCHEMES))
    _check_choice(f"{argname}.loss", spec.loss, LOSSES)
    _check_choice(f"{argname}.output", spec.output, OUTPUTS)
    _check_choice(f"{argname}.dtype", spec.dtype, ("float64", "float32"))
    for k in ("T", "B", "D", "H", "O"):
        _check_size(f"{argname}.{k}", getattr(spec, k))
    if spec.loss == "xent" and spec.O < 2:
        raise ValueError(f"{argname}.O must be >= 2 for loss 'xent' (one class has no "
                         f"cross-entropy to learn), got {spec.O}")
    for k in ("scale", "w_scale"):
        v = _check_real(f"{argname}.{k}", getattr(spec, k), "a finite number > 0")
        if not 1e-12 <= v <= 1e6:
            raise ValueError(f"{argname}.{k} must lie in [1e-12, 1e6] (scales clear of "
                             f"overflow and of float32's smallest normal), got {v:g}")
    _check_size(f"{argname}.seed", spec.seed, minimum=0)
    for k in ("zeros", "h0", "nonsym"):
        _check_bool(f"{argname}.{k}", getattr(spec, k))
    return spec


def _preactivations(case) -> np.ndarray:
    """z_t = W_hx x_t + W_hh h_{t-1} + b_h for every step, recomputed in float64 from a
    case's x, h0, h and weights (h_{t-1} taken from the stored states). Shape (T, B, H)."""
    f = {k: np.asarray(case[k], np.float64) for k in ("x", "h0", "h", "W_hx", "W_hh", "b_h")}
    h_prev = np.concatenate([f["h0"][None], f["h"][:-1]])          # (T, B, H)
    return f["x"] @ f["W_hx"].T + h_prev @ f["W_hh"].T + f["b_h"]  # (T, B, H)


def _label_probabilities(case) -> np.ndarray:
    """softmax(y)[label] for every read-out row of an xent case, in float64."""
    y = np.asarray(case["y"], np.float64)
    rows = y.reshape(-1, y.shape[-1])                              # (n, O)
    e = np.exp(rows - rows.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return p[np.arange(rows.shape[0]), np.asarray(case["target"]).reshape(-1)]


def _draw_case(spec: CaseSpec, rng) -> dict:
    """One draw of a case's inputs, float64 (the order of draws is fixed)."""
    p = init_params(spec.D, spec.H, spec.O, spec.scheme, rng)
    p["b_h"] = 0.1 * rng.standard_normal(spec.H)
    p["b_y"] = 0.5 * rng.standard_normal(spec.O)
    if spec.nonsym:
        p["W_hh"] = p["W_hh"] @ orthogonal_init(spec.H, rng)
    lead = (spec.B,) if spec.output == "last" else (spec.T, spec.B)
    case = dict(p)
    case["x"] = rng.standard_normal((spec.T, spec.B, spec.D))
    case["h0"] = 0.5 * rng.standard_normal((spec.B, spec.H))
    if spec.loss == "mse":
        case["target"] = rng.standard_normal(lead + (spec.O,))
    else:
        case["target"] = rng.integers(0, spec.O, size=lead).astype(np.int64)
    s, w = spec.scale, spec.w_scale
    for k in ("x", "h0", "b_h"):
        case[k] = case[k] * s
    case["W_hx"], case["W_yh"] = case["W_hx"] * w, case["W_yh"] * w
    case["b_y"] = case["b_y"] * (s * w * w)
    if spec.loss == "mse":
        case["target"] = case["target"] * (s * w * w)
    if not spec.h0:
        case["h0"] = np.zeros_like(case["h0"])
    if spec.zeros:
        k = -(-spec.H // 3)
        case["W_hx"][:k] = 0.0
        case["W_hh"][:k] = 0.0
        case["b_h"] = np.zeros_like(case["b_h"])
        case["x"][0, 0] = 0.0
        case["h0"][0] = 0.0
    return case


def _float64_inputs(case) -> dict:
    """A case's inputs with every float array in float64 (labels and strings as they
    are)."""
    return {k: (np.asarray(case[k], np.float64) if np.asarray(case[k]).dtype.kind == "f"
                else case[k]) for k in FIXTURE_INPUT_KEYS}


def _reference_outputs(case: dict, dtype) -> dict:
    """The expected outputs: computed in float64 from the case's (already rounded) inputs
    and rounded once to ``dtype``; in float32, results below FLOAT32_FLUSH in magnitude are
    flushed to zero, the reference's float32 convention."""
    out = fixture_outputs(_float64_inputs(case))
    if dtype == np.float64:
        return out
    res = {}
    for k, v in out.items():
        v32 = v.astype(dtype)
        res[k] = np.where(np.abs(v32) < FLOAT32_FLUSH, dtype.type(0), v32).astype(dtype)
    return res


def make_case(spec: CaseSpec, base_seed: int = FIXTURE_BASE_SEED, *,
              margin: float = RELU_MARGIN, max_draws: int = FIXTURE_MAX_DRAWS):
    """Draw one case and compute its expected outputs with this reference.

    Weights from ``init_params(spec.scheme)`` then b_h ~ N(0, 0.1^2), b_y ~ N(0, 0.5^2),
    (W_hh Q if spec.nonsym), x ~ N(0, 1), h0 ~ N(0, 0.5^2), mse targets ~ N(0, 1) or xent
    labels uniform in [0, O); then the scales and zeros of CaseSpec. Drawn in float64 and
    rounded to spec.dtype; the outputs are computed in float64 from the rounded inputs and
    rounded once (see _reference_outputs). A draw is redrawn (from the same stream, at
    most ``max_draws`` times) unless every ReLU pre-activation is exactly 0 (the
    structural zeros) or at least ``margin`` times the case's largest |z| away from 0, so
    that rounding cannot move a unit across the kink, and (xent) every label's probability
    is at most MAX_LABEL_PROB, and no gradient tensor is all zero (it would check nothing).

    Returns (case, info): case has FIXTURE_KEYS; info has draws, the smallest non-zero
    relative |z| and the number of exact zeros.
    """
    _check_case_spec(spec)
    _check_size("base_seed", base_seed, minimum=0)
    m = _check_real("margin", margin, "a number in [0, 1)")
    if not 0 <= m < 1:
        raise ValueError(f"margin must lie in [0, 1), got {m:g}")
    _check_size("max_draws", max_draws)
    dtype = np.dtype(spec.dtype)
    rng = np.random.default_rng([base_seed, spec.seed])
    best, rejected = 0.0, {"relu margin": 0, "saturated softmax": 0, "saturated tanh": 0,
                           "all-zero gradient": 0}
    for draw in range(1, max_draws + 1):
        drawn = _draw_case(spec, rng)
        case = {k: (v.astype(dtype) if k != "target" or spec.loss == "mse" else v)
                for k, v in drawn.items()}
        case["nonlinearity"] = np.array(spec.nonlinearity)
        case["loss_kind"] = np.array(spec.loss)
        case["output"] = np.array(spec.output)
        case.update(_reference_outputs(case, dtype))
        case["format_version"] = np.array(FIXTURE_FORMAT_VERSION, np.int64)
        if spec.loss == "xent" and _label_probabilities(case).max() > MAX_LABEL_PROB:
            rejected["saturated softmax"] += 1           # dL/dy = p - 1 would cancel
            continue
        z = np.abs(_preactivations(case))
        info = {"draws": draw, "min_rel_preactivation": None, "exact_zeros": 0}
        if spec.nonlinearity != "relu":
            if z.max() > TANH_MAX_Z:
                rejected["saturated tanh"] += 1          # 1 - h^2 would cancel
                continue
        else:
            nonzero = z[z != 0]
            m = float(nonzero.min()) / float(z.max()) if nonzero.size else 1.0
            if m < margin:
                best = max(best, m)
                rejected["relu margin"] += 1
                continue
            info.update(min_rel_preactivation=m, exact_zeros=int(z.size - nonzero.size))
        if not all(np.any(case[k]) for k in FIXTURE_OUTPUT_KEYS if k.startswith("grad")):
            rejected["all-zero gradient"] += 1           # it would check nothing
            continue
        return case, info
    raise RuntimeError(
        f"case {spec.name}: no draw in {max_draws} had every non-zero ReLU pre-activation "
        f"at least {margin:g} of the largest away from 0, every tanh pre-activation at "
        f"most {TANH_MAX_Z:g} in size, every xent label probability at most "
        f"{MAX_LABEL_PROB} and no all-zero gradient (rejections: "
        + ", ".join(f"{k} {v}" for k, v in rejected.items())
        + f"; best {best:.3g}); use a case with fewer steps, sequences or units")


def _c(seed, scheme, loss, output, T, B, D, H, O, dtype="float64", **kw):
    return CaseSpec(seed, scheme, loss, output, T, B, D, H, O, dtype, **kw)


# Every nonlinearity x loss x output, every scheme, B = 1 and B > 1, T from 1 to 60,
# D, H, O pairwise different, both dtypes; a non-symmetric W_hh for every nonlinearity
# (tanh, ornn, nrnn, grnn, and nonsym), exact-zero ReLU pre-activations, scales from
# 1e-8 to 1e4, no h0, and gradients that fade through time (i-RNN, T = 40).
FIXTURE_CASES = (
    _c(1, "np", "mse", "last", 6, 3, 2, 4, 3),
    _c(2, "np", "xent", "all", 50, 2, 3, 5, 4),
    _c(3, "irnn", "mse", "all", 1, 1, 4, 3, 2),
    _c(4, "irnn", "xent", "last", 20, 2, 3, 4, 2),
    _c(5, "i-rnn", "xent", "last", 9, 1, 2, 6, 5),
    _c(6, "tanh", "mse", "all", 7, 2, 5, 4, 3),
    _c(7, "tanh", "xent", "last", 60, 3, 2, 5, 3),
    _c(8, "np-tanh", "mse", "last", 1, 4, 3, 7, 2),
    _c(9, "np-tanh", "xent", "all", 12, 1, 4, 3, 5),
    _c(10, "np", "mse", "all", 10, 2, 3, 5, 2, "float32"),
    _c(11, "np", "xent", "last", 50, 2, 2, 4, 3, "float32"),
    _c(12, "i-rnn", "mse", "last", 3, 1, 2, 3, 4, "float32"),
    _c(13, "tanh", "xent", "all", 8, 3, 4, 5, 3, "float32"),
    _c(14, "np-tanh", "mse", "all", 1, 1, 3, 6, 2, "float32"),
    _c(15, "nrnn", "xent", "all", 15, 2, 3, 6, 4),
    _c(16, "grnn", "mse", "last", 25, 3, 2, 5, 3),
    _c(17, "ornn", "mse", "all", 5, 2, 3, 4, 2, "float32"),
    _c(18, "np", "mse", "all", 8, 3, 2, 6, 3, zeros=True),
    _c(19, "nrnn", "xent", "last", 6, 2, 3, 5, 4, zeros=True),
    _c(20, "np", "mse", "last", 7, 2, 3, 6, 2, "float32", zeros=True),
    _c(21, "np-tanh", "mse", "all", 6, 2, 3, 4, 2, nonsym=True),
    _c(22, "np", "xent", "all", 9, 2, 2, 5, 3, nonsym=True, h0=False),
    _c(23, "irnn", "mse", "all", 12, 2, 3, 4, 2, scale=1e-8, nonsym=True),
    _c(24, "tanh", "mse", "last", 10, 2, 2, 5, 3, scale=1e-8),
    _c(25, "np", "mse", "all", 6, 2, 4, 3, 2, "float32", scale=1e-6, w_scale=1e-2),
    _c(26, "grnn", "mse", "all", 8, 2, 3, 5, 2, scale=1e4),
    _c(27, "np", "mse", "last", 5, 3, 2, 4, 3, "float32", scale=1e3, w_scale=10),
    _c(28, "i-rnn", "mse", "all", 40, 2, 3, 4, 2, nonsym=True),
    _c(29, "ornn", "xent", "last", 30, 2, 3, 5, 2, "float32", h0=False),
)


# --- Checking one result: scale-aware, per time step, dtype-strict ---------------------

def _time_indexed(name: str, output: str) -> bool:
    """Tensors indexed by time, checked step by step: h, grad_x, and y when every step
    is read out."""
    return name in ("h", "grad_x") or (name == "y" and output == "all")


@dataclass(frozen=True)
class TensorResult:
    """One tensor of one case, checked with a Tier.

    status: "pass", "fail" (some element outside the tolerance), "missing", "type" (not a
    plain NumPy array), "dtype" (not the case's dtype), "shape", "non-finite". err is
    |a - e|; scale S is the largest |e| of the tensor or, for tensors indexed by time, of
    the time step (at the worst element); ratio = err / (rtol S + floor), passing iff <= 1.
    factor is the least-squares k of a ~ k e with its relative residual; bad_steps the
    time steps with failing elements (tensors indexed by time only).
    """
    name: str
    status: str
    detail: str = ""
    shape: tuple | None = None
    max_abs: float | None = None
    index: tuple | None = None
    scale: float | None = None
    rel: float | None = None               # err / S at the worst element
    ratio: float | None = None
    n_bad: int = 0
    factor: float | None = None
    residual: float | None = None
    actual_zero: bool = False
    bad_steps: tuple = ()
    transposed: bool = False               # a square tensor that fails, but a ~ e.T passes

    @property
    def ok(self) -> bool:
        return self.status == "pass"


class _Unusable:
    """Stands for a returned value the backend's process could not send as an array."""

    def __init__(self, problem):
        self.problem = problem


def _plain_problem(v, dtype) -> tuple:
    """(status, detail) when v is not a plain array of ``dtype``, else (None, "")."""
    problem = _numeric_problem(v)
    if problem is not None:
        return "type", problem
    if not isinstance(v, (np.ndarray, np.generic)):
        return "type", (f"expected a numpy.ndarray of dtype {dtype.name}, got a Python "
                        f"{type(v).__name__}")
    if np.asarray(v).dtype != dtype:
        got = np.asarray(v).dtype
        hint = " (an upcast: compute in the case's dtype)" if got.itemsize > \
            dtype.itemsize else ""
        return "dtype", f"expected dtype {dtype.name} (the case's), got {got.name}{hint}"
    return None, ""


def _check_tensor(name, e, a, tier: Tier, by_step: bool, mag) -> TensorResult:
    dtype = e.dtype
    if isinstance(a, _Unusable):
        return TensorResult(name, "type", a.problem)
    status, detail = _plain_problem(a, dtype)
    if status:
        return TensorResult(name, status, detail)
    a = np.asarray(a)
    if a.shape != e.shape:
        return TensorResult(name, "shape", f"expected shape {e.shape}, got {a.shape}",
                            shape=a.shape)
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    bad = ~np.isfinite(a64)
    if bad.any():
        i = tuple(int(j) for j in np.argwhere(bad)[0])
        return TensorResult(name, "non-finite", f"{int(bad.sum())} non-finite value(s), "
                            f"first {a64[i]} at {i}", shape=a.shape, n_bad=int(bad.sum()))
    if a.size == 0:
        return TensorResult(name, "pass", shape=a.shape, max_abs=0.0, ratio=0.0)
    err = np.abs(a64 - e64)
    mag = np.maximum(np.abs(e64), mag)
    if by_step:
        S = mag.reshape(mag.shape[0], -1).max(axis=1).reshape((-1,) + (1,) * (a.ndim - 1))
        S = np.broadcast_to(S, a.shape)
    else:
        S = np.broadcast_to(mag.max(), a.shape)
    tol = tier.rtol * S + tier.floor
    with np.errstate(all="ignore"):
        ratio = np.where(err == 0, 0.0, err / tol)
        rel = np.where(err == 0, 0.0, err / S)
    i = np.unravel_index(int(np.argmax(ratio)), a.shape)
    badmask = err > tol
    ee, aa = float(np.vdot(e64, e64)), float(np.vdot(a64, e64))
    factor = residual = None
    if ee > 0:
        factor = aa / ee
        with np.errstate(all="ignore"):
            residual = float(np.linalg.norm(a64 - factor * e64) / math.sqrt(ee))
    steps = tuple(int(t) for t in np.flatnonzero(badmask.reshape(a.shape[0], -1).any(1))) \
        if by_step else ()
    transposed = bool(badmask.any() and a.ndim == 2 and a.shape[0] == a.shape[1]
                      and np.all(np.abs(a64 - e64.T) <= tol))
    return TensorResult(name, "fail" if badmask.any() else "pass", shape=a.shape,
                        max_abs=float(err[i]), index=tuple(int(j) for j in i),
                        scale=float(S[i]), rel=float(rel[i]), ratio=float(ratio[i]),
                        n_bad=int(badmask.sum()), factor=factor, residual=residual,
                        actual_zero=not np.any(a64), bad_steps=steps,
                        transposed=transposed)


def _check_case_dict(argname: str, case) -> None:
    """A case dict as make_case and load_fixture return: FIXTURE_KEYS with consistent
    shapes, dtypes and conventions (the checks of load_fixture)."""
    if not isinstance(case, dict):
        raise TypeError(f"{argname} must be a dict with FIXTURE_KEYS (make_case, "
                        f"load_fixture), got {type(case).__name__}")
    for k, v in case.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise TypeError(f"{argname}[{_short(k)}] must be a numpy.ndarray under a str "
                            f"key, got {type(v).__name__}")
        _as_array(f"{argname}[{k!r}]", v)
    _check_fixture_keys(argname, case)
    _check_fixture_arrays(argname, case)


def check_case(case: dict, actual, tier="float64") -> tuple:
    """Check a backend's result for one case (a dict with FIXTURE_KEYS, as make_case or
    load_fixture return) with a tolerance tier. Returns one TensorResult per output key,
    in FIXTURE_OUTPUT_KEYS order, then a "type" result for each unexpected key of actual.

    Strict where ``compare`` is lenient: every value must be a plain numpy.ndarray (or a
    NumPy scalar) of exactly the case's dtype, and the tolerance scales with each tensor's
    own size, per time step for h, grad_x and (output "all") y; see Tier.
    """
    tier = _tier(tier)
    _check_case_dict("case", case)
    dtype = np.asarray(case["h"]).dtype
    if dtype.name != tier.dtype:
        raise ValueError(f"tier {tier.name!r} checks {tier.dtype} cases, this case is "
                         f"{dtype.name}")
    if not isinstance(actual, dict):
        return (TensorResult("(result)", "type", "the function must return a dict with "
                             f"keys {', '.join(FIXTURE_OUTPUT_KEYS)}, got "
                             f"{type(actual).__name__}"),)
    return _check_result(case, actual, tier, _checked_scales(case))


def _checked_scales(case) -> dict:
    """_error_scales of a case, refused (NonFiniteError) where they overflow."""
    with np.errstate(all="ignore"):
        mags = _error_scales(case)
    bad = [k for k, v in mags.items() if not np.all(np.isfinite(v))]
    if bad:
        raise NonFiniteError(f"case is too large to check: the error scales of "
                             f"{', '.join(bad)} overflow float64")
    return mags


def _check_result(case, actual, tier, mags) -> tuple:
    """check_case on checked arguments, with the case's error scales given."""
    output = str(case["output"])
    out = [TensorResult(k, "missing", "not returned") if k not in actual else
           _check_tensor(k, np.asarray(case[k]), actual[k], tier, _time_indexed(k, output),
                         mags[k])
           for k in FIXTURE_OUTPUT_KEYS]
    out += [TensorResult(str(k), "type", "not an output key (a misspelt name?)")
            for k in actual if k not in FIXTURE_OUTPUT_KEYS]
    return tuple(out)


# --- TF32 rounding, emulated in NumPy ----------------------------------------------------

def round_mantissa(a: np.ndarray, bits: int) -> np.ndarray:
    """float32 values rounded to ``bits`` explicit mantissa bits (round to nearest, ties
    to even): bits=10 is TF32 (what Ampere-and-later tensor cores make of float32 matrix
    product operands), 7 is bfloat16, 23 leaves float32 unchanged."""
    a = _as_array("a", a)
    if a.dtype != np.float32:
        raise TypeError(f"a must have dtype float32, got {_dtype_text(a.dtype)}")
    bits = _check_size("bits", bits, minimum=0)
    if bits > 23:
        raise ValueError(f"bits must be at most 23 (float32's mantissa), got {bits}")
    drop = 23 - bits
    if drop == 0:
        return a.copy()
    u = a.view(np.uint32).astype(np.uint64)
    half = (1 << (drop - 1)) - 1
    lsb = (u >> drop) & 1
    r = ((u + half + lsb) >> drop) << drop
    return (r & 0xFFFFFFFF).astype(np.uint32).view(np.float32)


def _loop(case: dict, rnd=None) -> dict:
    """The model, its loss and BPTT as plain loops in the dtype of the case's arrays,
    every operand of every matrix product passed through ``rnd`` (None: unrounded).
    Returns the outputs and the intermediates the error scales need (dy, dz, the
    derivative f' at each step, h_{t-1} and the read-out states)."""
    def mm(a, b):
        return rnd(a) @ rnd(b) if rnd is not None else a @ b
    nl, loss, output = str(case["nonlinearity"]), str(case["loss_kind"]), str(case["output"])
    x, h0, W_hx, W_hh, b_h = (case[k] for k in ("x", "h0", "W_hx", "W_hh", "b_h"))
    W_yh, b_y = case["W_yh"], case["b_y"]
    dt = x.dtype
    T, B, _ = x.shape
    zx = mm(x.reshape(T * B, -1), W_hx.T).reshape(T, B, -1)    # every step's input term
    hs = [h0]
    for t in range(T):
        z = zx[t] + mm(hs[-1], W_hh.T) + b_h
        hs.append(np.where(z > 0, z, dt.type(0)) if nl == "relu" else np.tanh(z))
    h = np.stack(hs[1:])
    h_prev = np.stack(hs[:-1])
    fp = (h > 0).astype(dt) if nl == "relu" else (1 - h * h)
    hr = h[-1] if output == "last" else h
    y = (mm(hr.reshape(-1, hr.shape[-1]), W_yh.T) + b_y).reshape(hr.shape[:-1] + (-1,))
    L, dy = _loss_fn(y, case["target"], loss)
    dy = dy.astype(dt)
    dh_out = mm(dy.reshape(-1, dy.shape[-1]), W_yh).reshape(hr.shape)
    dz = np.zeros_like(h)
    carry = np.zeros_like(h0)
    for t in range(T - 1, -1, -1):
        dh = carry + (dh_out[t] if output == "all" else (dh_out if t == T - 1 else 0))
        dz[t] = dh * fp[t]
        carry = mm(dz[t], W_hh)
    dyf, dzf = dy.reshape(-1, dy.shape[-1]), dz.reshape(T * B, -1)
    out = {"h": h, "y": y, "loss": np.asarray(dt.type(L)),
           "grad_W_hx": mm(dzf.T, x.reshape(T * B, -1)),
           "grad_W_hh": mm(dzf.T, h_prev.reshape(T * B, -1)),
           "grad_b_h": dzf.sum(axis=0),
           "grad_W_yh": mm(dyf.T, hr.reshape(-1, hr.shape[-1])),
           "grad_b_y": dyf.sum(axis=0),
           "grad_x": mm(dzf, W_hx).reshape(x.shape), "grad_h0": carry}
    out = {k: np.asarray(v, dt) for k, v in out.items()}
    return out, {"dy": dy, "dz": dz, "fp": fp, "h_prev": h_prev, "hr": hr}


def _carry(one, J):
    """Scales along the recurrence: carry[t, b] = max over earlier steps s (in the order
    the recurrence runs) of one[s, b] * ||J[t] ... J[s+1]||_2, the most an error made at
    step s can grow by step t (the spectral norm of the product of the steps' Jacobians,
    per sequence). one: (T, B); J: (T, B, H, H), J[t] mapping step t - 1 to step t."""
    T, B = one.shape
    carry = np.zeros_like(one)
    P = np.empty((0,) + J.shape[1:])             # P[s] = J[t] ... J[s+1], every s < t
    for t in range(1, T):
        eye = np.broadcast_to(np.eye(J.shape[-1]), (1,) + J.shape[1:])
        P = J[t] @ np.concatenate([P, eye])
        norms = np.linalg.norm(P, 2, axis=(-2, -1))                  # (t, B)
        carry[t] = (one[:t] * norms).max(axis=0)
    return carry


def _error_scales(case: dict) -> dict:
    """For each output, the magnitude its rounding errors scale with (float64, from the
    case's inputs and its float64 intermediates): the same products and sums with every
    operand replaced by its absolute value, one level deep, and along the recurrence the
    largest such magnitude of an earlier step carried through the product of the steps'
    Jacobians (its spectral norm, per sequence: the most an error made then can grow), for
    h forward and for dL/dz backward. The read-out, the loss and the gradients take those
    magnitudes in place of the values. The scale exceeds |value| where a sum cancels
    (grad_b_y of xent sums p - onehot over rows; a gradient that shrinks by cancellation
    from one step to the one before carries the later step's errors), so a correct backend
    is not failed for the conditioning of the problem, and it is 0 only where every term
    that reaches the element is 0."""
    c = _float64_inputs(case)
    out, mid = _loop(c)
    a = {k: np.abs(c[k]) for k in ("x", "h0", "W_hx", "W_hh", "b_h", "W_yh", "b_y")}
    T, B, _ = c["x"].shape
    fp, W = mid["fp"], c["W_hh"]
    loss, output = str(c["loss_kind"]), str(c["output"])
    active = fp != 0
    # forward: h_t = f(z_t), z_t = W_hx x_t + W_hh h_{t-1} + b_h; J_t = diag(f'_t) W_hh
    h_prev = np.abs(mid["h_prev"])
    hM = (a["x"] @ a["W_hx"].T + h_prev @ a["W_hh"].T + a["b_h"]) * np.abs(fp)
    J = np.abs(fp)[..., None] * W                                 # (T, B, H, H)
    hM = np.maximum(hM, _carry(hM.max(axis=2), J)[..., None] * active)
    hprevM = np.concatenate([a["h0"][None], hM[:-1]])
    hrM = hM[-1] if output == "last" else hM
    yM = (hrM.reshape(-1, hrM.shape[-1]) @ a["W_yh"].T + a["b_y"]).reshape(out["y"].shape)
    n_rows = out["y"][..., 0].size
    if loss == "mse":
        dyM = 2 * (yM + np.abs(c["target"])) / out["y"].size
        LM = max(abs(float(out["loss"])),
                 float(np.mean(2 * np.abs(out["y"] - c["target"]) * yM)))
    else:
        # dy = (p - onehot) / n; an error e in a row of y moves p by up to 2 p max|e|
        onehot = np.arange(out["y"].shape[-1]) == np.asarray(c["target"])[..., None]
        p = mid["dy"] * n_rows + onehot
        dyM = (p + onehot + 2 * p * yM.max(axis=-1, keepdims=True)) / n_rows
        LM = max(abs(float(out["loss"])), 2 * float(yM.max(axis=-1).mean()))
    dyf = dyM.reshape(-1, dyM.shape[-1])
    # backward: dz_t = f'_t (W_hh^T dz_{t+1} + the read-out's term); J_t = diag(f'_t) W^T
    dh_out = (dyf @ a["W_yh"]).reshape(hrM.shape)
    later = np.concatenate([np.abs(mid["dz"][1:]) @ a["W_hh"], np.zeros((1, B, W.shape[0]))])
    if output == "all":
        later = later + dh_out
    else:
        later[-1] += dh_out
    dzM = later * np.abs(fp)
    Jb = (np.abs(fp)[..., None] * W.T)[::-1]                      # in backward order
    dzM = np.maximum(dzM, _carry(dzM.max(axis=2)[::-1], Jb)[::-1][..., None] * active)
    dz = dzM.reshape(T * B, -1)
    return {"h": hM, "y": yM, "loss": np.asarray(LM),
            "grad_W_hx": dz.T @ a["x"].reshape(T * B, -1),
            "grad_W_hh": dz.T @ hprevM.reshape(T * B, -1),
            "grad_b_h": dz.sum(axis=0),
            "grad_W_yh": dyf.T @ hrM.reshape(-1, hrM.shape[-1]),
            "grad_b_y": dyf.sum(axis=0),
            "grad_x": (dz @ a["W_hx"]).reshape(c["x"].shape),
            "grad_h0": dzM[0] @ a["W_hh"]}


def gpu_emulation_outputs(case: dict, bits: int = 10) -> dict:
    """A float32 case computed as a GPU does with TF32 matrix products (bits=10): every
    operand of every matrix product (the input and recurrent products of each step, the
    read-out, every product of BPTT and the weight gradients) rounded to ``bits``
    mantissa bits, products accumulated in float32, elementwise work in float32. A
    backend function (the fixture_outputs contract), used to derive and test the "tf32"
    tier."""
    fixture_outputs(case)                     # validates case as fixture_outputs does
    if np.asarray(case["x"]).dtype != np.float32:
        raise TypeError(f"gpu_emulation_outputs takes float32 cases, got "
                        f"{_dtype_text(np.asarray(case['x']).dtype)}")
    bits = _check_size("bits", bits, minimum=0)
    if bits > 23:
        raise ValueError(f"bits must be at most 23 (float32's mantissa), got {bits}")
    with np.errstate(all="ignore"):
        out = _loop(case, lambda a: round_mantissa(np.ascontiguousarray(a), bits))[0]
    bad = [k for k, v in out.items() if not np.all(np.isfinite(v))]
    if bad:
        raise NonFiniteError(f"case overflows float32 in the emulation: {', '.join(bad)} "
                             "not finite")
    return out


# --- Running a backend in its own process ------------------------------------------------
#
# The backend runs in a child Python process, started on the first case and reused for
# the next. Messages are a JSON header and an uncompressed .npz payload (read back with
# allow_pickle=False); the child ignores Ctrl-C (the parent stops the run) and answers
# every call, whatever the function does short of ending or hanging the process, which
# the parent sees (EOF, timeout), fails the case for, and then starts a fresh child.

def _pack(header: dict, arrays: dict | None = None) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **(arrays or {}))
    head = json.dumps(header).encode()
    return len(head).to_bytes(8, "little") + head + buf.getvalue()


def _unpack(data: bytes):
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n].decode())
    with np.load(io.BytesIO(data[8 + n:]), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return header, arrays


def load_backend(spec: str):
    """The function named by 'MODULE:FUNCTION'. MODULE is a module importable from the
    current directory (dotted names work) or a path to a .py file; FUNCTION may be a
    dotted attribute path. Import failures, SystemExit at import included, raise
    ImportError."""
    _check_backend_spec("spec", spec)
    mod_name, _, fn_name = spec.rpartition(":")
    try:
        if mod_name.endswith(".py") or os.sep in mod_name:
            if not os.path.isfile(mod_name):
                raise FileNotFoundError(f"no such file {mod_name}")
            name = "_backend_" + os.path.splitext(os.path.basename(mod_name))[0]
            ispec = importlib.util.spec_from_file_location(name, mod_name)
            module = importlib.util.module_from_spec(ispec)
            sys.modules[name] = module            # as import does (dataclasses need it)
            try:
                ispec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(mod_name)
    except (Exception, SystemExit) as e:  # noqa: BLE001  (even a module calling sys.exit)
        raise ImportError(f"cannot import {mod_name!r} for {spec}: "
                          f"{type(e).__name__}: {e}") from e
    fn = module
    for part in fn_name.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise ImportError(f"module {mod_name!r} has no function {fn_name!r}")
    return fn


def _check_backend_spec(argname, spec) -> str:
    """spec, a 'MODULE:FUNCTION' string with both parts non-empty (ValueError else)."""
    if not isinstance(spec, str) or not all(spec.rpartition(":")[::2]):
        raise ValueError(f"{argname} must look like MODULE:FUNCTION (e.g. my_backend:run "
                         f"or path/to/my_backend.py:run), got {_short(spec)}")
    return spec


def _target_text(against) -> str:
    """'MODULE:FUNCTION' for a spec string or a module-level function."""
    if isinstance(against, str):
        return _check_backend_spec("against", against)
    mod, qual = getattr(against, "__module__", None), getattr(against, "__qualname__", "")
    if not callable(against) or mod is None or "<" in qual:
        raise TypeError("against must be 'MODULE:FUNCTION' or a function defined at the top "
                        f"level of an importable module (it runs in a separate process), "
                        f"got {_short(against)}")
    if mod == "__main__":
        path = getattr(sys.modules["__main__"], "__file__", None)
        if not path:
            raise TypeError("against is defined in an interactive session; put it in a "
                            "file and pass 'path/to/file.py:FUNCTION'")
        return f"{os.path.abspath(path)}:{qual}"
    return f"{mod}:{qual}"


def _backend_worker(fd: int) -> None:
    """The child's loop (see _Backend): load the function, then answer each case."""
    import signal
    from multiprocessing.connection import Connection
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    header, _ = _unpack(conn.recv_bytes())
    sys.path[:] = header["sys_path"]
    try:
        fn = load_backend(header["target"])
    except BaseException as e:  # noqa: BLE001  (reported to the parent)
        conn.send_bytes(_pack({"status": "import", "message": str(e)}))
        return
    conn.send_bytes(_pack({"status": "ready"}))
    while True:
        try:
            _, case = _unpack(conn.recv_bytes())
        except EOFError:
            return
        try:
            result = fn(case)
        except BaseException as e:  # noqa: BLE001  (SystemExit too: a failed case)
            tb = traceback.extract_tb(e.__traceback__)[-1]
            conn.send_bytes(_pack({"status": "raised", "message":
                                   f"the function raised {type(e).__name__}: {e} (at "
                                   f"{os.path.basename(tb.filename)}:{tb.lineno})"}))
            continue
        conn.send_bytes(_encode_result(result))


def _encode_result(result) -> bytes:
    """A result as a message: its plain numeric arrays, and a problem text for others."""
    if not isinstance(result, dict):
        return _pack({"status": "result", "problem": "the function must return a dict with "
                      f"keys {', '.join(FIXTURE_OUTPUT_KEYS)}, got {type(result).__name__}"})
    arrays, problems, kinds = {}, {}, {}
    for k, v in result.items():
        key = str(k)
        p = _numeric_problem(v)
        if p is None and not isinstance(v, (np.ndarray, np.generic)):
            p = f"expected a numpy.ndarray, got a Python {type(v).__name__}"
        if p is None and not key.isidentifier():
            p = "not an output key"
        if p is None:
            arrays[key], kinds[key] = np.asarray(v), type(v).__name__
        else:
            problems[key] = p
    return _pack({"status": "result", "problems": problems, "kinds": kinds}, arrays)


class _Backend:
    """The parent's handle on the child process running one backend function."""

    def __init__(self, target: str, timeout: float):
        self.target, self.timeout = target, timeout
        self.proc = self.conn = None
        self.import_problem = None
        self.hung = ""                       # the case it timed out on, if any
        self.case_name = ""

    def _start(self):
        from multiprocessing.connection import Connection
        parent, child = socket.socketpair()
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in env.get(
            "PYTHONPATH", "").split(os.pathsep) if p])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys, nprnn_ref; "
             "nprnn_ref._backend_worker(int(sys.argv[1]))", str(child.fileno())],
            pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL)
        child.close()
        self.conn = Connection(parent.detach())
        self.conn.send_bytes(_pack({"target": self.target,
                                    "sys_path": [os.getcwd()] + sys.path}))

    def _receive(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0 or not self.conn.poll(left):
            self.close()
            self.hung = self.case_name or "a case"
            raise TimeoutError(f"no answer within the timeout of {self.timeout:g} s "
                               "(the backend's process was stopped)")
        try:
            return _unpack(self.conn.recv_bytes())
        except (EOFError, OSError):
            code = self.proc.wait(timeout=10)
            self.close()
            raise ChildProcessError(f"the backend's process ended (exit code {code}) "
                                    "without answering: os._exit, a crash or an abort "
                                    "in the function") from None

    def call(self, case: dict, name: str = ""):
        """(header, arrays) of the function's answer to case; raises TimeoutError,
        ChildProcessError or ImportError (the module cannot be imported)."""
        if self.import_problem:
            raise ImportError(self.import_problem)
        self.case_name = name
        deadline = time.monotonic() + self.timeout
        if self.proc is None:
            self._start()
            try:
                header, _ = self._receive(deadline)
            except ChildProcessError as e:
                self.import_problem = f"importing {self.target} ended the process: {e}"
                raise ImportError(self.import_problem) from None
            if header["status"] == "import":
                self.close()
                self.import_problem = header["message"]
                raise ImportError(self.import_problem)
        self.conn.send_bytes(_pack({}, {k: np.asarray(case[k]) for k in
                                        FIXTURE_INPUT_KEYS}))
        return self._receive(deadline)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


# --- Reports -----------------------------------------------------------------------------

@dataclass(frozen=True)
class CaseResult:
    """One case of a verification run. status: "pass", "fail" (some tensor outside the
    tolerance or of the wrong type, dtype or shape), "error" (the function raised, timed
    out, ended its process or could not be imported; or the fixture file is not what the
    reference computes)."""
    name: str
    dtype: str
    tier: str
    status: str
    problem: str = ""
    tensors: tuple = ()
    seconds: float = 0.0
    spec: CaseSpec | None = None

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    def table(self) -> str:
        rows = [("tensor", "status", "shape", "max |a-e|", "at", "scale", "err/scale",
                 "err/tol", "bad")]
        for t in self.tensors:
            num = (lambda v: "" if v is None else f"{v:.3g}")
            rows.append((t.name, t.status if t.ok else t.status.upper(),
                         "" if t.shape is None else str(t.shape), num(t.max_abs),
                         "" if t.index is None or not t.max_abs else
                         "(" + ",".join(map(str, t.index)) + ")",
                         num(t.scale), num(t.rel), num(t.ratio),
                         str(t.n_bad) if t.status == "fail" else ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        lines += [f"  {t.name}: {t.detail}" for t in self.tensors if t.detail]
        return "\n".join(lines)


@dataclass(frozen=True)
class Diagnosis:
    """A likely cause read from the pattern of failures, with its evidence."""
    cause: str
    evidence: str


@dataclass(frozen=True)
class VerifyReport:
    """The verdict of verify_fixtures or verify_differential. ``ok`` only when every case
    of the selected dtypes was run and passed and nothing else went wrong."""
    kind: str                        # "fixtures" or "differential"
    against: str
    dtypes: tuple
    tiers: dict                      # dtype -> Tier
    cases: tuple
    problems: tuple = ()             # what went wrong outside any case
    seconds: float = 0.0
    examples: int = 0                # differential: examples drawn
    reproducer: str = ""             # differential: code that replays the smallest failure
    version: str = __version__
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return (bool(self.cases) and not self.problems and not self.interrupted
                and all(c.ok for c in self.cases))

    @property
    def diagnoses(self) -> tuple:
        return diagnose(self.cases)

    def summary(self) -> str:
        n_ok = sum(c.ok for c in self.cases)
        per = ", ".join(f"{d}: {sum(c.ok for c in self.cases if c.dtype == d)}/"
                        f"{sum(c.dtype == d for c in self.cases)} ({self.tiers[d].name} "
                        f"tier)" if any(c.dtype == d for c in self.cases) else
                        f"{d}: not run" for d in self.dtypes)
        if self.kind == "differential":
            what = (f"{n_ok}/{len(self.cases)} drawn cases passed ({self.examples} backend "
                    "calls" + (", shrinking included" if n_ok < len(self.cases) else "")
                    + ")")
        else:
            what = f"{n_ok}/{len(self.cases)} fixture cases passed"
        head = "PASS" if self.ok else "FAIL"
        return (f"{head}: {what} against {self.against} [{per}] in {self.seconds:.1f} s "
                f"(nprnn-ref {self.version})")

    def text(self) -> str:
        """The summary on success; every failing case's table, the problems and the
        diagnoses on failure."""
        if self.ok:
            return self.summary()
        lines = []
        for c in self.cases:
            if not c.ok:
                lines.append(f"== {c.name} ({c.dtype}, {c.tier} tier): {c.status.upper()}"
                             + (f": {c.problem}" if c.problem else ""))
                if c.tensors:
                    lines += ["   " + s for s in c.table().splitlines()]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        if self.interrupted:
            lines.append("INTERRUPTED: the run was stopped before every case was checked")
        if self.reproducer:
            lines += ["", "smallest failing case (shrunk by hypothesis), to replay:",
                      self.reproducer]
        diags = self.diagnoses
        if diags:
            lines += ["", "likely causes:"]
            lines += [f"- {d.cause}\n    evidence: {d.evidence}" for d in diags]
        lines.append(self.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        def tensor(t):
            return {k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in dataclasses_asdict(t).items()}
        return {
            "format": "nprnn-ref verification report", "version": self.version,
            "kind": self.kind, "against": self.against, "ok": self.ok,
            "dtypes": list(self.dtypes),
            "tiers": {d: dataclasses_asdict(t) for d, t in self.tiers.items()},
            "seconds": self.seconds, "examples": self.examples,
            "interrupted": self.interrupted, "problems": list(self.problems),
            "reproducer": self.reproducer,
            "diagnoses": [dataclasses_asdict(d) for d in self.diagnoses],
            "cases": [{"name": c.name, "dtype": c.dtype, "tier": c.tier,
                       "status": c.status, "problem": c.problem, "seconds": c.seconds,
                       "spec": None if c.spec is None else dataclasses_asdict(c.spec),
                       "tensors": [tensor(t) for t in c.tensors]} for c in self.cases],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False,
                          default=lambda v: None) + "\n"

    def to_junit(self) -> str:
        """JUnit XML: one testsuite, one testcase per case, problems as an extra case."""
        from xml.sax.saxutils import escape, quoteattr
        cases = list(self.cases)
        n_fail = sum(not c.ok for c in cases) + bool(self.problems or self.interrupted)
        out = ['<?xml version="1.0" encoding="UTF-8"?>',
               f'<testsuite name={quoteattr("nprnn-ref " + self.kind)} '
               f'tests="{len(cases) + bool(self.problems or self.interrupted)}" '
               f'failures="{n_fail}" errors="0" time="{self.seconds:.3f}">']
        for c in cases:
            out.append(f'  <testcase classname={quoteattr(f"nprnn_ref.{self.kind}.{c.dtype}")}'
                       f' name={quoteattr(c.name)} time="{c.seconds:.3f}">')
            if not c.ok:
                body = (c.problem + "\n" if c.problem else "") + c.table()
                out.append(f'    <failure message={quoteattr(c.problem or c.status)}>'
                           f'{escape(body)}</failure>')
            out.append("  </testcase>")
        if self.problems or self.interrupted:
            msg = "; ".join(self.problems) or "interrupted"
            out.append(f'  <testcase classname="nprnn_ref.{self.kind}" name="run">'
                       f'<failure message={quoteattr(msg)}>{escape(msg)}</failure>'
                       '</testcase>')
        out.append("</testsuite>")
        return "\n".join(out) + "\n"


def _run_case(backend: _Backend, case: dict, name: str, tier: Tier, spec=None,
              mags=None) -> CaseResult:
    """Call the backend on one case and check the answer; every way it can go wrong
    fails the case (KeyboardInterrupt propagates)."""
    t0 = time.perf_counter()
    dtype = np.asarray(case["h"]).dtype.name

    def res(status, problem="", tensors=()):
        return CaseResult(name, dtype, tier.name, status, problem, tuple(tensors),
                          time.perf_counter() - t0, spec)
    try:
        header, arrays = backend.call(case, name)
    except (TimeoutError, ChildProcessError, ImportError) as e:
        return res("error", str(e))
    if header.get("status") == "raised":
        return res("error", header["message"])
    if header.get("problem"):
        return res("fail", header["problem"])
    actual = dict(arrays)
    for k, p in header.get("problems", {}).items():
        actual[k] = _Unusable(p)
    tensors = check_case(case, actual, tier) if mags is None else \
        _check_result(case, actual, tier, mags)
    return res("pass" if all(t.ok for t in tensors) else "fail", "", tensors)


# --- Golden fixture directories ----------------------------------------------------------

def _write_npz(path, arrays: dict) -> None:
    """np.savez_compressed's layout (one .npy member per key) with fixed member dates, so
    that the same arrays give the same bytes, hence a stable sha256."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k, a in arrays.items():
            info = zipfile.ZipInfo(k + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.asarray(a), allow_pickle=False)


def _sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _fixture_conventions() -> dict:
    """What a backend must agree on to be compared with the fixtures."""
    return {
        "layout": "time-major: x and grad_x (T, B, D); h (T, B, H); h0 and grad_h0 (B, H)",
        "model": "h_t = f(W_hx x_t + W_hh h_{t-1} + b_h), y = W_yh h_t + b_y; h holds "
                 "h_1..h_T; output 'last' reads h_T only (y (B, O)), 'all' every step "
                 "(y (T, B, O)); ReLU'(0) = 0 (the mask is z > 0)",
        "parameters": "W_hx (H, D), W_hh (H, H), b_h (H,), W_yh (O, H), b_y (O,); "
                      "torch.nn.RNN: weight_ih_l0 = W_hx, weight_hh_l0 = W_hh, "
                      "bias_ih_l0 + bias_hh_l0 = b_h; Linear read-out weight = W_yh, "
                      "bias = b_y",
        "loss": "mse: mean over all elements of (y - target)^2 (torch.nn.MSELoss()); "
                "xent: mean over all (step, sequence) rows of the softmax cross-entropy "
                "of logits y with integer labels (torch.nn.CrossEntropyLoss())",
        "gradients": "grad_K = dloss/dK for every parameter, x and h0; grad_b_h equals "
                     "the gradient of either torch bias",
        "dtypes": "every output has the case's dtype; float32 expected values are "
                  "computed in float64 from the float32 inputs and rounded once, values "
                  "below FLOAT32_FLUSH flushed to zero",
        "keys": list(FIXTURE_KEYS),
    }


def export_fixtures(directory, *, force: bool = False, base_seed: int = FIXTURE_BASE_SEED,
                    cases=FIXTURE_CASES) -> dict:
    """Write one .npz per case (named CaseSpec.name) and manifest.json into
    ``directory``; return the manifest. Refuses (FileExistsError) a directory that is not
    empty unless ``force``; with force, files of the same names are replaced, others left.
    Everything is computed before anything is written."""
    directory = _check_path("directory", directory)
    _check_bool("force", force)
    _check_size("base_seed", base_seed, minimum=0)
    if not isinstance(cases, (tuple, list)) or not cases:
        raise TypeError(f"cases must be a non-empty tuple of CaseSpecs, got "
                        f"{_short(cases)}")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"DIR must be a directory, {directory} is a file")
    above = os.path.dirname(os.path.abspath(directory))
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise NotADirectoryError(f"cannot create {directory}: {above} is not a folder")
    if not os.access(above if not os.path.isdir(directory) else directory, os.W_OK):
        raise PermissionError(f"cannot write into {directory}: "
                              f"{above if not os.path.isdir(directory) else directory} is "
                              "not writable by you")
    if os.path.isdir(directory) and [f for f in os.listdir(directory)
                                     if not f.startswith(".")] and not force:
        raise FileExistsError(f"{directory} is not empty; choose an empty or new directory, "
                              "or pass --force to overwrite the fixture files in it")
    for i, spec in enumerate(cases):
        _check_case_spec(spec, f"cases[{i}]")
    for what in ("name", "seed"):
        vals = [getattr(s, what) for s in cases]
        if len(set(vals)) != len(vals):
            raise ValueError(f"cases must have distinct {what}s, got {vals}")
    built = [(s,) + make_case(s, base_seed) for s in cases]         # all or nothing
    os.makedirs(directory, exist_ok=True)
    entries = []
    for spec, case, info in built:
        fname = spec.name + ".npz"
        path = os.path.join(directory, fname)
        _write_npz(path, {k: case[k] for k in FIXTURE_KEYS})
        entries.append({"name": spec.name, "file": fname, "sha256": _sha256(path),
                        "spec": dataclasses_asdict(spec), **info})
    manifest = {
        "format": "nprnn-ref golden fixtures", "format_version": FIXTURE_FORMAT_VERSION,
        "nprnn_ref_version": __version__, "numpy_version": np.__version__,
        "base_seed": base_seed,
        "seeding": "case rng = numpy.random.default_rng([base_seed, spec seed]); see "
                   "nprnn_ref.make_case",
        "conventions": _fixture_conventions(),
        "tiers": {k: dataclasses_asdict(t) for k, t in TIERS.items()},
        "note": "verify-fixtures takes the case list and the tolerances from nprnn_ref, "
                "not from this file; it reads base_seed only, and confirms that every "
                "file is what the reference computes",
        "cases": entries,
    }
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return manifest


def _check_path(argname, path) -> str:
    """A path argument as a str: a str or an os.PathLike naming one (TypeError else),
    not empty and without NUL characters (ValueError)."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"{argname} must be a path (str or os.PathLike), got "
                        f"{type(path).__name__} {_short(path)}") from None
    if not isinstance(path, str):
        raise TypeError(f"{argname} must be a path (str or os.PathLike), got "
                        f"{type(path).__name__} {_short(path)}")
    if not path or "\0" in path:
        raise ValueError(f"{argname} must be a non-empty path without NUL characters, "
                         f"got {_short(path)}")
    return path


REEXPORT = "python tasks.py export-fixtures DIR --force (or: nprnn-ref export-fixtures " \
    "DIR --force)"


def read_manifest(directory) -> dict:
    """DIR/manifest.json, checked for its format version and base seed (the only two
    entries the verifier reads). A directory of an earlier format is refused with the
    command that re-exports it."""
    directory = _check_path("directory", directory)
    path = os.path.join(directory, "manifest.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: DIR must be a directory written "
                                "by export-fixtures")
    try:
        with open(path) as f:
            m = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    v = m.get("format_version") if isinstance(m, dict) else None
    if v == 1:
        raise ValueError(f"{directory} holds fixtures of format version 1, whose ReLU "
                         "pre-activations all stay away from 0, so they cannot check "
                         "ReLU'(0), and whose tolerances miss bugs at small scales; "
                         f"re-export it: {REEXPORT.replace('DIR', os.fspath(directory))}")
    if v != FIXTURE_FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {v!r}, this reader understands "
                         f"{FIXTURE_FORMAT_VERSION}")
    seed = m.get("base_seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{path}: base_seed must be an integer >= 0, got {seed!r}")
    return m


def _fixture_file_problem(directory, spec: CaseSpec, base_seed: int):
    """(case, "", its error scales) for a fixture file that is what the reference
    computes, else (None, why, None)."""
    root = os.path.realpath(directory)
    path = os.path.join(directory, spec.name + ".npz")
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        return None, f"{path} leads outside DIR ({os.path.realpath(path)})", None
    try:
        case = load_fixture(path)
    except (OSError, ValueError) as e:
        return None, f"cannot use the fixture: {e}", None
    try:
        mags = _checked_scales(case)
    except NonFiniteError as e:
        return None, f"cannot use the fixture {path}: {e}", None
    ref, _ = make_case(spec, base_seed)
    tier = TIERS[spec.dtype]
    for k in FIXTURE_KEYS:
        e, a = ref[k], case[k]
        if e.dtype.kind in "iUu" or k == "format_version":
            same, how = (e.dtype == a.dtype and e.shape == a.shape
                         and np.array_equal(e, a)), ""
        else:
            r = _check_tensor(k, e, a, tier, _time_indexed(k, spec.output),
                              mags.get(k, np.abs(a)))
            same = r.ok
            how = r.detail if r.max_abs is None else \
                f"by up to {r.max_abs:.3g} at {r.index}, {r.ratio:.3g} x the {tier.name} tier"
        if not same:
            return None, (f"{path} is not what the reference computes for this case: {k} "
                          f"differs{' ' + how if how else ''} (the file was edited or "
                          "damaged after the export, or written with another base "
                          "seed)"), None
    return case, "", mags


def _selected(dtypes) -> tuple:
    if dtypes is None:
        return ("float64", "float32")
    if isinstance(dtypes, str):
        dtypes = tuple(d for d in dtypes.split(",") if d)
    if not isinstance(dtypes, (tuple, list)):
        raise TypeError(f"dtypes must be 'float64', 'float32', a comma-separated list of "
                        f"them or a tuple, got {type(dtypes).__name__} {_short(dtypes)}")
    dtypes = tuple(dtypes)
    for d in dtypes:
        _check_choice("dtypes", d, ("float64", "float32"))
    if not dtypes or len(set(dtypes)) != len(dtypes):
        raise ValueError(f"dtypes must name float64 and/or float32 once each, got {dtypes}")
    return tuple(d for d in ("float64", "float32") if d in dtypes)


def _tiers_for(dtypes, tier, rtol, floor) -> dict:
    """dtype -> Tier: float64 cases always in the float64 tier; float32 cases in
    ``tier`` (float32 or tf32); rtol and floor may only tighten."""
    t32 = _tier(tier)
    if t32.dtype != "float32":
        raise ValueError(f"tier names the tier of the float32 cases, one of "
                         f"{', '.join(DTYPE_TIERS['float32'])}, got {tier!r}")
    out = {}
    for d in dtypes:
        t = TIERS["float64"] if d == "float64" else t32
        t = _tighter(t, rtol)
        if floor is not None:
            floor = _check_real("floor", floor, "a finite number >= 0")
            if not 0 <= floor <= t.floor:
                raise ValueError(f"floor may only tighten the {t.name} tier's {t.floor:g}, "
                                 f"got {floor:g}")
            t = dataclasses_replace(t, floor=floor)
        out[d] = t
    return out


def verify_fixtures(directory, against, *, dtypes=None, tier="float32", rtol=None,
                    floor=None, timeout: float = VERIFY_TIMEOUT) -> VerifyReport:
    """Check a backend function on every case of a fixture directory.

    against: 'MODULE:FUNCTION' (a module importable from the current directory, or
    path/to/file.py:FUNCTION) or a function defined at the top level of an importable
    module. It runs in a separate process; each case has ``timeout`` seconds (the first
    includes starting the process and importing the module). dtypes selects the cases
    (default both); float32 cases use ``tier`` ("float32", or "tf32" for GPU
    arithmetic); rtol and floor may only tighten a tier. The case list and the
    tolerances are this module's; DIR's files must be what the reference computes (each
    is recomputed and compared within the tier). Returns a VerifyReport; ``report.ok``
    only when every selected case ran and passed. Usage problems (no manifest, an old
    format, a bad against) raise before any case runs.
    """
    t0 = time.perf_counter()
    directory = _check_path("directory", directory)
    target = _target_text(against)
    dtypes = _selected(dtypes)
    tiers = _tiers_for(dtypes, tier, rtol, floor)
    timeout = _check_timeout(timeout)
    base_seed = read_manifest(directory)["base_seed"]
    known = {s.name + ".npz" for s in FIXTURE_CASES} | {"manifest.json"}
    stray = sorted(f for f in os.listdir(directory) if f not in known
                   and not f.startswith("."))
    problems = [f"DIR holds files the reference does not write: {', '.join(stray)}"] \
        if stray else []
    cases, backend, interrupted = [], _Backend(target, timeout), False
    try:
        for spec in FIXTURE_CASES:
            case, why, mags = _fixture_file_problem(directory, spec, base_seed)
            if spec.dtype not in dtypes:
                if why:
                    problems.append(f"{spec.name}: {why}")
                continue
            if not why and backend.hung:
                why = (f"not run: the backend timed out on {backend.hung} (a hanging "
                       "backend would cost the timeout on every case)")
            if why:
                cases.append(CaseResult(spec.name, spec.dtype, tiers[spec.dtype].name,
                                        "error", why, spec=spec))
                continue
            cases.append(_run_case(backend, case, spec.name, tiers[spec.dtype], spec,
                                   mags))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        backend.close()
    return VerifyReport("fixtures", target, dtypes, tiers, tuple(cases), tuple(problems),
                        time.perf_counter() - t0, interrupted=interrupted)


MAX_TIMEOUT = 86400.0       # a day: longer waits are a mistake, not a slow backend


def _check_timeout(timeout) -> float:
    t = _check_real("timeout", timeout, "a finite number of seconds > 0")
    if not 0 < t <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be > 0 and at most {MAX_TIMEOUT:g} seconds, "
                         f"got {t:g}")
    return t


# --- Property-based differential testing ---------------------------------------------

DIFFERENTIAL_BOUNDS = {"T": 20, "B": 3, "D": 4, "H": 6, "O": 4}
# Few distinct shapes for backends that compile once per shape (JAX): --buckets.
SHAPE_BUCKETS = {"T": (1, 5, 12), "B": (1, 3), "D": (1, 3), "H": (1, 4), "O": (2, 3)}
DIFFERENTIAL_EXAMPLES = 100
MAX_EXAMPLES = 100_000      # about an hour with a fast backend
_SCALE_EXPONENTS = (0, -3, 3, -6, -8, 4)     # shrink towards 1; relu mse cases
_SMALL_SCALE_EXPONENTS = (0, -3, -6, -8)      # xent and tanh: no saturation


def case_specs(dtypes=("float64", "float32"), *, buckets: bool = False, bounds=None):
    """A hypothesis strategy of CaseSpecs: every scheme x loss x output, the dtypes given,
    T, B, D, H, O from 1 to ``bounds`` (default DIFFERENTIAL_BOUNDS; from SHAPE_BUCKETS
    with buckets=True), scales 1e-8 to 1e4 and w_scale 0.1 to 10 (relu mse; up to 1 for
    xent, whose softmax saturates, and tanh, which saturates), with and without exact zeros, h0 and a non-symmetric W_hh. Shrinks towards T = B =
    D = H = O = 1, scale 1 and the default flags."""
    from hypothesis import strategies as st
    dtypes = _selected(dtypes)
    _check_bool("buckets", buckets)
    if bounds is not None and not isinstance(bounds, dict):
        raise TypeError(f"bounds must be a dict like {DIFFERENTIAL_BOUNDS}, got "
                        f"{type(bounds).__name__}")
    for k, v in (bounds or {}).items():
        _check_choice("bounds' keys", k, tuple(DIFFERENTIAL_BOUNDS))
        _check_size(f"bounds[{k!r}]", v)
        if v > 64:
            raise ValueError(f"bounds[{k!r}] must be at most 64 (cases stay small), got {v}")
    bounds = dict(DIFFERENTIAL_BOUNDS, **(bounds or {}))

    @st.composite
    def spec(draw):
        def size(k):
            if buckets:
                return draw(st.sampled_from(SHAPE_BUCKETS[k]))
            return draw(st.integers(1, bounds[k]))
        T, B, D, H, O = (size(k) for k in ("T", "B", "D", "H", "O"))
        scheme = draw(st.sampled_from(tuple(SCHEMES)))
        loss = draw(st.sampled_from(LOSSES))
        output = draw(st.sampled_from(OUTPUTS))
        dtype = draw(st.sampled_from(dtypes))
        small = loss == "xent" or SCHEMES[scheme].nonlinearity == "tanh"
        s = draw(st.sampled_from(_SMALL_SCALE_EXPONENTS if small else _SCALE_EXPONENTS))
        w = draw(st.sampled_from((0, -1) if small else (0, -1, 1)))
        return CaseSpec(draw(st.integers(0, 2 ** 32 - 1)), scheme, loss, output, T, B, D,
                        H, max(O, 2) if loss == "xent" else O, dtype, scale=10.0 ** s,
                        w_scale=10.0 ** w, zeros=draw(st.booleans()),
                        h0=not draw(st.booleans()), nonsym=draw(st.booleans()))
    return spec()


class _CaseFailed(Exception):
    pass


class _StopRun(BaseException):
    """Raised through hypothesis (which shrinks on Exception only) when the backend
    hung, ended its process or cannot be imported: shrinking would only repeat it."""


def verify_differential(against, *, examples: int = DIFFERENTIAL_EXAMPLES, seed: int = 0,
                        dtypes=None, tier="float32", rtol=None, floor=None,
                        timeout: float = VERIFY_TIMEOUT, buckets: bool = False,
                        bounds=None, save_failure=None) -> VerifyReport:
    """Property-based differential testing: hypothesis draws ``examples`` CaseSpecs
    (case_specs), split evenly over the dtypes (one run per dtype), each case is run by the
    backend (as in verify_fixtures) and checked with the tier's scale-aware tolerances. On
    a failure hypothesis shrinks it to the smallest failing case; the report lists, per
    dtype, the cases that passed before it and the smallest failure, with a ready-to-run
    reproducer (a hang, an ended process or a failed import stops the run unshrunk); save_failure (a new .npz path outside any fixture
    directory) saves that case as a fixture file. Deterministic for a given seed (no
    example database), so CI runs repeat.
    """
    t0 = time.perf_counter()
    target = _target_text(against)
    dtypes = _selected(dtypes)
    tiers = _tiers_for(dtypes, tier, rtol, floor)
    timeout = _check_timeout(timeout)
    examples = _check_size("examples", examples)
    if examples > MAX_EXAMPLES:
        raise ValueError(f"examples must be at most {MAX_EXAMPLES}, got {examples}")
    _check_size("seed", seed, minimum=0)
    case_specs(dtypes, buckets=buckets, bounds=bounds)          # checks both
    if save_failure is not None:
        save_failure = _check_save_path(save_failure)
    backend, problems, interrupted = _Backend(target, timeout), [], False
    cases, repros, calls, saved = [], [], 0, False
    try:
        for i, dtype in enumerate(dtypes):       # the examples split evenly over dtypes
            n = examples // len(dtypes) + (i < examples % len(dtypes))
            if n == 0:
                continue
            passed, failures, n_calls = [], [], [0]
            try:
                stop, problem = _differential_run(
                    backend, case_specs((dtype,), buckets=buckets, bounds=bounds), n,
                    seed, tiers, passed, failures, n_calls)
            finally:                             # an interrupt keeps what was checked
                calls += n_calls[0]
                cases += passed
            if problem:
                problems.append(problem)
            if failures:
                spec, case, r = failures[-1]             # hypothesis replays the smallest
                cases.append(r)
                repro = _reproducer(spec, target, tiers[spec.dtype].name)
                if stop:
                    repro = "# not shrunk: the backend hung, ended its process or cannot " \
                        "be imported\n" + repro
                if save_failure is not None and not saved:
                    _write_npz(save_failure, {k: case[k] for k in FIXTURE_KEYS})
                    repro += f"\n# the case is saved as {save_failure} " \
                        "(nprnn_ref.load_fixture)"
                    saved = True
                repros.append(repro)
            if stop:
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        backend.close()
    repro = "\n\n".join(repros)
    return VerifyReport("differential", target, dtypes, tiers, tuple(cases),
                        tuple(problems), time.perf_counter() - t0, examples=calls,
                        reproducer=repro, interrupted=interrupted)


def _differential_run(backend, strategy, examples, seed, tiers, passed, failures, calls):
    """One hypothesis run of ``examples`` cases from ``strategy``, appending to ``passed``
    the results that passed before the first failure and to ``failures`` (spec, case,
    result) of every failing call (the last is the smallest), counting calls in
    calls[0]. Returns (whether it stopped without shrinking, a problem text)."""
    from hypothesis import HealthCheck, Verbosity, assume, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import Flaky, Unsatisfiable

    def prop(spec):
        try:
            case, _ = make_case(spec, 0, max_draws=20)
        except RuntimeError:
            assume(False)
        calls[0] += 1
        r = _run_case(backend, case, spec.name, tiers[spec.dtype], spec)
        if not r.ok:
            failures.append((spec, case, r))
            if r.status == "error" and not r.problem.startswith("the function raised"):
                raise _StopRun(r.name)
            raise _CaseFailed(r.name)
        if not failures:
            passed.append(r)
    test = settings(max_examples=examples, database=None, deadline=None, print_blob=False,
                    derandomize=False, verbosity=Verbosity.quiet,
                    suppress_health_check=list(HealthCheck))(given(strategy)(prop))
    test = hypothesis_seed(seed)(test)
    stop, problem = False, ""
    try:
        test()
    except _CaseFailed:
        pass
    except _StopRun:
        stop = True
    except (Flaky, Unsatisfiable) as e:
        problem = f"hypothesis: {type(e).__name__}: {e}"
    return stop, problem


def _check_save_path(path) -> str:
    path = _check_path("save_failure", path)
    if not path.endswith(".npz"):
        raise ValueError(f"save_failure must be a .npz path, got {path!r}")
    if os.path.exists(path):
        raise FileExistsError(f"save_failure: {path} exists; choose a new file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"save_failure: folder {folder} does not exist")
    if os.path.exists(os.path.join(folder, "manifest.json")):
        raise ValueError(f"save_failure: {folder} is a fixture directory (it has a "
                         "manifest.json); save the failing case elsewhere")
    return path


def _reproducer(spec: CaseSpec, target: str, tier: str) -> str:
    return "\n".join([
        "import nprnn_ref as nr",
        f"spec = nr.{spec!r}",
        "case, _ = nr.make_case(spec, 0)",
        f"result = nr.load_backend({target!r})(case)",
        f"for t in nr.check_case(case, result, {tier.split(' ')[0]!r}):",
        "    print(t.name, t.status, t.ratio, t.detail)"])


# --- Diagnoses: likely causes read from the pattern of failures -------------------------

def _count_names(spec: CaseSpec) -> dict:
    """The counts a sum-instead-of-mean would multiply by, for a spec."""
    rows = spec.B if spec.output == "last" else spec.T * spec.B
    out = {"rows (step, sequence)": rows, "sequences B": spec.B, "steps T": spec.T}
    if spec.loss == "mse":
        out["elements of y"] = rows * spec.O
    return out


def _few(names, n=3) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def diagnose(cases) -> tuple:
    """Likely causes of the failures among ``cases`` (CaseResults), each with its
    evidence; empty when every case passed. Heuristics: each rule names a pattern that a
    common mistake leaves, and the cases that show it."""
    if isinstance(cases, (str, bytes, dict)) or not hasattr(cases, "__iter__"):
        raise TypeError(f"cases must be an iterable of CaseResults, got "
                        f"{type(cases).__name__}")
    cases = tuple(cases)
    for c in cases:
        if not isinstance(c, CaseResult):
            raise TypeError(f"cases must hold CaseResults, got {type(c).__name__}")
    bad = [c for c in cases if not c.ok]
    if not bad:
        return ()
    tensors = [(c, t) for c in bad for t in c.tensors if not t.ok]
    numeric = [(c, t) for c, t in tensors if t.status == "fail"]
    found = _process_diagnoses(bad) + _contract_diagnoses(tensors)
    if numeric:
        found += (_value_diagnoses(numeric) + _pattern_diagnoses(cases)
                  + _time_diagnoses(cases, bad, numeric))
    return tuple(found)


def _process_diagnoses(bad) -> list:
    """The function hung, ended its process, exited or could not be imported."""
    out = []
    for kind, cause in (("timeout", "the function hangs or is far too slow"),
                        ("process ended", "the function ends its process (os._exit, a "
                         "crash or an abort)"),
                        ("SystemExit", "the function calls sys.exit"),
                        ("cannot import", "the module cannot be imported")):
        hit = [c for c in bad if c.status == "error" and kind in c.problem]
        if hit:
            out.append(Diagnosis(cause, f"{len(hit)} case(s), e.g. {hit[0].name}: "
                                 f"{hit[0].problem}"))
    return out


def _contract_diagnoses(tensors) -> list:
    """Results of the wrong dtype, type, shape or keys."""
    out = []
    dtype_bad = [(c, t) for c, t in tensors if t.status == "dtype"]
    if dtype_bad:
        c, t = dtype_bad[0]
        out.append(Diagnosis(
            "the backend returns another dtype than the case's (float32 computed in "
            "float64 passes float32 cases without testing float32 arithmetic)",
            f"{len(dtype_bad)} tensor(s), e.g. {c.name} {t.name}: {t.detail}"))
    type_bad = [(c, t) for c, t in tensors if t.status in ("type", "missing", "shape")]
    if type_bad:
        c, t = type_bad[0]
        out.append(Diagnosis(
            "the result does not have the contract's keys, types or shapes",
            f"{len(type_bad)} tensor(s), e.g. {c.name} {t.name}: {t.status}, {t.detail}"))
    return out


def _value_diagnoses(numeric) -> list:
    """Failing tensors that are zeros, a multiple of the expected values, or their
    transpose."""
    out = []
    # a tensor that is all zero wherever it fails, in two cases or more
    names = sorted({t.name for _, t in numeric})
    zero = [n for n in names if all(t.actual_zero for _, t in numeric if t.name == n)
            and sum(t.name == n for _, t in numeric) >= 2]
    if zero:
        hit = [c.name for c, t in numeric if t.name == zero[0]]
        out.append(Diagnosis(
            f"{_few(zero)} returned as zeros (a gradient not computed, not connected, or "
            "not copied back)", f"the actual tensor is all zero (relative error exactly "
            f"1) in every case where it fails, {len(hit)} case(s), e.g. {hit[0]}"))
    by_case = {}
    for c, t in numeric:          # a ~ k e, k at least 1% from 1, to a relative 1e-3
        if t.factor is not None and not t.actual_zero and abs(t.factor - 1) > 1e-2 \
                and t.residual < 1e-3 * max(1.0, abs(t.factor)):
            by_case.setdefault(c.name, (c, []))[1].append(t)
    scaled = [ct for ct in by_case.values() if any(t.shape for t in ct[1])]
    if scaled:
        c, ts = scaled[0]
        k = ts[0].factor
        # one tensor off by a factor: the same factor in every case where it fails
        same = [t for cc, t in numeric if t.name == ts[0].name]
        single = len(ts) == 1 and len(same) >= 2 and all(
            t.factor is not None and abs(t.factor / k - 1) < 1e-6 for t in same)
        if len(ts) == 1 and not single:
            ts = []                              # one tensor in one case: a coincidence
        if not ts:
            pass
        elif single and ts[0].name == "grad_b_h" and abs(k - 2) < 1e-6:
            out.append(Diagnosis("grad_b_h is twice the reference: the gradients of "
                                 "torch's two biases added (either one is grad_b_h)",
                                 f"{c.name}: grad_b_h = 2 x expected"))
        elif single:
            out.append(Diagnosis(f"{ts[0].name} is {k:.6g} times the reference (a factor "
                                 "in that tensor alone)", f"{c.name}: {ts[0].name} = "
                                 f"{k:.6g} x expected (relative residual < 1e-3)"))
        elif c.spec is not None and all(abs(t.factor / k - 1) < 1e-6 for t in ts):
            match = [n for n, v in _count_names(c.spec).items() if abs(k / v - 1) < 1e-6]
            what = (f" = the number of {match[0]}: a sum where the mean was meant (the "
                    "convention is torch's default mean reduction)") if match else ""
            out.append(Diagnosis(f"the failing tensors are {k:.6g} times the "
                                 f"reference{what}", f"{c.name}: "
                                 f"{', '.join(t.name for t in ts)} each equal {k:.6g} x "
                                 "the expected values (relative residual < 1e-3)"))
    transposed = [(c, t) for c, t in numeric if t.transposed]
    if transposed:
        c, t = transposed[0]
        out.append(Diagnosis(
            "W_hh applied transposed (W_hh^T h_{t-1} where W_hh h_{t-1} was meant): its "
            "gradient comes out transposed", f"{t.name} equals the expected values "
            f"transposed in {len(transposed)} case(s), e.g. {c.name}"))
    return out


# Patterns over the cases' specs: (the cases the mistake fails, its likely cause).
_PATTERNS = (
    (lambda s: not s.symmetric_w_hh, "a case with a non-symmetric W_hh",
     "W_hh applied transposed (W_hh^T h_{t-1} where W_hh h_{t-1} was meant): only a "
     "non-symmetric W_hh reveals it"),
    (lambda s: s.zeros and s.nonlinearity == "relu",
     "a relu case with exact-zero pre-activations",
     "ReLU'(0) is not 0: the convention is ReLU'(0) = 0 (mask z > 0, as torch.relu); "
     "clamp(min=0) or where(z >= 0) give 1, jnp.maximum(z, 0) 1/2"),
    (lambda s: s.T > 1, "a case with T > 1",
     "back-propagation through time across steps is wrong (the T = 1 cases, which need "
     "no BPTT, pass)"),
    (lambda s: s.scale * s.w_scale ** 2 < 1e-2, "a small-scale case",
     "an absolute threshold or epsilon in the backend (only small-scale cases fail)"),
    (lambda s: s.scale * s.w_scale ** 2 > 1e2, "a large-scale case",
     "clipping or saturation at large values (only large-scale cases fail)"),
    (lambda s: s.dtype == "float32", "a float32 case",
     "float32 arithmetic less precise than float32 (TF32 or bf16 matrix products? "
     "torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32 control "
     "them; on a GPU, check with the tf32 tier)"),
    (lambda s: not s.zeros, "a case with a non-zero b_h",
     "b_h counted twice (torch's bias_ih_l0 and bias_hh_l0 both set to b_h?): only the "
     "cases with b_h = 0 pass"),
)


def _pattern_diagnoses(cases) -> list:
    """A pattern of _PATTERNS that holds for every failing case and no passing one."""
    failed = [c for c in cases if c.status == "fail" and c.spec is not None]
    passed = [c for c in cases if c.ok and c.spec is not None]
    out = []
    if not (failed and passed):
        return out
    for pred, what, cause in _PATTERNS:
        if all(pred(c.spec) for c in failed) and not any(pred(c.spec) for c in passed):
            out.append(Diagnosis(cause, f"every failing case is {what} "
                                 f"({_few(c.name for c in failed)}), and none of the "
                                 f"{len(passed)} passing cases is"))
    return out


def _time_diagnoses(cases, bad, numeric) -> list:
    """Failures concentrated at early time steps, at the first step, or in the backward
    pass only."""
    out = []
    h_bad = [(c, t) for c, t in numeric if t.name == "h" and c.spec is not None]
    # (a wrong bias also fails h from the first step, but not where b_h = 0: zeros cases)
    if h_bad and all(0 in t.bad_steps for _, t in h_bad) and any(c.spec.zeros
                                                                 for c, _ in h_bad):
        h_fails = {c.name for c, _ in h_bad}
        no_h0 = [c for c in cases if c.spec is not None and not c.spec.h0]
        evidence = f"h fails at its first step in every case where it fails ({len(h_bad)})"
        if any(c.name in h_fails for c in no_h0):
            out.append(Diagnosis("the first step is skipped or misplaced (an off-by-one "
                                 "in the time loop): h is wrong from step 1 on, even "
                                 "where h0 = 0", evidence + ", h0 = 0 included"))
        elif no_h0:
            out.append(Diagnosis("h0 is ignored (the state starts from zeros, or h0 is "
                                 "not passed on): h is wrong from step 1 on wherever h0 "
                                 "is not 0", evidence + "; it passes in every case with "
                                 "h0 = 0"))
        else:
            out.append(Diagnosis("h is wrong from the first step on: h0 ignored or the "
                                 "first step skipped", evidence))
    grad_x = [(c, t) for c, t in numeric if t.name == "grad_x"]
    early = [(c, t) for c, t in grad_x if t.bad_steps and c.spec is not None
             and max(t.bad_steps) < c.spec.T - 1]
    if early and len(early) == len(grad_x) and any(len(t.bad_steps) > 1 for _, t in early):
        c, t = early[0]
        out.append(Diagnosis(
            "gradients stop flowing back through time (truncated BPTT, or a detached "
            "hidden state): grad_x fails at early steps only", f"{c.name}: grad_x fails "
            f"at steps {_few(map(str, t.bad_steps), 6)} of {c.spec.T}, the last pass"))
    if all(t.ok for c in bad for t in c.tensors if t.name in ("h", "y", "loss")) and \
            all(c.tensors for c in bad if c.status == "fail"):
        out.append(Diagnosis("the forward pass agrees and the backward pass does not",
                             "h, y and loss pass in every failing case; only gradients "
                             "fail"))
    return out


# --- Surveying a backend's margins ------------------------------------------------------

def survey_backend(against, n_seeds: int, *, tier="float32", dtypes=None,
                   specs=FIXTURE_CASES, timeout: float = VERIFY_TIMEOUT, out=None) -> dict:
    """Run the backend on fresh cases of every spec in both dtypes for base seeds 0 ..
    n_seeds - 1 (nothing written) and print, per dtype, the worst err / tol under the
    tiers (float32 cases under ``tier``): a backend has room when it is well below 1.
    Returns {dtype: (worst_ratio, n_cases, n_failed)}. This is how TIERS were checked."""
    out = sys.stdout if out is None else out
    if not hasattr(out, "write"):
        raise TypeError(f"out must be a text stream, got {type(out).__name__}")
    dtypes = _selected(dtypes)
    tiers = _tiers_for(dtypes, tier, None, None)
    n_seeds = _check_size("n_seeds", n_seeds)
    if n_seeds > 10_000:
        raise ValueError(f"n_seeds must be at most 10000, got {n_seeds}")
    if not isinstance(specs, (tuple, list)) or not specs:
        raise TypeError(f"specs must be a non-empty tuple of CaseSpecs, got {_short(specs)}")
    for i, sp in enumerate(specs):
        _check_case_spec(sp, f"specs[{i}]")
    backend, stats = _Backend(_target_text(against), _check_timeout(timeout)), {}
    try:
        for dtype in dtypes:
            worst, n, n_bad, where = 0.0, 0, 0, ""
            for seed in range(n_seeds):
                for spec in specs:
                    s = dataclasses_replace(spec, dtype=dtype)
                    case, _ = make_case(s, base_seed=seed)
                    r = _run_case(backend, case, s.name, tiers[dtype], s)
                    if r.status == "error" or any(t.ratio is None for t in r.tensors):
                        raise ValueError(f"{s.name} with base seed {seed}: "
                                         f"{r.problem or r.table()}")
                    for t in r.tensors:
                        if t.ratio > worst:
                            worst, where = t.ratio, f"{t.name} of {s.name}, base seed {seed}"
                    n, n_bad = n + 1, n_bad + (not r.ok)
            stats[dtype] = (worst, n, n_bad)
            print(f"{dtype}: {n} cases, worst err/tol {worst:.3g} under the "
                  f"{tiers[dtype].name} tier (rtol {tiers[dtype].rtol:g}, floor "
                  f"{tiers[dtype].floor:g}; margin "
                  f"{1 / worst if worst else float('inf'):.3g}x), {n_bad} failed"
                  + (f"; worst: {where}" if where else ""), file=out)
    finally:
        backend.close()
    return stats


# --- The command line: `nprnn-ref ...`; tasks.py adds the same commands --------------

class UsageError(Exception):
    """A command-line error: printed on one line, exit status 2."""


def _report_outputs(args, report: VerifyReport) -> None:
    for path, text in ((args.json, report.to_json), (args.junit, report.to_junit)):
        if path:
            with open(path, "w") as f:
                f.write(text())


def _verify_common(p) -> None:
    p.add_argument("--against", required=True, metavar="MODULE:FUNCTION",
                   help="the function to check: my_backend:run (importable from the "
                   "current directory) or path/to/my_backend.py:run")
    p.add_argument("--dtypes", default="float64,float32", metavar="LIST",
                   help="the case dtypes to check: float64, float32 or both (default); a "
                   "float32-only backend passes --dtypes float32")
    p.add_argument("--tier", default="float32", choices=DTYPE_TIERS["float32"],
                   help="the tolerance tier of the float32 cases: float32 (default) or "
                   "tf32 (a GPU with TF32 matrix products); float64 cases always use the "
                   "float64 tier")
    p.add_argument("--rtol", type=float, default=None,
                   help="a tighter rtol than the tier's (looser ones are refused)")
    p.add_argument("--atol", type=float, default=None, dest="floor",
                   help="a tighter absolute floor than the tier's (0 in float64)")
    p.add_argument("--timeout", type=float, default=VERIFY_TIMEOUT, metavar="S",
                   help=f"seconds per case, the first including the backend's start "
                   f"(default {VERIFY_TIMEOUT:g}: enough to import torch or compile JAX)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--junit", metavar="FILE", help="also write the report as JUnit XML")


def _run_verification(args, fn) -> int:
    for path in (args.json, args.junit):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UsageError(f"cannot write {path}: its folder does not exist")
    try:
        report = fn()
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        raise UsageError(str(e)) from None
    print(report.text())
    _report_outputs(args, report)
    if report.interrupted:
        return 130
    return 0 if report.ok else 1


def _cmd_verify_fixtures(args) -> int:
    return _run_verification(args, lambda: verify_fixtures(
        args.dir, args.against, dtypes=args.dtypes, tier=args.tier, rtol=args.rtol,
        floor=args.floor, timeout=args.timeout))


def _cmd_verify(args) -> int:
    return _run_verification(args, lambda: verify_differential(
        args.against, examples=args.examples, seed=args.seed, dtypes=args.dtypes,
        tier=args.tier, rtol=args.rtol, floor=args.floor, timeout=args.timeout,
        buckets=args.buckets, save_failure=args.save_failure))


def _cmd_export_fixtures(args) -> int:
    try:
        m = export_fixtures(args.dir, force=args.force, base_seed=args.seed)
    except (FileExistsError, NotADirectoryError, PermissionError, ValueError,
            RuntimeError) as e:
        raise UsageError(str(e)) from None
    total = sum(os.path.getsize(os.path.join(args.dir, c["file"])) for c in m["cases"])
    print(f"wrote {len(m['cases'])} cases ({total / 1024:.0f} KB) and manifest.json to "
          f"{args.dir}")
    return 0


def _cmd_survey(args) -> int:
    try:
        stats = survey_backend(args.against, args.seeds, tier=args.tier,
                               dtypes=args.dtypes, timeout=args.timeout)
    except (TypeError, ImportError) as e:
        raise UsageError(str(e)) from None
    except ValueError as e:
        print(f"survey-fixtures: FAIL: {e}", file=sys.stderr)
        return 1
    return 0 if all(w <= 1 for w, _, _ in stats.values()) else 1


def add_verification_commands(sub, parents=()) -> None:
    """Add export-fixtures, verify-fixtures, verify and survey-fixtures to an argparse
    subparsers object; each parser's ``func(args)`` returns the exit status and raises
    UsageError for a usage problem (exit 2)."""
    parents = list(parents)
    e = sub.add_parser("export-fixtures", parents=parents,
                       help="write golden fixtures (an .npz per case and manifest.json)",
                       description="Write one .npz per golden case and DIR/manifest.json: "
                       "inputs, parameters, every hidden state, the read-out, the loss and "
                       "every gradient, computed by this reference. Refuses a non-empty "
                       "DIR unless --force.")
    e.add_argument("dir", metavar="DIR")
    e.add_argument("--force", action="store_true",
                   help="overwrite the fixture files in a non-empty DIR")
    e.add_argument("--seed", type=int, default=FIXTURE_BASE_SEED,
                   help=f"base seed (default {FIXTURE_BASE_SEED})")
    e.set_defaults(func=_cmd_export_fixtures)
    v = sub.add_parser("verify-fixtures", parents=parents,
                       help="check a backend's function on the golden fixtures",
                       description="Run MODULE:FUNCTION (in its own process) on every case "
                       "of DIR and check each result tensor by tensor with scale-aware "
                       "tolerances. Exit status 0 only when every selected case ran and "
                       "passed, 1 when one failed, 2 on a usage error, 130 when "
                       "interrupted.")
    v.add_argument("dir", metavar="DIR", help="a directory written by export-fixtures")
    _verify_common(v)
    v.set_defaults(func=_cmd_verify_fixtures)
    d = sub.add_parser("verify", parents=parents,
                       help="property-based differential testing of a backend's function",
                       description="Draw cases with hypothesis (every scheme, loss, output "
                       "and dtype; sizes, scales, exact zeros, h0 and non-symmetric W_hh "
                       "varied), run MODULE:FUNCTION on each and check it; a failure is "
                       "shrunk to the smallest failing case and printed as a reproducer. "
                       "Deterministic for a --seed. Exit status as verify-fixtures.")
    _verify_common(d)
    d.add_argument("--examples", type=int, default=DIFFERENTIAL_EXAMPLES, metavar="N",
                   help=f"cases to draw (default {DIFFERENTIAL_EXAMPLES})")
    d.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    d.add_argument("--buckets", action="store_true",
                   help="draw shapes from a few buckets (backends that compile per shape)")
    d.add_argument("--save-failure", metavar="FILE.npz",
                   help="save the smallest failing case as a fixture file (a new file, "
                   "outside any fixture directory)")
    d.set_defaults(func=_cmd_verify)
    s = sub.add_parser("survey-fixtures", parents=parents,
                       help="a backend's worst error over many fresh cases, per tier",
                       description="Run MODULE:FUNCTION on every fixture spec in both "
                       "dtypes for base seeds 0..SEEDS-1 and print per dtype the worst "
                       "err/tol under the tiers.")
    s.add_argument("--against", required=True, metavar="MODULE:FUNCTION")
    s.add_argument("--seeds", type=int, default=20, help="base seeds (default 20)")
    s.add_argument("--tier", default="float32", choices=DTYPE_TIERS["float32"])
    s.add_argument("--dtypes", default="float64,float32", metavar="LIST")
    s.add_argument("--timeout", type=float, default=VERIFY_TIMEOUT, metavar="S")
    s.set_defaults(func=_cmd_survey)


def main(argv=None) -> int:
    """The ``nprnn-ref`` console command."""
    import argparse
    parser = argparse.ArgumentParser(
        prog="nprnn-ref", description="Golden fixtures and verification of other RNN "
        "backends against the nprnn-ref reference.")
    parser.add_argument("--version", action="version", version=f"nprnn-ref {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_verification_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"nprnn-ref {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nprnn-ref {args.command}: interrupted", file=sys.stderr)
        return 130
