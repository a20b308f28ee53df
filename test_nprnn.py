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


# ---------------------------------------------------------------------------------------
# Analysis: the 2-node picture, np_init under the zero-input ReLU map, gradient flow,
# input sensitivity, spectra, and the dynamics/gradflow/sensitivity/spectrum commands
# ---------------------------------------------------------------------------------------

import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402


@st.composite
def spd_nonnegative(draw, min_n=2, max_n=6):
    """A symmetric positive-definite matrix with non-negative entries: S = B^T B + c I
    with B >= 0 entrywise and c > 0 (B^T B is PSD with non-negative entries)."""
    n = draw(st.integers(min_n, max_n))
    vals = draw(st.lists(st.floats(0.0, 1.0, allow_subnormal=False), min_size=n * n,
                         max_size=n * n))
    c = draw(st.floats(0.05, 1.0))
    B = np.array(vals).reshape(n, n)
    S = B.T @ B + c * np.eye(n)
    return 0.5 * (S + S.T)                               # exactly symmetric


@st.composite
def nonnegative_start(draw, n):
    vals = draw(st.lists(st.floats(0.0, 1.0, allow_subnormal=False), min_size=n,
                         max_size=n))
    h0 = np.array(vals)
    assume(h0.max() > 1e-3)                              # not (nearly) the origin
    return h0


def _eig_desc(W):
    lam, U = np.linalg.eigh(W)
    v = U[:, -1] * np.sign(U[:, -1].sum())               # the Perron vector, >= 0
    return lam[::-1], v


# Rounding: every product below has non-negative terms only (W >= 0, h >= 0), so W h is
# computed with a componentwise relative error of at most gamma_n ~ n eps (no
# cancellation), and scaling S by r / lambda_max costs eps for the division and
# O(n eps) for eigvalsh's backward error. One step therefore changes a norm by a factor
# within (1 +- 4 n eps) of the exact one; REL(n, t) bounds the accumulation over t steps.
def _rel(n, t):
    return (1.0 + 4 * n * EPS64) ** t - 1.0 + 4 * n * EPS64


@given(data=st.data())
def test_case_a_eigenvalues_below_one_decay_to_origin(data):
    S = data.draw(spd_nonnegative())
    n = S.shape[0]
    r = data.draw(st.floats(0.3, 0.95))
    W = S * (r / np.linalg.eigvalsh(S)[-1])              # lambda_max(W) = r < 1
    h0 = data.draw(nonnegative_start(n))
    steps = math.ceil(math.log(1e-10) / math.log(r))     # r^steps <= 1e-10
    traj = nr.autonomous_trajectories(W, h0[None], steps)[:, 0]
    norms = np.linalg.norm(traj, axis=1)
    t = np.arange(steps + 1)
    # |h_t| = |W^t h_0| <= r^t |h_0| (symmetric W, ReLU never clips h >= 0).
    assert np.all(norms <= r ** t * norms[0] * (1 + _rel(n, t)))
    assert norms[-1] <= 1.01e-10 * norms[0]              # at the origin, to 1e-10


@given(n=st.integers(1, 8), data=st.data())
def test_case_b_identity_every_state_is_fixed(n, data):
    h0 = data.draw(nonnegative_start(n))
    traj = nr.autonomous_trajectories(np.eye(n), h0[None], 25)
    # Exact: each component of I h is h_i * 1 plus exact zeros.
    assert np.array_equal(traj, np.broadcast_to(h0, traj.shape))


@given(data=st.data())
def test_case_c_line_attractor_converges_to_projection_on_top_eigenvector(data):
    S = data.draw(spd_nonnegative())
    n = S.shape[0]
    W = S / np.linalg.eigvalsh(S)[-1]                    # lambda_max(W) = 1
    lam, v = _eig_desc(W)
    lam2 = lam[1]
    assume(lam2 <= 0.9)                                  # a spectral gap delta >= 0.1
    assert np.all(v >= -1e-12)                           # Perron: non-negative
    h0 = data.draw(nonnegative_start(n))
    steps = math.ceil(math.log(1e-12) / math.log(lam2))  # lam2^steps <= 1e-12
    traj = nr.autonomous_trajectories(W, h0[None], steps)[:, 0]
    limit = (v @ h0) * v                                 # (v . h0) v
    err = np.linalg.norm(traj - limit, axis=1)
    t = np.arange(steps + 1)
    # h_t - (v.h0) v = W^t (h0 - (v.h0) v), whose norm is at most lam2^t |h0|. Slack
    # 1e-11 |h0|: the stored top eigenvalue is 1 within ~n eps, so W^t moves the limit by
    # about t n eps (< 300 * 6 * 2.2e-16 = 4e-13), and eigh's v is accurate to
    # ~n eps / delta (< 1e-13).
    assert np.all(err <= lam2 ** t * np.linalg.norm(h0) + 1e-11 * np.linalg.norm(h0))
    assert err[-1] <= 2e-11 * np.linalg.norm(h0)


