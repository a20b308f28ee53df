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
# Backend bridge: golden fixtures, the PyTorch weight bridge and the checker
# ---------------------------------------------------------------------------------------

import hashlib  # noqa: E402  (this section's imports, kept local to ease merges)
import io  # noqa: E402
import json  # noqa: E402

FIXTURE_BUGS = ("transposed_W_hh", "double_bias", "mask_wrong_step", "dh_not_carried",
                "swapped_grad_biases")


def loop_backend(case, bug=None, dtype=None):
    """An independent backend: one step at a time, forward then BPTT carrying dh_next
    (min-char-rnn's layout), in ``dtype`` (default: the case's). Shares no code with
    nprnn_ref. ``bug`` plants one classic mistake, for the checker to catch:
    transposed_W_hh (W_hh loaded without its transpose, used as W_hh^T throughout),
    double_bias (b_h copied into both torch biases, so the net bias is 2 b_h),
    mask_wrong_step (ReLU mask of step t taken from h_{t-1}), dh_not_carried (dL/dh_t
    misses the path through h_{t+1}), swapped_grad_biases (grad_b_h and grad_b_y
    returned under each other's names)."""
    dt = np.dtype(dtype or case["x"].dtype)
    x, h0, W_hx, W_hh, b_h, W_yh, b_y = (np.asarray(case[k], dt) for k in
                                         ("x", "h0", "W_hx", "W_hh", "b_h", "W_yh", "b_y"))
    relu = str(case["nonlinearity"]) == "relu"
    last = str(case["output"]) == "last"
    T = x.shape[0]
    O = W_yh.shape[0]
    if bug == "transposed_W_hh":
        W_hh = W_hh.T
    if bug == "double_bias":
        b_h = b_h + b_h
    hs = [h0]                                            # hs[t] = h_t, hs[0] = h0
    for t in range(T):
        z = x[t] @ W_hx.T + hs[-1] @ W_hh.T + b_h        # (B, H)
        hs.append(np.maximum(z, 0) if relu else np.tanh(z))
    h = np.stack(hs[1:])                                 # (T, B, H)
    read = h[-1:] if last else h                         # (S, B, H): the read-out steps
    y = read @ W_yh.T + b_y                              # (S, B, O)
    target = np.asarray(case["target"])
    if str(case["loss_kind"]) == "mse":
        diff = y - target.astype(dt).reshape(y.shape)
        loss = np.mean(diff * diff)
        dy = 2 * diff / diff.size
    else:
        rows = y.reshape(-1, O)                          # (n, O)
        labels = target.reshape(-1)
        e = np.exp(rows - rows.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        n = rows.shape[0]
        loss = -np.mean(np.log(p[np.arange(n), labels]))
        p[np.arange(n), labels] -= 1
        dy = (p / n).reshape(y.shape)
    S = read.shape[0]
    grad_W_yh = sum(dy[s].T @ read[s] for s in range(S))
    grad_b_y = dy.sum(axis=(0, 1))
    dh_out = np.zeros_like(h)                            # dL/dh_t through the read-out
    dh_out[T - S:] = dy @ W_yh
    gW_hx, gW_hh, gb_h = np.zeros_like(W_hx), np.zeros_like(W_hh), np.zeros_like(b_h)
    dx = np.zeros_like(x)
    dh_next = np.zeros_like(h0)                          # W_hh^T delta_{t+1}
    for t in reversed(range(T)):
        g = dh_out[t] + dh_next
        if relu:
            fp = ((hs[t] if bug == "mask_wrong_step" else hs[t + 1]) > 0).astype(dt)
        else:
            fp = 1 - hs[t + 1] ** 2
        delta = g * fp                                   # dL/dz_t, (B, H)
        gW_hx += delta.T @ x[t]
        gW_hh += delta.T @ hs[t]
        gb_h += delta.sum(axis=0)
        dx[t] = delta @ W_hx
        if bug != "dh_not_carried":
            dh_next = delta @ W_hh
    out = {"h": h, "y": y[0] if last else y, "loss": np.asarray(loss),
           "grad_W_hx": gW_hx, "grad_W_hh": gW_hh, "grad_b_h": gb_h, "grad_W_yh": grad_W_yh,
           "grad_b_y": grad_b_y, "grad_x": dx, "grad_h0": delta @ W_hh}
    if bug == "swapped_grad_biases":
        out["grad_b_h"], out["grad_b_y"] = out["grad_b_y"], out["grad_b_h"]
    return out


# The README's worked PyTorch example: keep this function and the README text identical.
def torch_backend(case):
    """One fixture case through torch.nn.RNN + a Linear read-out; gradients by autograd."""
    import torch
    D = case["x"].shape[2]
    O, H = case["W_yh"].shape
    dtype = getattr(torch, case["x"].dtype.name)             # torch.float64 or float32
    model = torch.nn.RNN(D, H, nonlinearity=str(case["nonlinearity"]), dtype=dtype)
    model.readout = torch.nn.Linear(H, O, dtype=dtype)        # keys readout.weight, .bias
    state = nr.to_torch_state_dict({k: case[k] for k in nr.PARAM_NAMES})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x = torch.from_numpy(case["x"]).requires_grad_()          # (T, B, D)
    h0 = torch.from_numpy(case["h0"])[None].requires_grad_()  # (1, B, H): one layer
    h, _ = model(x, h0)                                       # (T, B, H)
    y = model.readout(h[-1] if case["output"] == "last" else h)
    target = torch.from_numpy(case["target"])
    if case["loss_kind"] == "mse":
        loss = torch.nn.functional.mse_loss(y, target)
    else:
        loss = torch.nn.functional.cross_entropy(y.reshape(-1, O), target.reshape(-1))
    loss.backward()
    g = {k: p.grad.numpy() for k, p in model.named_parameters()}
    return {"h": h.detach().numpy(), "y": y.detach().numpy(), "loss": loss.detach().numpy(),
            "grad_W_hx": g["weight_ih_l0"], "grad_W_hh": g["weight_hh_l0"],
            "grad_b_h": g["bias_ih_l0"],                      # = grad of bias_hh_l0 too
            "grad_W_yh": g["readout.weight"], "grad_b_y": g["readout.bias"],
            "grad_x": x.grad.numpy(), "grad_h0": h0.grad[0].numpy()}


def test_readme_torch_example_is_the_tested_function():
    """The README shows torch_backend verbatim; this keeps the two from drifting apart."""
    import inspect
    readme = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
    text = open(readme).read() if os.path.isfile(readme) else ""
    if "def torch_backend(case):" not in text:
        pytest.skip("README.md has no torch_backend example (yet)")
    assert inspect.getsource(torch_backend).rstrip() in text


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("golden") / "fixtures"
    assert tasks.main(["export-fixtures", str(d)]) == 0
    return d


@pytest.fixture(scope="module")
def golden(fixture_dir):
    """[(manifest entry, case dict)] for every exported case, plus the manifest."""
    m = json.loads((fixture_dir / "manifest.json").read_text())
    return m, [(c, nr.load_fixture(fixture_dir / c["file"])) for c in m["cases"]]


def _tol(m, case, scale=1.0):
    t = m["tolerances"][case["x"].dtype.name]
    return t["rtol"] * scale, t["atol"] * scale


def _inputs(case):
    return {k: np.array(case[k]) for k in nr.FIXTURE_INPUT_KEYS}


def _expected(case):
    return {k: case[k] for k in nr.FIXTURE_OUTPUT_KEYS}


# --- the export --------------------------------------------------------------------------

def test_export_writes_one_npz_per_case_with_exactly_the_fixture_keys(fixture_dir, golden):
    m, cases = golden
    assert len(cases) == len(tasks.FIXTURE_CASES)
    assert sorted(p.name for p in fixture_dir.iterdir()) == sorted(
        [c["file"] for c in m["cases"]] + ["manifest.json"])
    for entry, case in cases:
        with np.load(fixture_dir / entry["file"], allow_pickle=False) as z:
            assert set(z.files) == set(nr.FIXTURE_KEYS)
        assert {k: list(case[k].shape) for k in nr.FIXTURE_KEYS} == entry["shapes"]
        assert case["loss"].shape == ()
        for k in ("nonlinearity", "loss_kind", "output"):
            assert case[k].shape == () and case[k].dtype.kind == "U"
            assert str(case[k]) == entry[k if k != "loss_kind" else "loss_kind"]


def test_fixture_set_covers_every_required_combination(fixture_dir, golden):
    m, cases = golden
    combos = {(str(c["nonlinearity"]), str(c["loss_kind"]), str(c["output"]))
              for _, c in cases}
    assert combos == {(f, lo, o) for f in nr.NONLINEARITIES for lo in nr.LOSSES
                      for o in nr.OUTPUTS}
    assert {e["scheme"] for e, _ in cases} == set(nr.SCHEMES)
    assert {c["x"].dtype.name for _, c in cases} == {"float32", "float64"}
    Ts = [c["x"].shape[0] for _, c in cases]
    Bs = [c["x"].shape[1] for _, c in cases]
    assert min(Ts) == 1 and max(Ts) >= 50 and min(Bs) == 1 and max(Bs) > 1
    for e, c in cases:
        D, H, O = c["x"].shape[2], c["W_hh"].shape[0], c["W_yh"].shape[0]
        assert len({D, H, O}) == 3, e["name"]
        for k in ("b_h", "b_y", "h0"):
            assert np.all(c[k] != 0), (e["name"], k)      # non-zero biases and h0
        assert e["dtype"] == c["x"].dtype.name
        floats = [k for k in nr.FIXTURE_KEYS if c[k].dtype.kind == "f"]
        assert {c[k].dtype for k in floats} == {c["x"].dtype}
        for k in nr.FIXTURE_OUTPUT_KEYS:
            if k.startswith("grad_"):
                assert np.any(c[k] != 0), (e["name"], k)  # every gradient checks something
    total = sum((fixture_dir / e["file"]).stat().st_size for e, _ in cases)
    assert total < 300_000                                # a small set: ~100 KB today


def test_every_relu_preactivation_clears_the_margin(golden):
    """|z_t| >= relu_margin for every pre-activation, recomputed here in float64 one step
    at a time from the stored x, h0, h and weights (independent of tasks.py)."""
    m, cases = golden
    assert m["relu_margin"] == 1e-3
    n_relu = 0
    for e, c in cases:
        if str(c["nonlinearity"]) != "relu":
            assert e["min_abs_relu_preactivation"] is None
            continue
        n_relu += 1
        f = {k: c[k].astype(np.float64) for k in ("x", "h0", "h", "W_hx", "W_hh", "b_h")}
        smallest = np.inf
        for t in range(f["x"].shape[0]):
            h_prev = f["h0"] if t == 0 else f["h"][t - 1]
            z = f["x"][t] @ f["W_hx"].T + h_prev @ f["W_hh"].T + f["b_h"]
            smallest = min(smallest, np.abs(z).min())
        assert smallest >= m["relu_margin"], e["name"]
        # rtol 1e-12: the manifest value came from the same float64 numbers, summed in
        # another order.
        assert smallest == pytest.approx(e["min_abs_relu_preactivation"], rel=1e-12)
    assert n_relu >= 5


def test_generator_redraws_a_case_until_the_margin_holds():
    """A case needing k > 1 draws fails when allowed only k - 1: redrawing really happens
    and is what produced the margin."""
    redrawn = [s for s in tasks.FIXTURE_CASES
               if tasks.make_fixture_case(s)[1]["draws"] > 1]
    assert redrawn, "no case needed a redraw; pick a spec that does to keep this test"
    spec = redrawn[0]
    k = tasks.make_fixture_case(spec)[1]["draws"]
    with pytest.raises(RuntimeError, match=f"no draw in {k - 1} "):
        tasks.make_fixture_case(spec, max_draws=k - 1)


def test_generator_gives_up_after_100_draws_with_a_clear_error():
    spec = tasks.FIXTURE_CASES[0]
    assert spec.nonlinearity == "relu"
    with pytest.raises(RuntimeError, match=r"no draw in 100 had every ReLU pre-activation "
                       r"at least 50 away from 0.*rejections: relu margin [1-9]"):
        tasks.make_fixture_case(spec, margin=50.0)


def test_export_is_deterministic_byte_for_byte(tmp_path, fixture_dir):
    again = tmp_path / "again"
    tasks.export_fixtures(again)
    for p in fixture_dir.iterdir():
        assert (again / p.name).read_bytes() == p.read_bytes(), p.name


def test_each_case_depends_only_on_its_own_seed(tmp_path, golden):
    """Exporting two cases alone gives the same arrays as in the full export."""
    _, cases = golden
    subset = tasks.FIXTURE_CASES[3:5]
    tasks.export_fixtures(tmp_path / "sub", cases=subset)
    full = {e["name"]: c for e, c in cases}
    for s in subset:
        alone = nr.load_fixture(tmp_path / "sub" / (s.name + ".npz"))
        for k in nr.FIXTURE_KEYS:
            np.testing.assert_array_equal(alone[k], full[s.name][k])


def test_export_refuses_a_non_empty_directory_unless_forced(tmp_path, capsys):
    d = tmp_path / "out"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    assert tasks.main(["export-fixtures", str(d)]) == 2
    assert "not empty" in capsys.readouterr().err and sorted(os.listdir(d)) == ["notes.txt"]
    assert tasks.main(["export-fixtures", str(d), "--force"]) == 0
    assert (d / "notes.txt").read_text() == "mine" and (d / "manifest.json").is_file()
    f = tmp_path / "a_file"
    f.write_text("x")
    assert tasks.main(["export-fixtures", str(f)]) == 2


def test_manifest_states_files_shapes_conventions_tolerances_seed_and_version(fixture_dir,
                                                                            golden):
    m, cases = golden
    assert m["format_version"] == nr.FIXTURE_FORMAT_VERSION == 1
    assert m["base_seed"] == tasks.FIXTURE_BASE_SEED
    assert m["relu_margin"] == tasks.RELU_MARGIN
    assert m["conventions"]["keys"] == list(nr.FIXTURE_KEYS)
    for dt in ("float64", "float32"):
        t = m["tolerances"][dt]
        assert t["rtol"] > 0 and t["atol"] > 0 and len(t["reason"]) > 100
    assert m["tolerances"]["float32"]["rtol"] > m["tolerances"]["float64"]["rtol"]
    seeds = set()
    for e, c in cases:
        assert e["sha256"] == hashlib.sha256((fixture_dir / e["file"]).read_bytes()).hexdigest()
        assert e["dtypes"] == {k: c[k].dtype.str for k in nr.FIXTURE_KEYS}
        assert e["seed"][0] == m["base_seed"]
        seeds.add(e["seed"][1])
        assert e["sizes"] == dict(zip("TBD", c["x"].shape), H=c["W_hh"].shape[0],
                                  O=c["W_yh"].shape[0])
    assert len(seeds) == len(cases)                       # one stream per case


# --- the fixtures are right: independent oracles ------------------------------------------

def test_fixtures_agree_with_an_independent_loop_well_inside_the_tolerances(golden):
    """The per-step loop (no shared code) passes every case at a tenth of the recommended
    tolerances; float32 cases are recomputed in float32, so this is also 'float32
    rounding within tolerance passes'."""
    m, cases = golden
    for e, c in cases:
        rtol, atol = _tol(m, c, scale=0.1)
        report = nr.compare(_expected(c), loop_backend(_inputs(c)), rtol, atol)
        assert report.ok, f"{e['name']}\n{report}"


def test_float64_fixture_gradients_match_central_differences(golden):
    """Every stored float64 gradient of the parameters and h0, and a sample of grad_x,
    against central differences of the loss (eps 1e-6; the ReLU margin of 1e-3 keeps
    every kink out of reach). Pass: |fd - g| <= 1e-8 + 1e-6 |g|. The quotient's rounding
    error is about |L| u / eps <= 5 * 1.1e-16 / 1e-6 ~ 5e-10 (losses here are below 5),
    its truncation error O(eps^2) ~ 1e-12; a wrong gradient is off by O(|g|)."""
    _, cases = golden
    eps = 1e-6
    n_checked = 0
    for e, c in cases:
        if c["x"].dtype != np.float64 or c["x"].shape[0] > 20:
            continue
        conv = {"loss": str(c["loss_kind"]), "output": str(c["output"]),
                "nonlinearity": str(c["nonlinearity"])}

        def loss_at(name, idx, delta):
            arrays = {k: c[k].copy() for k in nr.PARAM_NAMES + ("x", "h0")}
            arrays[name][idx] += delta
            p = {k: arrays[k] for k in nr.PARAM_NAMES}
            return float(nr.loss_and_grads(p, arrays["x"], c["target"], h0=arrays["h0"],
                                           **conv)[0])
        for name in nr.PARAM_NAMES + ("h0", "x"):
            g = c["grad_" + name]
            idxs = list(np.ndindex(g.shape))
            idxs = idxs[:12] if name == "x" else idxs
            for idx in idxs:
                fd = (loss_at(name, idx, eps) - loss_at(name, idx, -eps)) / (2 * eps)
                assert abs(fd - g[idx]) <= 1e-8 + 1e-6 * abs(g[idx]), \
                    (e["name"], name, idx, fd, g[idx])
                n_checked += 1
    assert n_checked > 300


def test_reference_reproduces_its_own_fixtures_exactly(golden):
    _, cases = golden
    for e, c in cases:
        report = nr.compare(_expected(c), nr.fixture_outputs(_inputs(c)), 0.0, 0.0)
        assert report.ok, f"{e['name']}\n{report}"


def test_torch_example_from_the_readme_passes_every_fixture(fixture_dir):
    pytest.importorskip("torch", reason="the PyTorch example needs torch "
                        "(pip install torch); skipped without it")
    out = io.StringIO()
    assert tasks.verify_fixtures(fixture_dir, torch_backend, out=out), out.getvalue()
    assert out.getvalue().rstrip().endswith(f"{len(tasks.FIXTURE_CASES)}/"
                                            f"{len(tasks.FIXTURE_CASES)} cases passed")


def test_torch_state_dict_loads_into_torch_rnn_and_back():
    torch = pytest.importorskip("torch", reason="needs torch (pip install torch)")
    params = nr.init_params(3, 4, 2, "tanh", np.random.default_rng(1))
    params["b_h"] = np.arange(4.0)
    model = torch.nn.RNN(3, 4, dtype=torch.float64)
    model.readout = torch.nn.Linear(4, 2, dtype=torch.float64)
    state = nr.to_torch_state_dict(params)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})  # strict
    back = nr.from_torch_state_dict({k: v.detach().numpy()
                                     for k, v in model.state_dict().items()})
    for k in nr.PARAM_NAMES:
        np.testing.assert_array_equal(back[k], params[k])


