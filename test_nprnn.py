"""The nprnn-ref test suite: a specification of nprnn_ref.py and tasks.py.

Run it with ``python -m pytest -q test_nprnn.py``. Hypothesis profiles: "ci" (the default:
derandomized, no deadline, a modest number of examples) and "thorough" (many more
examples), chosen with HYPOTHESIS_PROFILE=thorough.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import nprnn_ref as nr
import tasks

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=1000,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

EPS64 = np.finfo(np.float64).eps


# =======================================================================================
# Core (issue 2): initialisers, forward, BPTT, losses, optimiser
# =======================================================================================

def _random_case(rng, T, B, D, H, O, *, loss, output, dtype=np.float64, scale=0.7):
    """Parameters with non-zero biases, a non-zero h0, inputs and a target."""
    params = {
        "W_hx": rng.normal(0, scale, (H, D)), "W_hh": rng.normal(0, scale / np.sqrt(H), (H, H)),
        "b_h": rng.normal(0, 0.5, H), "W_yh": rng.normal(0, scale, (O, H)),
        "b_y": rng.normal(0, 0.5, O),
    }
    params = {k: v.astype(dtype) for k, v in params.items()}
    x = rng.normal(0, 1, (T, B, D)).astype(dtype)
    h0 = rng.normal(0, 0.5, (B, H)).astype(dtype)
    lead = (B,) if output == "last" else (T, B)
    if loss == "mse":
        target = rng.normal(0, 1, lead + (O,)).astype(dtype)
    else:
        target = rng.integers(0, O, lead)
    return params, x, h0, target


def _loss_only(params, x, h0, target, loss, output, nonlinearity):
    h, _ = nr.forward(params, x, h0, nonlinearity)
    L, _ = nr.loss_fn(nr.readout(params, h, output), target, loss)
    return float(L), h


COMBOS = [(f, lo, o) for f in nr.NONLINEARITIES for lo in nr.LOSSES for o in nr.OUTPUTS]


@pytest.mark.parametrize("nonlinearity,loss,output", COMBOS)
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 5), B=st.integers(1, 3),
       D=st.integers(1, 4), H=st.integers(2, 5), O=st.integers(2, 4))
def test_gradients_match_central_differences(nonlinearity, loss, output, seed, T, B, D, H, O):
    # Every parameter, x and h0, checked element by element in float64 with h = 1e-5.
    rng = np.random.default_rng(seed)
    params, x, h0, target = _random_case(rng, T, B, D, H, O, loss=loss, output=output)
    L, grads = nr.loss_and_grads(params, x, target, loss=loss, output=output,
                                 nonlinearity=nonlinearity, h0=h0)
    _, h = _loss_only(params, x, h0, target, loss, output, nonlinearity)
    mask = h > 0                                        # [z > 0], since h = max(0, z)
    step = 1e-5
    # Tolerance from rounding: each loss evaluation carries an error of a few eps * |L|
    # (100 eps covers the sums over T*B*H terms), divided by h in the difference quotient;
    # plus 1e-6 relative for the O(h^2) truncation term of the central difference.
    tol_abs = 100 * EPS64 * max(abs(float(L)), 1.0) / step
    arrays = dict(params, x=x, h0=h0)
    for name, a in arrays.items():
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + step
            Lp, hp = _loss_only(params, x, h0, target, loss, output, nonlinearity)
            a[idx] = old - step
            Lm, hm = _loss_only(params, x, h0, target, loss, output, nonlinearity)
            a[idx] = old
            if nonlinearity == "relu":
                # A ReLU kink between theta - h and theta + h makes the difference quotient
                # meaningless there: reject the draw instead of loosening the tolerance.
                assume(np.array_equal(hp > 0, mask) and np.array_equal(hm > 0, mask))
            num = (Lp - Lm) / (2 * step)
            ana = grads[name][idx]
            assert abs(num - ana) <= 1e-6 * abs(ana) + tol_abs, (name, idx, num, ana)


def test_gradient_check_is_not_vacuous():
    # The check above must be able to fail: a gradient off by 1e-4 is caught.
    rng = np.random.default_rng(1)
    params, x, h0, target = _random_case(rng, 3, 2, 2, 3, 2, loss="mse", output="all")
    L, grads = nr.loss_and_grads(params, x, target, output="all", h0=h0)
    step = 1e-5
    params["W_hh"][0, 1] += step
    Lp, _ = _loss_only(params, x, h0, target, "mse", "all", "relu")
    params["W_hh"][0, 1] -= 2 * step
    Lm, _ = _loss_only(params, x, h0, target, "mse", "all", "relu")
    num = (Lp - Lm) / (2 * step)
    tol = 1e-6 * abs(grads["W_hh"][0, 1]) + 100 * EPS64 * max(abs(L), 1.0) / step
    assert abs(num - grads["W_hh"][0, 1]) <= tol
    assert abs(num - (grads["W_hh"][0, 1] + 1e-4)) > tol


@pytest.mark.parametrize("output", nr.OUTPUTS)
def test_total_dh_equals_h0_gradient_of_the_suffix(output):
    # backward(return_dh=True) gives g_t = dL/dh_t. Independent check for output="last":
    # the loss depends on h_t only through the suffix x[t+1:] started from h_t, so g_t is
    # the h0 gradient of loss_and_grads on that suffix (itself checked by differences).
    rng = np.random.default_rng(7)
    T = 6
    params, x, h0, _ = _random_case(rng, T, 3, 2, 4, 2, loss="mse", output="last")
    target = rng.normal(size=(3, 2))
    h, cache = nr.forward(params, x, h0)
    y = nr.readout(params, h, "last")
    _, dy = nr.loss_fn(y, target, "mse")
    dh, _ = nr.readout_backward(dy, params, h, "last")
    _, _, _, g = nr.backward(dh, cache, return_dh=True)
    assert g.shape == (T, 3, 4)
    for t in range(T - 1):
        _, gs = nr.loss_and_grads(params, x[t + 1:], target, h0=np.array(h[t]))
        np.testing.assert_allclose(g[t], gs["h0"], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(g[-1], dh[-1])


def test_backward_with_and_without_return_dh_agree():
    rng = np.random.default_rng(3)
    params, x, h0, _ = _random_case(rng, 5, 2, 3, 4, 2, loss="mse", output="all")
    for f in nr.NONLINEARITIES:
        h, cache = nr.forward(params, x, h0, f)
        dh = rng.normal(size=h.shape)
        a = nr.backward(dh, cache)
        b = nr.backward(dh, cache, return_dh=True)
        for u, v in zip(a[:2], b[:2]):
            np.testing.assert_array_equal(u, v)
        for k in a[2]:
            np.testing.assert_array_equal(a[2][k], b[2][k])


# --- golden values ----------------------------------------------------------------------

def _golden_params():
    return {"W_hx": np.array([[0.5], [-1.0]]), "W_hh": np.array([[0.5, 0.25], [-0.5, 1.0]]),
            "b_h": np.array([0.1, 0.2]), "W_yh": np.array([[1.0, -2.0]]),
            "b_y": np.array([0.5])}


def test_forward_golden_values_worked_by_hand():
    # x = linspace(-1, 0.5, 4) as (T=2, B=2, D=1): seq 0 reads -1 then 0, seq 1 -0.5 then 0.5.
    # Worked by hand (h0 = 0, relu):
    #  seq 0: z1 = [-0.5+0.1, 1.0+0.2] = [-0.4, 1.2] -> h1 = [0, 1.2]
    #         z2 = [0, 0] + [0.25*1.2, 1.0*1.2] + [0.1, 0.2] = [0.4, 1.4] -> h2 = [0.4, 1.4]
    #         y = 0.4 - 2*1.4 + 0.5 = -1.9
    #  seq 1: z1 = [-0.25+0.1, 0.5+0.2] = [-0.15, 0.7] -> h1 = [0, 0.7]
    #         z2 = [0.25, -0.5] + [0.175, 0.7] + [0.1, 0.2] = [0.525, 0.4] -> h2 = [0.525, 0.4]
    #         y = 0.525 - 0.8 + 0.5 = 0.225
    #  mse against 0: (1.9^2 + 0.225^2) / 2 = (3.61 + 0.050625) / 2 = 1.8303125
    #  dL/dy = 2 y / 2 = y, so dW_yh = -1.9 * [0.4, 1.4] + 0.225 * [0.525, 0.4]
    #        = [-0.641875, -2.57], db_y = -1.9 + 0.225 = -1.675
    p = _golden_params()
    x = np.linspace(-1.0, 0.5, 4).reshape(2, 2, 1)
    h, _ = nr.forward(p, x)
    np.testing.assert_allclose(h, [[[0, 1.2], [0, 0.7]], [[0.4, 1.4], [0.525, 0.4]]],
                               rtol=0, atol=1e-15)
    y = nr.readout(p, h, "last")
    np.testing.assert_allclose(y, [[-1.9], [0.225]], rtol=0, atol=1e-15)
    L, g = nr.loss_and_grads(p, x, np.zeros((2, 1)))
    assert L == pytest.approx(1.8303125, abs=1e-15)
    np.testing.assert_allclose(g["W_yh"], [[-0.641875, -2.57]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(g["b_y"], [-1.675], rtol=0, atol=1e-15)


def test_forward_golden_tanh_against_math_tanh():
    # The same case with tanh, each step evaluated with Python's math.tanh, scalar by scalar.
    import math
    p = _golden_params()
    x = np.linspace(-1.0, 0.5, 4).reshape(2, 2, 1)
    h, _ = nr.forward(p, x, nonlinearity="tanh")
    for b in range(2):
        prev = [0.0, 0.0]
        for t in range(2):
            z = [p["W_hx"][i, 0] * x[t, b, 0] + p["W_hh"][i, 0] * prev[0]
                 + p["W_hh"][i, 1] * prev[1] + p["b_h"][i] for i in range(2)]
            prev = [math.tanh(v) for v in z]
            np.testing.assert_allclose(h[t, b], prev, rtol=1e-15, atol=0)


def test_xent_golden_value():
    # Logits [1, 2, 3] with label 2: log(e^1 + e^2 + e^3) - 3 = 0.40760596444437... (by hand:
    # log(1 + e^-1 + e^-2) = log(1.5032147) ); large logits stay finite (stable log-sum-exp).
    L, dy = nr.loss_fn(np.array([[1.0, 2.0, 3.0]]), np.array([2]), "xent")
    assert L == pytest.approx(np.log(1 + np.exp(-1) + np.exp(-2)), rel=1e-15)
    L2, _ = nr.loss_fn(np.array([[1000.0, 1001.0, 1002.0]]), np.array([2]), "xent")
    assert L2 == pytest.approx(L, rel=1e-12)
    # dL/dy = softmax(y) - onehot(2): e^k / (e + e^2 + e^3) for k = 1, 2, and that minus 1
    # for k = 3; each entry is a handful of roundings from exact, hence 4 eps.
    s = np.e + np.e ** 2 + np.e ** 3
    np.testing.assert_allclose(dy, [[np.e / s, np.e ** 2 / s, np.e ** 3 / s - 1]],
                               rtol=4 * EPS64, atol=0)


def test_agrees_with_torch_in_float64():
    # An independent oracle: torch.nn.RNN + Linear + autograd in float64.
    torch = pytest.importorskip("torch", reason="torch not installed (optional oracle)")
    rng = np.random.default_rng(11)
    for f, loss, output in COMBOS:
        T, B, D, H, O = 7, 3, 2, 5, 4
        p, x, h0, target = _random_case(rng, T, B, D, H, O, loss=loss, output=output)
        L, g = nr.loss_and_grads(p, x, target, loss=loss, output=output, nonlinearity=f, h0=h0)
        rnn = torch.nn.RNN(D, H, nonlinearity=f, dtype=torch.float64)
        lin = torch.nn.Linear(H, O, dtype=torch.float64)
        with torch.no_grad():
            rnn.weight_ih_l0.copy_(torch.from_numpy(p["W_hx"]))
            rnn.weight_hh_l0.copy_(torch.from_numpy(p["W_hh"]))
            rnn.bias_ih_l0.copy_(torch.from_numpy(p["b_h"]))
            rnn.bias_hh_l0.zero_()
            lin.weight.copy_(torch.from_numpy(p["W_yh"]))
            lin.bias.copy_(torch.from_numpy(p["b_y"]))
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        ht0 = torch.from_numpy(h0.copy()).requires_grad_(True)
        out, _ = rnn(xt, ht0[None])
        y = lin(out[-1] if output == "last" else out)
        if loss == "mse":
            Lt = torch.nn.MSELoss()(y, torch.from_numpy(target))
        else:
            Lt = torch.nn.CrossEntropyLoss()(y.reshape(-1, O),
                                             torch.from_numpy(target.reshape(-1)))
        Lt.backward()
        assert float(L) == pytest.approx(Lt.item(), rel=1e-12)
        pairs = {"W_hx": rnn.weight_ih_l0.grad, "W_hh": rnn.weight_hh_l0.grad,
                 "b_h": rnn.bias_ih_l0.grad, "W_yh": lin.weight.grad, "b_y": lin.bias.grad,
                 "x": xt.grad, "h0": ht0.grad}
        for k, v in pairs.items():
            np.testing.assert_allclose(g[k], v.numpy(), rtol=1e-10, atol=1e-13, err_msg=k)


# --- float32 ----------------------------------------------------------------------------

@pytest.mark.parametrize("nonlinearity,loss,output", COMBOS)
def test_float32_stays_float32_and_matches_float64(nonlinearity, loss, output):
    rng = np.random.default_rng(5)
    p, x, h0, target = _random_case(rng, 6, 3, 2, 5, 3, loss=loss, output=output)
    L64, g64 = nr.loss_and_grads(p, x, target, loss=loss, output=output,
                                 nonlinearity=nonlinearity, h0=h0)
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    t32 = target.astype(np.float32) if loss == "mse" else target
    L32, g32 = nr.loss_and_grads(p32, x.astype(np.float32), t32, loss=loss, output=output,
                                 nonlinearity=nonlinearity, h0=h0.astype(np.float32))
    assert L32.dtype == np.float32 and L64.dtype == np.float64
    h32, _ = nr.forward(p32, x.astype(np.float32), None, nonlinearity)
    assert h32.dtype == np.float32
    for k in g32:
        assert g32[k].dtype == np.float32, k
        # float32 carries ~6e-8 relative rounding per operation; a few hundred operations
        # along a path of this size stay well inside 1e-4 relative to the largest entry.
        np.testing.assert_allclose(g32[k], g64[k], rtol=0,
                                   atol=1e-4 * max(1.0, np.abs(g64[k]).max()), err_msg=k)
    assert abs(float(L32) - float(L64)) <= 1e-5 * max(1.0, abs(float(L64)))


def test_mixed_dtypes_are_refused_not_cast():
    p = nr.init_params(2, 3, 1, "np", np.random.default_rng(0), dtype=np.float32)
    with pytest.raises(TypeError, match=r"x must have dtype float32.*got float64"):
        nr.forward(p, np.zeros((2, 1, 2)))


# --- initialisers -----------------------------------------------------------------------

def test_np_init_invariants_for_every_size_up_to_200():
    for n in range(1, 201):
        W = nr.np_init(n, np.random.default_rng(n))
        # Recompute the paper's construction independently from the same draw.
        R = np.random.default_rng(n).standard_normal((n, n))
        M = R.T @ R / n + np.eye(n)
        lam_M = np.linalg.eigvalsh(0.5 * (M + M.T))[-1]
        assert W.dtype == np.float64 and W.shape == (n, n)
        assert np.array_equal(W, W.T), n                              # exactly symmetric
        np.testing.assert_allclose(W * lam_M, M, rtol=1e-12, atol=1e-12)
        ev = np.linalg.eigvalsh(W)
        assert abs(ev[-1] - 1.0) <= 1e-12, (n, ev[-1])
        if n >= 2:
            assert ev[-2] < 1 - 1e-9, (n, ev[-2])
        # A = R^T R / n is PSD, so every eigenvalue of (A + I) / lam is >= 1 / lam; the
        # 64 n eps slack covers eigvalsh's backward error on a norm-1 matrix.
        assert ev[0] >= 1.0 / lam_M - 64 * n * EPS64, (n, ev[0])


@given(seed=st.integers(0, 2**63 - 1), n=st.integers(2, 60))
def test_np_init_reproducible_and_seed_dependent(seed, n):
    # n >= 2: at n = 1 every draw gives exactly [[1.0]] ((r^2 + 1) / (r^2 + 1)).
    a = nr.np_init(n, np.random.default_rng(seed))
    b = nr.np_init(n, np.random.default_rng(seed))
    c = nr.np_init(n, np.random.default_rng(seed + 1))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_identity_init_is_exact():
    assert np.array_equal(nr.identity_init(5), np.eye(5))
    assert np.array_equal(nr.identity_init(4, scale=0.01), 0.01 * np.eye(4))


def test_alpha_values():
    # sqrt(2) * exp(1.2 / (max(n, 6) - 2.4)): 1.97368 at 6 (= 1.41421 * e^(1/3)),
    # 1.43172 at 100, 1.42777 at 128 (evaluated by hand with a calculator).
    assert round(nr.alpha(6), 4) == 1.9737
    assert round(nr.alpha(100), 4) == 1.4317
    assert round(nr.alpha(128), 4) == 1.4278
    assert nr.alpha(1) == nr.alpha(6)                   # max(n, 6)


def test_orthogonal_init_is_orthogonal_and_sign_fixed():
    rng = np.random.default_rng(4)
    Q = nr.orthogonal_init(50, rng)
    np.testing.assert_allclose(Q @ Q.T, np.eye(50), atol=1e-13)
    G = np.random.default_rng(4).standard_normal((50, 50))
    Rp = Q.T @ G                                        # = diag(d) R: upper, diagonal > 0
    np.testing.assert_allclose(np.tril(Rp, -1), 0, atol=1e-12)
    assert np.all(np.diag(Rp) > 0)


def _chi2_ok(w, std, x=np.log(2e10)):
    # n * S^2 / std^2 ~ chi2(n) for n i.i.d. N(0, std^2) draws. Laurent and Massart (2000,
    # Lemma 1): P(X - n >= 2 sqrt(n x) + 2x) <= e^-x and P(n - X >= 2 sqrt(n x)) <= e^-x;
    # with x = ln(2e10) each check fails by chance with probability below 1e-10.
    n = w.size
    X = float(np.sum(np.square(w / std)))
    return n - 2 * np.sqrt(n * x) <= X <= n + 2 * np.sqrt(n * x) + 2 * x


@pytest.mark.parametrize("scheme", sorted(nr.SCHEMES))
def test_init_params_standard_deviations(scheme):
    H = 200
    p = nr.init_params(H, H, H, scheme, np.random.default_rng(99))
    assert _chi2_ok(p["W_hx"], nr.SCHEMES[scheme].w_hx_std(H))
    assert _chi2_ok(p["W_yh"], np.sqrt(2.0 / (H + H)))
    assert not _chi2_ok(p["W_yh"], 1.05 * np.sqrt(2.0 / (H + H)))   # the check has teeth
    assert np.all(p["b_h"] == 0) and np.all(p["b_y"] == 0)
    expected_std = {"np": nr.alpha(H) / np.sqrt(H), "np-tanh": nr.alpha(H) / np.sqrt(H),
                    "irnn": 1e-3, "i-rnn": 1e-3, "tanh": 1 / np.sqrt(H)}[scheme]
    assert nr.SCHEMES[scheme].w_hx_std(H) == pytest.approx(expected_std, rel=1e-15)


@pytest.mark.parametrize("scheme", sorted(nr.SCHEMES))
def test_init_params_draw_order_and_recipes(scheme):
    D, H, O, seed = 3, 6, 2, 12
    p = nr.init_params(D, H, O, scheme, np.random.default_rng(seed))
    r = np.random.default_rng(seed)                     # replay: W_hx, then W_hh, then W_yh
    W_hx = r.standard_normal((H, D)) * nr.SCHEMES[scheme].w_hx_std(H)
    if scheme in ("np", "np-tanh"):
        W_hh = nr.np_init(H, r)
    elif scheme == "tanh":
        W_hh = nr.orthogonal_init(H, r)
    else:
        W_hh = np.eye(H) * (0.01 if scheme == "i-rnn" else 1.0)
    W_yh = r.standard_normal((O, H)) * np.sqrt(2 / (H + O))
    np.testing.assert_array_equal(p["W_hx"], W_hx)
    np.testing.assert_array_equal(p["W_hh"], W_hh)
    np.testing.assert_array_equal(p["W_yh"], W_yh)
    assert nr.SCHEMES[scheme].nonlinearity == {"np": "relu", "np-tanh": "tanh", "irnn": "relu",
                                               "i-rnn": "relu", "tanh": "tanh"}[scheme]


def test_init_params_scheme_options_and_dtype():
    p = nr.init_params(2, 4, 1, "i-rnn", np.random.default_rng(0), scale=0.5)
    assert np.array_equal(p["W_hh"], 0.5 * np.eye(4))
    p32 = nr.init_params(2, 4, 1, "np", np.random.default_rng(0), dtype=np.float32)
    assert all(v.dtype == np.float32 for v in p32.values())
    with pytest.raises(TypeError, match="scheme 'np' takes options none, got unexpected"):
        nr.init_params(2, 4, 1, "np", np.random.default_rng(0), scale=0.5)


# --- purity, memory ---------------------------------------------------------------------

def _snapshot(d):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


@pytest.mark.parametrize("nonlinearity,loss,output", COMBOS)
def test_nothing_passed_in_is_mutated_or_aliased(nonlinearity, loss, output):
    rng = np.random.default_rng(8)
    p, x, h0, target = _random_case(rng, 4, 2, 3, 5, 2, loss=loss, output=output)
    inputs = dict(p, x=x, h0=h0, target=target)
    before = _snapshot(inputs)
    _, grads = nr.loss_and_grads(p, x, target, loss=loss, output=output,
                                 nonlinearity=nonlinearity, h0=h0)
    h, cache = nr.forward(p, x, h0, nonlinearity)
    dh = rng.normal(size=h.shape)
    dh_before = dh.copy()
    cache_before = _snapshot(cache)
    dx, dh0, g2, gdh = nr.backward(dh, cache, return_dh=True)
    for k, v in before.items():
        np.testing.assert_array_equal(inputs[k], v, err_msg=k)
    np.testing.assert_array_equal(dh, dh_before)
    for k, v in cache_before.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(cache[k], v, err_msg=k)
    outs = list(grads.values()) + [dx, dh0, gdh] + list(g2.values())
    for o in outs:
        for a in list(inputs.values()) + [dh]:
            assert not np.shares_memory(o, a)


def test_cache_holds_O_TBH_numbers():
    T, B, D, H = 50, 4, 3, 20
    p = nr.init_params(D, H, 2, "np", np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(T, B, D))
    _, cache = nr.forward(p, x)
    total = sum(v.nbytes for v in cache.values() if isinstance(v, np.ndarray))
    # x, every state h_0..h_T, and references to W_hx and W_hh: nothing of size T*H*H.
    bound = 8 * (T * B * D + (T + 1) * B * H + H * D + H * H)
    assert total <= bound, (total, bound)
    assert bound < 8 * T * H * H


# --- optimiser --------------------------------------------------------------------------

def _grads_example():
    rng = np.random.default_rng(2)
    g = {k: rng.normal(size=s) for k, s in
         [("W_hx", (3, 2)), ("W_hh", (3, 3)), ("b_h", (3,)), ("W_yh", (1, 3)), ("b_y", (1,))]}
    g["x"] = rng.normal(size=(4, 2, 2)) * 100
    g["h0"] = rng.normal(size=(2, 3)) * 100
    return g


def test_clip_grads_global_norm_over_parameters_only():
    g = _grads_example()
    norm_ref = np.linalg.norm(np.concatenate([g[k].ravel() for k in nr.PARAM_NAMES]))
    clipped, norm = nr.clip_grads(g, 0.5 * norm_ref)
    assert norm == pytest.approx(norm_ref, rel=1e-14)
    new = np.linalg.norm(np.concatenate([clipped[k].ravel() for k in nr.PARAM_NAMES]))
    assert new == pytest.approx(0.5 * norm_ref, rel=1e-14)
    for k in nr.PARAM_NAMES:                            # direction kept
        np.testing.assert_allclose(clipped[k], 0.5 * g[k], rtol=1e-14)
    np.testing.assert_array_equal(clipped["x"], g["x"])
    np.testing.assert_array_equal(clipped["h0"], g["h0"])
    same, norm2 = nr.clip_grads(g, 2 * norm_ref)        # below the threshold: unchanged
    assert norm2 == norm
    for k in nr.PARAM_NAMES:
        np.testing.assert_array_equal(same[k], g[k])
    with pytest.raises(ValueError, match="max_norm must be a finite number > 0, got 0"):
        nr.clip_grads(g, 0)


def test_sgd_step_momentum_worked_by_hand():
    # p = 1, g = 1, lr = 0.1, momentum = 0.9: step 1 v = 1, p = 0.9;
    # step 2 v = 0.9 * 1 + 1 = 1.9, p = 0.9 - 0.19 = 0.71 (PyTorch's SGD form).
    p = {k: np.ones(s) for k, s in [("W_hx", (1, 1)), ("W_hh", (1, 1)), ("b_h", (1,)),
                                     ("W_yh", (1, 1)), ("b_y", (1,))]}
    g = {k: np.ones_like(v) for k, v in p.items()}
    p1, v1 = nr.sgd_step(p, g, None, 0.1, 0.9)
    p2, v2 = nr.sgd_step(p1, g, v1, 0.1, 0.9)
    for k in nr.PARAM_NAMES:
        assert p1[k].item() == pytest.approx(0.9, abs=1e-15)
        assert v2[k].item() == pytest.approx(1.9, abs=1e-15)
        assert p2[k].item() == pytest.approx(0.71, abs=1e-15)
        assert p[k].item() == 1.0                       # inputs untouched


def test_sgd_step_agrees_with_torch_optim_sgd():
    torch = pytest.importorskip("torch", reason="torch not installed (optional oracle)")
    rng = np.random.default_rng(0)
    p = nr.init_params(2, 3, 1, "np", rng)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    opt = torch.optim.SGD(list(tp.values()), lr=0.05, momentum=0.8)
    vel = None
    for _ in range(3):
        g = {k: rng.normal(size=v.shape) for k, v in p.items()}
        p, vel = nr.sgd_step(p, g, vel, 0.05, 0.8)
        for k in tp:
            tp[k].grad = torch.from_numpy(g[k])
        opt.step()
    for k in p:
        np.testing.assert_allclose(p[k], tp[k].detach().numpy(), rtol=1e-14, atol=1e-15)


# --- errors speak the user's language ---------------------------------------------------

def _ok():
    p = nr.init_params(2, 3, 4, "np", np.random.default_rng(0))
    return p, np.zeros((5, 2, 2)), np.zeros((2, 4))


def _without(d, k):
    return {kk: v for kk, v in d.items() if kk != k}


BAD_CALLS = [
    ("x 2-D", lambda p, x, t: nr.forward(p, np.zeros((5, 2))), ValueError,
     r"x must have shape \(T, B, D=2\).*got \(5, 2\)"),
    ("x wrong D", lambda p, x, t: nr.forward(p, np.zeros((5, 2, 3))), ValueError,
     r"x must have shape \(T, B, D=2\).*got \(5, 2, 3\)"),
    ("x list", lambda p, x, t: nr.forward(p, [[[0.0, 0.0]]]), TypeError,
     r"x must be a numpy.ndarray, got list"),
    ("h0 shape", lambda p, x, t: nr.forward(p, x, np.zeros((3, 3))), ValueError,
     r"h0 must have shape \(B=2, H=3\), got \(3, 3\)"),
    ("target shape", lambda p, x, t: nr.loss_and_grads(p, x, np.zeros((2, 3))), ValueError,
     r"target must have shape \(B=2, O=4\), got \(2, 3\)"),
    ("target all", lambda p, x, t: nr.loss_and_grads(p, x, t, output="all"), ValueError,
     r"target must have shape \(T=5, B=2, O=4\), got \(2, 4\)"),
    ("labels range", lambda p, x, t: nr.loss_and_grads(p, x, np.array([0, 4]), loss="xent"),
     ValueError, r"target labels must lie in \[0, O=4\), got 4"),
    ("labels negative", lambda p, x, t: nr.loss_and_grads(p, x, np.array([-1, 0]),
                                                          loss="xent"),
     ValueError, r"target labels must lie in \[0, O=4\), got -1"),
    ("labels float", lambda p, x, t: nr.loss_and_grads(p, x, np.array([0.0, 1.0]),
                                                       loss="xent"),
     TypeError, r"target must hold integer class labels.*got dtype float64"),
    ("x nan", lambda p, x, t: nr.forward(p, np.full((5, 2, 2), np.nan)), ValueError,
     r"x must be finite, got nan at index \(0, 0, 0\)"),
    ("target inf", lambda p, x, t: nr.loss_and_grads(p, x, np.full((2, 4), np.inf)),
     ValueError, r"target must be finite, got inf"),
    ("param nan", lambda p, x, t: nr.forward(dict(p, W_hh=np.full((3, 3), np.nan)), x),
     ValueError, r"params\['W_hh'\] must be finite, got nan"),
    ("missing key", lambda p, x, t: nr.loss_and_grads(_without(p, "b_y"), x, t), ValueError,
     r"params is missing b_y; expected keys W_hx, W_hh, b_h, W_yh, b_y"),
    ("W_hx rows", lambda p, x, t: nr.forward(dict(p, W_hx=np.zeros((4, 2))), x), ValueError,
     r"params\['W_hx'\] must have shape \(H=3, D\), got \(4, 2\)"),
    ("b_h shape", lambda p, x, t: nr.forward(dict(p, b_h=np.zeros(4)), x), ValueError,
     r"params\['b_h'\] must have shape \(H=3\), got \(4,\)"),
    ("W_yh shape", lambda p, x, t: nr.readout(dict(p, W_yh=np.zeros((4, 2))), np.zeros((5, 2, 3))),
     ValueError, r"params\['W_yh'\] must have shape \(O, H=3\), got \(4, 2\)"),
    ("W_hh not square", lambda p, x, t: nr.forward(dict(p, W_hh=np.zeros((3, 2))), x),
     ValueError, r"params\['W_hh'\] must have shape \(H, H\), got \(3, 2\)"),
    ("int params", lambda p, x, t: nr.forward({k: v.astype(int) for k, v in p.items()}, x),
     TypeError, r"params\['W_hh'\] must have dtype float32 or float64, got int64"),
    ("scheme", lambda p, x, t: nr.init_params(2, 3, 1, "lstm", np.random.default_rng(0)),
     ValueError, r"scheme must be one of 'np', 'np-tanh', 'irnn', 'i-rnn', 'tanh', got 'lstm'"),
    ("nonlinearity", lambda p, x, t: nr.forward(p, x, nonlinearity="sigmoid"), ValueError,
     r"nonlinearity must be one of 'relu', 'tanh', got 'sigmoid'"),
    ("loss", lambda p, x, t: nr.loss_and_grads(p, x, t, loss="l1"), ValueError,
     r"loss must be one of 'mse', 'xent', got 'l1'"),
    ("output", lambda p, x, t: nr.readout(p, np.zeros((5, 2, 3)), output="first"), ValueError,
     r"output must be one of 'last', 'all', got 'first'"),
    ("n zero", lambda p, x, t: nr.np_init(0, np.random.default_rng(0)), ValueError,
     r"n must be an int >= 1, got 0"),
    ("n float", lambda p, x, t: nr.identity_init(2.5), TypeError,
     r"n must be an int >= 1, got float 2.5"),
    ("n_hidden", lambda p, x, t: nr.init_params(2, 0, 1, "np", np.random.default_rng(0)),
     ValueError, r"n_hidden must be an int >= 1, got 0"),
    ("rng", lambda p, x, t: nr.np_init(3, 0), TypeError,
     r"rng must be a numpy.random.Generator"),
    ("dh shape", lambda p, x, t: nr.backward(np.zeros((5, 2, 4)), nr.forward(p, x)[1]),
     ValueError, r"dh must have shape \(T=5, B=2, H=3\), got \(5, 2, 4\)"),
    ("sgd grads shape", lambda p, x, t: nr.sgd_step(p, dict(p, W_hh=np.zeros((2, 2))), None,
                                                    0.1), ValueError,
     r"grads\['W_hh'\] must have shape \(3, 3\), got \(2, 2\)"),
    ("sgd lr", lambda p, x, t: nr.sgd_step(p, p, None, float("nan")), ValueError,
     r"lr must be a finite number >= 0, got nan"),
]


@pytest.mark.parametrize("name,call,exc,pattern", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_input_gets_a_clear_error(name, call, exc, pattern):
    p, x, t = _ok()
    with pytest.raises(exc, match=pattern):
        call(p, x, t)


# --- bench command ----------------------------------------------------------------------

def test_bench_prints_ratios_for_each_shape():
    import io
    buf = io.StringIO()
    rows = tasks.bench([(3, 2, 4, 2), (2, 1, 3, 1)], repeats=2, threads="1",
                       use_torch=False, out=buf)
    assert [r["shape"] for r in rows] == [(3, 2, 4, 2), (2, 1, 3, 1)]
    assert all(r["ratio_floor"] > 0 for r in rows)
    text = buf.getvalue()
    assert "BLAS threads: 1" in text and "ours/floor" in text and "3,2,4,2" in text


def test_bench_rejects_a_bad_shape(capsys):
    with pytest.raises(SystemExit):
        tasks.main(["bench", "--shape", "1,2,3"])
    assert "--shape must be four integers >= 1 as T,B,H,D, got '1,2,3'" in capsys.readouterr().err