@given(data=st.data())
def test_case_d_norm_grows_like_lambda_max_to_the_t(data):
    S = data.draw(spd_nonnegative())
    n = S.shape[0]
    r = data.draw(st.floats(1.05, 1.5))
    W = S * (r / np.linalg.eigvalsh(S)[-1])              # lambda_max(W) = r > 1
    _, v = _eig_desc(W)
    h0 = data.draw(nonnegative_start(n))
    assume(v @ h0 >= 1e-3 * np.linalg.norm(h0))
    steps = 40
    traj = nr.autonomous_trajectories(W, h0[None], steps)[:, 0]
    norms = np.linalg.norm(traj, axis=1)
    t = np.arange(steps + 1)
    # No clipping, so h_t = W^t h0 and r^t (v . h0) = v . h_t <= |h_t| <= r^t |h_0|.
    assert np.all(norms >= r ** t * (v @ h0) * (1 - _rel(n, t)))
    assert np.all(norms <= r ** t * norms[0] * (1 + _rel(n, t)))


@given(n=st.integers(10, 60), seed=st.integers(0, 2**32 - 1))
def test_np_init_zero_input_relu_trajectory_norm_never_increases(n, seed):
    rng = np.random.default_rng(seed)
    W = nr.np_init(n, rng)
    h0 = rng.uniform(0.0, 1.0, size=(3, n))
    norms = np.linalg.norm(nr.autonomous_trajectories(W, h0, 40), axis=2)   # (41, 3)
    # |max(0, W h)| <= |W h| <= ||W||_2 |h| = |h|. Rounding: ||W||_2 = 1 + O(n eps)
    # (eigvalsh's backward error ~ n eps relative, then one division); fl(W h) differs
    # from W h by at most gamma_n |W| |h| componentwise, whose 2-norm is at most
    # n eps ||W||_F |h| <= n^1.5 eps |h|; the two norms cost ~n eps more.
    tol = (n ** 1.5 + 12 * n + 2) * EPS64
    assert np.all(norms[1:] <= norms[:-1] * (1 + tol))


def test_np_init_mixed_sign_top_eigenvector_decays_where_linear_map_does_not():
    # The "Careful: ReLU clips" remark, at N = 100: ReLU drives non-negative states to 0
    # although W has eigenvalue 1, while the linear map keeps the top component.
    rng = np.random.default_rng(0)
    W = nr.np_init(100, rng)
    v = np.linalg.eigh(W)[1][:, -1]
    assert v.min() < 0 < v.max()                         # mixed signs
    h0 = rng.uniform(0.0, 1.0, size=(20, 100))
    relu = np.linalg.norm(nr.autonomous_trajectories(W, h0, 100)[-1], axis=1)
    lin = np.linalg.norm(h0 @ np.linalg.matrix_power(W, 100).T, axis=1)
    proj = np.abs(h0 @ v)                                # |v . h0|, the linear limit
    assert np.all(lin >= proj * (1 - 1e-9))
    assert np.median(relu / np.linalg.norm(h0, axis=1)) < 1e-6