# --- the checker catches what it must ----------------------------------------------------

def _failing(report):
    return {c.name for c in report.failures()}


def _run_bug(golden, bug):
    m, cases = golden
    return [(e, c, nr.compare(_expected(c), loop_backend(_inputs(c), bug=bug), *_tol(m, c)))
            for e, c in cases]


def test_checker_catches_a_transposed_W_hh(golden):
    """A backend that applies W_hh^T where W_hh belongs computes a different function only
    when W_hh is not symmetric. np_init and the (scaled) identity are symmetric, so only
    the tanh scheme's orthogonal W_hh can show the mistake, and there it shows in h."""
    n_caught = 0
    for e, c, r in _run_bug(golden, "transposed_W_hh"):
        symmetric = np.array_equal(c["W_hh"], c["W_hh"].T)
        assert symmetric == (e["scheme"] != "tanh"), e["name"]
        assert r.ok == symmetric, e["name"]
        if not symmetric:
            n_caught += 1
            assert {"h", "grad_W_hh"} <= _failing(r), e["name"]
    assert n_caught >= 3


def test_checker_catches_a_bias_mapped_into_both_torch_biases(golden):
    """Swapped/mis-mapped biases: b_h copied into bias_ih_l0 and bias_hh_l0 (net 2 b_h)."""
    for e, c, r in _run_bug(golden, "double_bias"):
        assert {"h", "y", "loss"} <= _failing(r), e["name"]


def test_checker_reports_swapped_bias_gradients_as_shape_mismatches(golden):
    for e, c, r in _run_bug(golden, "swapped_grad_biases"):
        status = {ch.name: ch.status for ch in r.checks}
        assert status["grad_b_h"] == status["grad_b_y"] == "shape", e["name"]
        assert _failing(r) == {"grad_b_h", "grad_b_y"}
        assert "expected shape" in str(r)


def test_checker_catches_a_relu_mask_from_the_wrong_step(golden):
    """Caught in every relu case whose mask changes from one step to the next. In the
    i-rnn cases (W_hh = 0.01 I) no unit changes sign after the first step and the gradient
    reaching step 1 is scaled by 0.01^(T-1), so there the mistake changes nothing
    measurable; tanh has no mask at all."""
    n_caught = 0
    for e, c, r in _run_bug(golden, "mask_wrong_step"):
        assert not {"h", "y", "loss"} & _failing(r)      # the forward pass is right
        mask = c["h"] > 0
        if str(c["nonlinearity"]) == "relu" and np.any(mask[1:] != mask[:-1]):
            n_caught += 1
            assert not r.ok and all(n.startswith("grad_") for n in _failing(r)), e["name"]
        elif str(c["nonlinearity"]) == "tanh":
            assert r.ok, e["name"]
    assert n_caught >= 4