def test_two_node_cases_match_their_closed_forms():
    cases = nr.two_node_cases()
    assert [c.key for c in cases] == ["a", "b", "c", "d"]
    for c in cases:
        W = c.W
        assert W.shape == (2, 2) and np.array_equal(W, W.T) and np.all(W >= 0)
        # [[p, q], [q, p]] has eigenvalues p + q and p - q, eigenvector (1, 1)/sqrt 2.
        p, q = W[0, 0], W[0, 1]
        assert W[1, 1] == p
        np.testing.assert_allclose(c.eigenvalues, [p + q, p - q], rtol=0, atol=1e-15)
        assert p - q > 0                                 # positive definite
        np.testing.assert_allclose(c.top_eigenvector, [2 ** -0.5] * 2, rtol=1e-15)
    a, b, c_, d = (c.eigenvalues for c in cases)
    assert a.max() < 1 and np.all(b == 1) and c_[0] == 1 and c_[1] < 1 and d[0] > 1
    h0 = np.array([[1.0, 0.25], [0.1, 2.0]])
    ends = [nr.autonomous_trajectories(c.W, h0, 200)[-1] for c in cases]
    assert np.all(ends[0] < 1e-20)                       # (a): 0.75^200 ~ 1e-25
    assert np.array_equal(ends[1], h0)                   # (b): fixed
    np.testing.assert_allclose(ends[2], [[0.625] * 2, [1.05] * 2], rtol=1e-14)  # (v.h0)v
    assert np.all(ends[3] > 1e18)                        # (d): 1.25^200 ~ 4e19


def test_autonomous_trajectories_contract():
    W = nr.np_init(4, np.random.default_rng(1))
    h0 = np.random.default_rng(2).uniform(-1, 1, size=(3, 4))
    W_copy, h0_copy = W.copy(), h0.copy()
    traj = nr.autonomous_trajectories(W, h0, 5)
    assert traj.shape == (6, 3, 4) and traj.dtype == np.float64
    assert np.array_equal(traj[0], h0) and np.all(traj[1:] >= 0)
    for k in range(3):                                   # one start at a time, the loop
        h = h0[k]
        for t in range(1, 6):
            h = np.maximum(0.0, W @ h)
            np.testing.assert_allclose(traj[t, k], h, rtol=1e-14, atol=1e-15)
    assert np.array_equal(W, W_copy) and np.array_equal(h0, h0_copy)
    assert nr.autonomous_trajectories(W, h0, 0).shape == (1, 3, 4)
    f32 = nr.autonomous_trajectories(W.astype(np.float32), h0.astype(np.float32), 2)
    assert f32.dtype == np.float32
    with pytest.raises(ValueError, match=r"h0s must have shape \(K, N=4\)"):
        nr.autonomous_trajectories(W, h0[0], 3)
    with pytest.raises(ValueError, match="W must be a square matrix"):
        nr.autonomous_trajectories(W[:3], h0, 3)
    with pytest.raises(ValueError, match="steps must be an int >= 0, got -1"):
        nr.autonomous_trajectories(W, h0, -1)
    with pytest.raises(TypeError, match="steps must be an int"):
        nr.autonomous_trajectories(W, h0, 2.0)
    with pytest.raises(TypeError, match="h0s must have dtype float64"):
        nr.autonomous_trajectories(W, h0.astype(np.float32), 2)
    with pytest.raises(ValueError, match="h0s must be finite"):
        nr.autonomous_trajectories(W, np.full((1, 4), np.nan), 2)


def _small_model(seed, nonlinearity, T=5, B=2, H=3, D=2, O=2):
    rng = np.random.default_rng(seed)
    scheme = "np" if nonlinearity == "relu" else "np-tanh"
    params = nr.init_params(D, H, O, scheme, rng)
    params["b_h"] = rng.normal(0.0, 0.3, size=H)         # exercise the bias too
    x = rng.normal(0.0, 1.0, size=(T, B, D))
    h0 = rng.normal(0.0, 0.5, size=(B, H))
    return params, x, h0, rng


def _relu_margin(params, x, h0):
    """The smallest |z_t| over every pre-activation, recomputed from the equations."""
    h, zs = h0, []
    for t in range(x.shape[0]):
        z = x[t] @ params["W_hx"].T + h @ params["W_hh"].T + params["b_h"]
        zs.append(z)
        h = np.maximum(z, 0.0)
    return np.abs(np.array(zs)).min()