def test_checker_catches_a_dh_not_carried_between_steps(golden):
    for e, c, r in _run_bug(golden, "dh_not_carried"):
        assert not {"h", "y", "loss"} & _failing(r)
        if c["x"].shape[0] == 1:
            assert r.ok, e["name"]                        # nothing to carry
        else:
            assert "grad_W_hh" in _failing(r), e["name"]


def test_float32_rounding_passes_float32_tolerances_but_not_float64_ones(golden):
    m, cases = golden
    t32, t64 = m["tolerances"]["float32"], m["tolerances"]["float64"]
    for e, c in cases:
        if c["x"].dtype != np.float64:
            continue
        exp = _expected(c)
        rounded = {k: v.astype(np.float32) for k, v in exp.items()}
        assert nr.compare(exp, rounded, t32["rtol"], t32["atol"]).ok, e["name"]
        assert not nr.compare(exp, rounded, t64["rtol"], t64["atol"]).ok, e["name"]


def test_float32_loop_on_float64_cases_within_float32_tolerances(golden):
    """A whole float32 computation of the short float64 cases (inputs rounded too) stays
    within the float32 tolerances."""
    m, cases = golden
    t32 = m["tolerances"]["float32"]
    for e, c in cases:
        if c["x"].dtype == np.float64 and c["x"].shape[0] <= 20:
            out = loop_backend(_inputs(c), dtype=np.float32)
            report = nr.compare(_expected(c), out, t32["rtol"], t32["atol"])
            assert report.ok, f"{e['name']}\n{report}"