def _loss_with_state_nudged(params, x, target, h0, nl, loss, output, t, b, i, eps):
    """L with h_t[b, i] replaced by h_t[b, i] + eps and the recurrence continued from it."""
    T = x.shape[0]
    hp, _ = nr.forward(params, x[:t], h0, nl)            # h_1 .. h_t
    ht = hp[-1].copy()
    ht[b, i] += eps
    parts = [hp[:-1], ht[None]]
    if t < T:
        parts.append(nr.forward(params, x[t:], ht, nl)[0])
    h = np.concatenate(parts)
    return nr.loss_fn(nr.readout(params, h, output), target, loss)[0]


@given(seed=st.integers(0, 2**32 - 1), nl=st.sampled_from(["tanh", "relu"]),
       setup=st.sampled_from([("mse", "last"), ("mse", "all"), ("xent", "all")]))
def test_gradient_norms_through_time_match_finite_differences(seed, nl, setup):
    loss, output = setup
    params, x, h0, rng = _small_model(seed, nl)
    T, B, _ = x.shape
    H, O = 3, 2
    if nl == "relu":
        # Keep every pre-activation 1e-3 away from the kink: a nudge of 1e-6 to h_t
        # changes z_{t+1} by at most ||W_hh||_1 * 1e-6 << 1e-3, so no unit switches.
        assume(_relu_margin(params, x, h0) > 1e-3)
    lead = (B,) if output == "last" else (T, B)
    target = (rng.normal(size=lead + (O,)) if loss == "mse"
              else rng.integers(0, O, size=lead))
    norms = nr.gradient_norms_through_time(params, x, target, loss=loss, output=output,
                                           nonlinearity=nl, h0=h0)
    assert norms.shape == (T,)
    eps = 1e-6
    G = np.empty((T, B, H))
    for t in range(1, T + 1):
        for b in range(B):
            for i in range(H):
                G[t - 1, b, i] = (
                    _loss_with_state_nudged(params, x, target, h0, nl, loss, output,
                                            t, b, i, eps)
                    - _loss_with_state_nudged(params, x, target, h0, nl, loss, output,
                                              t, b, i, -eps)) / (2 * eps)
    fd = np.sqrt((G ** 2).sum(axis=(1, 2)))
    # Central differences in float64: truncation ~eps^2 = 1e-12 relative, rounding
    # ~eps_mach |L| / eps ~ 2e-10 per component, ~1e-9 over <= 30 components: a relative
    # error of 1e-7 floored at norms of 1e-2 (observed worst: 1.5e-8).
    assert np.all(np.abs(norms - fd) <= 1e-7 * np.maximum(fd, 1e-2))


@given(seed=st.integers(0, 2**32 - 1), nl=st.sampled_from(["tanh", "relu"]))
def test_input_sensitivity_matches_direct_perturbation_of_x_t(seed, nl):
    params, x, h0, _ = _small_model(seed, nl)
    T, B, D = x.shape
    if nl == "relu":
        # A nudge of 1e-6 to x_t moves z_t by at most ||W_hx||_1 * 1e-6 << 1e-3.
        assume(_relu_margin(params, x, h0) > 1e-3)
    per_seq, mean = nr.input_sensitivity(params, x, nonlinearity=nl, h0=h0)
    assert per_seq.shape == (T, B) and mean.shape == (T,)
    np.testing.assert_allclose(mean, per_seq.mean(axis=1), rtol=1e-15)
    eps = 1e-6
    fd = np.empty((T, B))
    for t in range(T):
        for b in range(B):
            J = np.empty((3, D))                         # d h_T[b] / d x_t[b], (H, D)
            for d in range(D):
                xp, xm = x.copy(), x.copy()
                xp[t, b, d] += eps
                xm[t, b, d] -= eps
                J[:, d] = (nr.forward(params, xp, h0, nl)[0][-1, b]
                           - nr.forward(params, xm, h0, nl)[0][-1, b]) / (2 * eps)
            fd[t, b] = np.linalg.norm(J)                 # Frobenius
    # Same error budget as the gradient check above (observed worst: 1e-8).
    assert np.all(np.abs(per_seq - fd) <= 1e-7 * np.maximum(fd, 1e-2))


def test_gradient_norms_and_sensitivity_validate_inputs():
    params, x, h0, _ = _small_model(0, "relu")
    target = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, D=2\)"):
        nr.gradient_norms_through_time(params, x[0], target)
    with pytest.raises(ValueError, match=r"target must have shape \(B=2, O=2\)"):
        nr.gradient_norms_through_time(params, x, target[:1])
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        nr.input_sensitivity(params, x, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="x must have dtype float64"):
        nr.input_sensitivity(params, x.astype(np.float32))
    with pytest.raises(ValueError, match=r"h0 must have shape \(B=2, H=3\)"):
        nr.input_sensitivity(params, x, h0=h0[:1])


def test_spectrum_of_known_matrices():
    th = 0.3
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    s = nr.spectrum(rot)                                 # e^{+-i th}: modulus 1, norm 1
    assert not s.symmetric and np.iscomplexobj(s.eigenvalues)
    np.testing.assert_allclose(np.abs(s.eigenvalues), [1, 1], rtol=1e-14)
    np.testing.assert_allclose(sorted(np.angle(s.eigenvalues)), [-th, th], rtol=1e-13)
    assert abs(s.radius - 1) < 1e-14 and abs(s.norm - 1) < 1e-14
    s = nr.spectrum(np.diag([3.0, -5.0, 1.0, 0.5]))      # sorted by |lambda|, signs kept
    assert s.symmetric and s.eigenvalues.dtype == np.float64
    np.testing.assert_array_equal(s.eigenvalues, [-5.0, 3.0, 1.0, 0.5])
    assert s.radius == 5.0 and abs(s.norm - 5.0) < 1e-14
    # Non-normal [[a, b], [0, a]]: radius a, but sigma_max = (sqrt(4a^2 + b^2) + b) / 2
    # (from sigma_max sigma_min = a^2 and sigma_max^2 + sigma_min^2 = 2a^2 + b^2).
    s = nr.spectrum(np.array([[0.5, 10.0], [0.0, 0.5]]))
    assert abs(s.radius - 0.5) < 1e-15
    assert abs(s.norm - (math.sqrt(101.0) + 10.0) / 2) < 1e-13
    s = nr.spectrum(nr.np_init(50, np.random.default_rng(3)))
    assert s.symmetric and abs(s.radius - 1) < 1e-13 and abs(s.norm - 1) < 1e-13
    assert np.all(s.eigenvalues[1:] < 1) and np.all(s.eigenvalues > 0)
    with pytest.raises(ValueError, match="W must be a square matrix"):
        nr.spectrum(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="W must have dtype float32 or float64"):
        nr.spectrum(np.eye(2, dtype=int))
    with pytest.raises(ValueError, match="W must be finite"):
        nr.spectrum(np.array([[np.inf]]))


def test_analysis_adding_batch_format():
    x, target = tasks._analysis_adding_batch(50, 9, np.random.default_rng(0))
    assert x.shape == (9, 50, 2) and target.shape == (50, 1)
    assert np.all((x[:, :, 0] >= 0) & (x[:, :, 0] <= 1))
    m = x[:, :, 1]
    assert np.all(m.sum(axis=0) == 2) and np.all(m[:4].sum(axis=0) == 1)   # one per half
    np.testing.assert_allclose(target[:, 0], (x[:, :, 0] * m).sum(axis=0), rtol=1e-15)


SMALL = {
    "dynamics": ["--hidden", "10", "--starts", "4", "--matrices", "2", "--draws", "10"],
    "gradflow": ["--hidden", "4", "--seq-len", "6", "--batch", "3"],
    "sensitivity": ["--hidden", "4", "--seq-len", "6", "--batch", "3"],
    "spectrum": ["--hidden", "6"],
}


@pytest.mark.parametrize("cmd", list(SMALL))
def test_analysis_commands_print_their_tables(cmd, capsys):
    assert tasks.main([cmd] + SMALL[cmd]) == 0
    out = capsys.readouterr().out
    if cmd == "dynamics":
        assert "(0.625, 0.625)" in out                   # case (c): (v . h0) v
        assert "N = 100:" in out
    else:
        for s in tasks.ANALYSIS_SCHEMES:
            assert any(line.startswith(s + " ") for line in out.splitlines()), s