# --- the loader: damaged and foreign files -----------------------------------------------

def _rewrite(src, dst, change):
    """Copy a fixture's arrays, let change(dict) edit them, save with np.savez."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(dst, **arrays)


def _set(k, v):
    return lambda a: a.__setitem__(k, v)


DAMAGES = {
    "not a zip": (lambda src, dst: dst.write_text("hello"), "not an .npz"),
    "truncated": (lambda src, dst: dst.write_bytes(src.read_bytes()[:300]),
                  "not an .npz|cannot read"),
    "flipped byte": (lambda src, dst: dst.write_bytes(
        (lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:])(bytearray(src.read_bytes()))),
        "cannot read|not an .npz"),
    "missing key": (lambda src, dst: _rewrite(src, dst, lambda a: a.pop("grad_h0")),
                    "missing keys grad_h0"),
    "unexpected key": (lambda src, dst: _rewrite(src, dst, _set("extra", np.zeros(2))),
                       "unexpected keys extra"),
    "other version": (lambda src, dst: _rewrite(src, dst, _set("format_version",
                                                               np.array(2))),
                      "format_version is array\\(2\\), this reader understands 1"),
    "pickled object": (lambda src, dst: np.savez(dst, x=np.array([{}], dtype=object)),
                       "cannot read.*pickle"),
    "wrong shape": (lambda src, dst: _rewrite(src, dst, lambda a: a.__setitem__(
        "h", a["h"][:, :, :-1])), "h must have shape"),
    "wrong dtype": (lambda src, dst: _rewrite(src, dst, lambda a: a.__setitem__(
        "grad_x", a["grad_x"].astype(np.float32))), "grad_x must have dtype float64"),
    "bad convention": (lambda src, dst: _rewrite(src, dst, _set("output", np.array("first"))),
                       "output must be a 0-d string"),
    "non-finite": (lambda src, dst: _rewrite(src, dst, lambda a: a["y"].flat.__setitem__(
        0, np.nan)), "y has non-finite values"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_load_fixture_rejects_damaged_or_foreign_files(fixture_dir, golden, tmp_path, damage):
    m, _ = golden
    src = fixture_dir / next(c["file"] for c in m["cases"] if c["dtype"] == "float64")
    dst = tmp_path / "case.npz"
    make, message = DAMAGES[damage]
    make(src, dst)
    with pytest.raises(ValueError, match=message):
        nr.load_fixture(dst)


def test_load_fixture_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        nr.load_fixture(tmp_path / "nope.npz")


def test_verify_fixtures_fails_a_case_whose_file_was_damaged(fixture_dir, tmp_path, capsys):
    d = tmp_path / "copy"
    d.mkdir()
    for p in fixture_dir.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    m = json.loads((d / "manifest.json").read_text())
    victim = d / m["cases"][0]["file"]
    b = bytearray(victim.read_bytes())
    b[-30] ^= 0x01                                       # inside the zip's directory
    victim.write_bytes(bytes(b))
    assert tasks.main(["verify-fixtures", str(d), "--against",
                       "nprnn_ref:fixture_outputs"]) == 1
    out = capsys.readouterr().out
    assert "cannot use the fixture" in out
    assert f"{len(m['cases']) - 1}/{len(m['cases'])} cases passed; 1 FAILED" in out


def test_verify_fixtures_detects_an_edited_value_by_its_sha256(fixture_dir, tmp_path, capsys):
    """A file rewritten with one changed number is a valid fixture, but not the one the
    manifest lists."""
    d = tmp_path / "copy"
    d.mkdir()
    for p in fixture_dir.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    m = json.loads((d / "manifest.json").read_text())
    victim = d / m["cases"][0]["file"]
    _rewrite(victim, victim, lambda a: a["loss"].__iadd__(1.0) and None)
    nr.load_fixture(victim)                              # still well formed
    assert tasks.main(["verify-fixtures", str(d), "--against",
                       "nprnn_ref:fixture_outputs"]) == 1
    assert "sha256" in capsys.readouterr().out


# --- the torch bridge ---------------------------------------------------------------------

@given(D=st.integers(1, 4), H=st.integers(1, 5), O=st.integers(1, 3),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_torch_state_dict_round_trip_is_exact(D, H, O, dtype, seed):
    rng = np.random.default_rng(seed)
    params = nr.init_params(D, H, O, "np", rng, dtype=dtype)
    params["b_h"] = rng.standard_normal(H).astype(dtype)
    params["b_y"] = rng.standard_normal(O).astype(dtype)
    state = nr.to_torch_state_dict(params)
    assert list(state) == list(nr.TORCH_KEYS)
    assert state["weight_ih_l0"].shape == (H, D) and state["readout.weight"].shape == (O, H)
    np.testing.assert_array_equal(state["bias_hh_l0"], np.zeros(H, dtype))
    assert all(v.dtype == dtype for v in state.values())
    back = nr.from_torch_state_dict(state)
    for k in nr.PARAM_NAMES:
        np.testing.assert_array_equal(back[k], params[k])   # b_h + 0 is exact
        assert back[k].dtype == dtype
        assert not np.shares_memory(back[k], params[k])
    assert not any(np.shares_memory(state[k], params[k2]) for k in state for k2 in params)


def test_from_torch_state_dict_adds_the_two_torch_biases():
    params = nr.init_params(2, 3, 2, "irnn", np.random.default_rng(0))
    state = nr.to_torch_state_dict(params)
    state["bias_ih_l0"] = np.array([1.0, 2.0, 3.0])
    state["bias_hh_l0"] = np.array([0.5, -2.0, 0.25])
    np.testing.assert_array_equal(nr.from_torch_state_dict(state)["b_h"], [1.5, 0.0, 3.25])


@pytest.mark.parametrize("key", nr.TORCH_KEYS)
def test_from_torch_state_dict_names_the_tensor_with_a_wrong_shape(key):
    state = nr.to_torch_state_dict(nr.init_params(2, 3, 4, "np", np.random.default_rng(0)))
    H, O = 3, 4
    bad = {"weight_ih_l0": (H + 1, 2), "weight_hh_l0": (H, H + 1), "bias_ih_l0": (H + 1,),
           "bias_hh_l0": (1, H), "readout.weight": (O, H + 1), "readout.bias": (O + 1,)}
    state[key] = np.zeros(bad[key])
    with pytest.raises(ValueError, match=f"state\\['{re_escape(key)}'\\] must have shape"):
        nr.from_torch_state_dict(state)


def re_escape(s):
    import re
    return re.escape(s)


def test_from_torch_state_dict_rejects_missing_extra_and_non_numpy_entries():
    state = nr.to_torch_state_dict(nr.init_params(2, 3, 4, "np", np.random.default_rng(0)))
    with pytest.raises(ValueError, match="missing readout.bias"):
        nr.from_torch_state_dict({k: v for k, v in state.items() if k != "readout.bias"})
    with pytest.raises(ValueError, match="unexpected weight_ih_l1"):
        nr.from_torch_state_dict(dict(state, weight_ih_l1=state["weight_hh_l0"]))

    class FakeTensor:
        def detach(self):
            return self
    with pytest.raises(TypeError, match=r"state\['weight_hh_l0'\].*detach\(\)\.cpu\(\)"):
        nr.from_torch_state_dict(dict(state, weight_hh_l0=FakeTensor()))
    with pytest.raises(TypeError, match="float64"):
        nr.from_torch_state_dict(dict(state, bias_hh_l0=state["bias_hh_l0"].astype(
            np.float32)))
    with pytest.raises(ValueError, match="params\\['W_hh'\\] must have shape|shape"):
        nr.to_torch_state_dict(dict(nr.init_params(2, 3, 4, "np", np.random.default_rng(0)),
                                    W_hh=np.zeros((3, 2))))


# --- compare -------------------------------------------------------------------------------

@given(seed=st.integers(0, 2**16), shape=st.sampled_from([(), (5,), (3, 4), (2, 3, 2)]),
       rtol=st.sampled_from([0.0, 1e-6, 1e-3]), atol=st.sampled_from([0.0, 1e-8, 1e-4]))
def test_compare_applies_numpy_isclose_rule_and_finds_the_worst_elements(seed, shape, rtol,
                                                                         atol):
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(shape)
    scale = 10.0 ** rng.integers(-9, -1, size=shape)     # errors around the tolerances
    a = e + scale * rng.standard_normal(shape)
    check = nr.compare({"t": e}, {"t": a}, rtol, atol).checks[0]
    assert (check.status == "pass") == bool(np.all(np.isclose(a, e, rtol=rtol, atol=atol)))
    err = np.abs(a - e)
    assert check.max_abs == err.max() and err[check.abs_index] == err.max()
    rel = err / np.abs(e)
    assert check.max_rel == rel.max() and rel[check.rel_index] == rel.max()
    assert check.n_bad == np.count_nonzero(~np.isclose(a, e, rtol=rtol, atol=atol))


def test_compare_report_lists_every_kind_of_problem():
    e = {"ok": np.array([1.0, 2.0]), "off": np.array([[1.0, 2.0], [3.0, 4.0]]),
         "gone": np.zeros(2), "shape": np.zeros((2, 3)), "nan": np.ones(3),
         "tensor": np.ones(2)}

    class FakeTensor:
        def detach(self):
            return self
    a = {"ok": np.array([1.0, 2.0 + 1e-9]), "off": np.array([[1.0, 2.0], [3.0, 4.5]]),
         "shape": np.zeros((3, 2)), "nan": np.array([1.0, np.nan, 1.0]),
         "tensor": FakeTensor(), "bonus": np.ones(1)}
    r = nr.compare(e, a, rtol=1e-6, atol=1e-12)
    status = {c.name: c.status for c in r.checks}
    assert status == {"ok": "pass", "off": "fail", "gone": "missing", "shape": "shape",
                      "nan": "non-finite", "tensor": "type", "bonus": "extra"}
    assert not r.ok and {c.name for c in r.failures()} == {"off", "gone", "shape", "nan",
                                                         "tensor"}
    off = next(c for c in r.checks if c.name == "off")
    assert off.max_abs == 0.5 and off.abs_index == (1, 1) and off.n_bad == 1
    assert off.max_rel == pytest.approx(0.5 / 4.0, rel=1e-15)
    text = str(r)
    assert text == r.table()
    for needle in ("off", "FAIL", "(1,1)", "expected shape (2, 3), got (3, 2)",
                   "first nan at index (1,)", ".detach().cpu().numpy()", "not returned",
                   "FAIL (5 tensor(s)) with rtol=1e-06, atol=1e-12"):
        assert needle in text, needle
    assert nr.compare({"a": np.ones(2)}, {"a": np.ones(2), "b": 1}, 0, 0).ok


def test_compare_accepts_float32_against_float64_and_rejects_bad_arguments():
    assert nr.compare({"a": np.float64(1.0)}, {"a": np.float32(1.0)}, 0, 0).ok
    assert nr.compare({"loss": np.array(2.0)}, {"loss": 2.0}, 0, 0).ok
    with pytest.raises(TypeError, match="actual must be a dict"):
        nr.compare({}, [], 0, 0)
    with pytest.raises(ValueError, match="rtol must be a finite number >= 0, got -1"):
        nr.compare({}, {}, -1, 0)
    with pytest.raises(ValueError, match="atol must be a finite number >= 0, got nan"):
        nr.compare({}, {}, 0, float("nan"))


# --- verify-fixtures on the command line ---------------------------------------------------

BACKEND_FILE = '''
import numpy as np
import nprnn_ref as nr

def good(case):
    return nr.fixture_outputs(case)

def transposed(case):
    out = nr.fixture_outputs(case)
    out["grad_W_hh"] = out["grad_W_hh"].T.copy()
    return out

def raises(case):
    raise RuntimeError("backend exploded")

def not_a_dict(case):
    return [1, 2]

def needs_a_package(case):
    import surely_not_an_installed_package_xyz  # noqa: F401

def partial(case):
    out = nr.fixture_outputs(case)
    del out["grad_h0"]
    return out
'''


@pytest.mark.parametrize("fn, code, needle", [
    ("good", 0, "cases passed"),
    ("transposed", 1, "grad_W_hh  FAIL"),
    ("raises", 1, "the function raised RuntimeError: backend exploded"),
    ("not_a_dict", 1, "must return a dict"),
    ("partial", 1, "grad_h0    MISSING"),
])
def test_verify_fixtures_exit_status_and_report(fixture_dir, tmp_path, monkeypatch, capsys,
                                                fn, code, needle):
    (tmp_path / "my_backend_mod.py").write_text(BACKEND_FILE)
    monkeypatch.chdir(tmp_path)                          # MODULE importable from cwd
    monkeypatch.syspath_prepend(str(tmp_path))
    assert tasks.main(["verify-fixtures", str(fixture_dir), "--against",
                       f"my_backend_mod:{fn}"]) == code
    out = capsys.readouterr().out
    assert needle in out
    n = len(tasks.FIXTURE_CASES)
    assert (f"{n}/{n} cases passed" in out) == (code == 0)


def test_verify_fixtures_takes_a_file_path_and_reports_usage_errors(fixture_dir, tmp_path,
                                                                    capsys):
    path = tmp_path / "backend_by_path.py"
    path.write_text(BACKEND_FILE)
    assert tasks.main(["verify-fixtures", str(fixture_dir), "--against",
                       f"{path}:good"]) == 0
    capsys.readouterr()
    for against, needle in [("no_colon", "MODULE:FUNCTION"),
                            ("surely_not_a_module_xyz:f", "cannot import"),
                            (f"{path}:missing_fn", "has no function 'missing_fn'"),
                            (f"{tmp_path / 'nope.py'}:f", "no such file")]:
        assert tasks.main(["verify-fixtures", str(fixture_dir), "--against", against]) == 2
        assert needle in capsys.readouterr().err, against
    assert tasks.main(["verify-fixtures", str(fixture_dir), "--against",
                       f"{path}:needs_a_package"]) == 2
    assert "pip install surely_not_an_installed_package_xyz" in capsys.readouterr().err
    assert tasks.main(["verify-fixtures", str(tmp_path), "--against", f"{path}:good"]) == 2
    assert "manifest.json does not exist" in capsys.readouterr().err


def test_verify_fixtures_tolerance_overrides(fixture_dir, tmp_path, capsys):
    """Rounding every output to float32 passes at the float32 tolerances but fails the
    float64 cases at theirs: the command uses the manifest's per-dtype values unless told
    otherwise."""
    path = tmp_path / "rounded.py"
    path.write_text("import numpy as np\nimport nprnn_ref as nr\n"
                    "def run(case):\n"
                    "    return {k: np.asarray(v, np.float32) for k, v in "
                    "nr.fixture_outputs(case).items()}\n")
    assert tasks.main(["verify-fixtures", str(fixture_dir), "--against", f"{path}:run"]) == 1
    assert tasks.main(["verify-fixtures", str(fixture_dir), "--against", f"{path}:run",
                       "--rtol", "1e-4", "--atol", "1e-5"]) == 0
    assert "rtol=0.0001, atol=1e-05" in capsys.readouterr().out


def test_survey_separates_a_correct_backend_from_a_buggy_one():
    """survey-fixtures (how the tolerances were checked) draws fresh cases in memory."""
    out = io.StringIO()
    good = tasks.survey_backend(loop_backend, 2, specs=tasks.FIXTURE_CASES[:4], out=out)
    assert {dt: n for dt, (_, _, n) in good.items()} == {"float64": 8, "float32": 8}
    assert all(0 < w < 1 for _, w, _ in good.values())
    bad = tasks.survey_backend(lambda c: loop_backend(c, bug="double_bias"), 1,
                               specs=tasks.FIXTURE_CASES[:2], out=out)
    assert all(w > 1 for _, w, _ in bad.values())
    assert "margin" in out.getvalue()
    with pytest.raises(ValueError, match="expected shape"):
        tasks.survey_backend(lambda c: loop_backend(c, bug="swapped_grad_biases"), 1,
                             specs=tasks.FIXTURE_CASES[:1], out=out)