@pytest.mark.parametrize("cmd", list(SMALL))
def test_analysis_commands_plot_with_matplotlib(cmd, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / f"{cmd}.png"
    assert tasks.main([cmd] + SMALL[cmd] + ["--plot", "--out-fig", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("cmd", list(SMALL))
def test_analysis_commands_without_matplotlib_say_what_to_install(cmd, tmp_path, capsys,
                                                                   monkeypatch):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)     # import now raises ImportError
    path = tmp_path / "x.png"
    assert tasks.main([cmd] + SMALL[cmd] + ["--plot", "--out-fig", str(path)]) == 2
    err = capsys.readouterr().err
    assert "pip install matplotlib" in err and "Traceback" not in err
    assert not path.exists()


def _write_checkpoint(path, params, step=7, **config_changes):
    config = {"task": "adding", "scheme": "np", "nonlinearity": "relu", "seq_len": 6,
              "hidden": params["W_hh"].shape[0]}
    config.update(config_changes)
    arrays = dict(params)
    arrays.update({f"velocity_{k}": np.zeros_like(v) for k, v in params.items()})
    np.savez(path, step=np.array(step), config=np.array(json.dumps(config)),
             rng_state=np.array("{}"), format=np.array("nprnn-ref-checkpoint/1"), **arrays)


@pytest.mark.parametrize("cmd", ["gradflow", "sensitivity", "spectrum"])
def test_analysis_commands_compare_a_trained_checkpoint_with_its_init(cmd, tmp_path,
                                                                      capsys):
    params = nr.init_params(2, 5, 1, "np", np.random.default_rng(4))
    params["W_hh"] = params["W_hh"] + 0.01 * np.triu(np.ones((5, 5)))   # "trained"
    path = tmp_path / "ck.npz"
    _write_checkpoint(path, params)
    assert tasks.main([cmd, "--trained", str(path)]) == 0
    out = capsys.readouterr().out
    assert "np (init)" in out and "np (trained, step 7)" in out
    if cmd == "spectrum":
        assert " False " in out                          # trained W_hh is not symmetric
    else:
        assert "T = 6" in out                            # the checkpoint's seq_len


def test_analysis_commands_reject_bad_checkpoints_and_options(tmp_path, capsys):
    params = nr.init_params(2, 5, 1, "np", np.random.default_rng(4))
    bad = tmp_path / "bad.npz"
    np.savez(bad, format=np.array("something-else/9"), **params)
    assert tasks.main(["spectrum", "--trained", str(bad)]) == 2
    assert "must have format 'nprnn-ref-checkpoint/1'" in capsys.readouterr().err
    mnist = tmp_path / "mnist.npz"
    _write_checkpoint(mnist, params, task="mnist")
    assert tasks.main(["gradflow", "--trained", str(mnist)]) == 2
    assert "adding or multiplication" in capsys.readouterr().err
    assert tasks.main(["spectrum", "--trained", str(tmp_path / "none.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tasks.main(["gradflow", "--schemes", "np,bogus"])
    assert "--schemes must be a comma-separated list" in capsys.readouterr().err


def test_analysis_data_follows_the_checkpoint_task_and_dtype():
    models = [("m", nr.init_params(2, 3, 1, "np", np.random.default_rng(0), np.float32),
               "relu")]
    x, target = tasks._analysis_data(models, ("multiplication", 8), None, 5, seed=0)
    assert x.shape == (8, 5, 2) and x.dtype == np.float32 and target.dtype == np.float32
    m = x[:, :, 1] == 1
    expected = [np.prod(x[m[:, b], b, 0]) for b in range(5)]   # the two marked values
    np.testing.assert_allclose(target[:, 0], expected, rtol=1e-6)
    x, target = tasks._analysis_data(models, ("adding", 8), 12, 5, seed=0)
    assert x.shape == (12, 5, 2)                                 # --seq-len overrides
    np.testing.assert_allclose(target[:, 0], (x[:, :, 0] * x[:, :, 1]).sum(axis=0),
                               rtol=1e-6)


def test_np_init_two_nodes_follow_case_c_exactly_when_the_off_diagonal_is_positive():
    # N = 2: W = [[a, b], [b, c]] with b > 0 is non-negative, so case (c) holds exactly;
    # with b < 0 the top eigenvector has mixed signs and ReLU never lets a state grow.
    fates = tasks.np_init_two_node_fates(60, np.random.default_rng(5))
    assert 0 < fates["nonneg"] < 60
    assert fates["line_pos"] == 5 * fates["nonneg"]
    assert fates["zero_neg"] > 0 and fates["max_neg"] <= 1.0
