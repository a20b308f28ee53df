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
# Issue 3: task data, loaders, the training loop, checkpoints and the experiment CLI
# ---------------------------------------------------------------------------------------

import gzip  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402


@given(n=st.integers(1, 40), T=st.integers(2, 60), seed=st.integers(0, 2**32 - 1))
def test_adding_and_multiplication_inputs_targets_and_marker_positions(n, T, seed):
    x, s = tasks.adding_problem(n, T, np.random.default_rng(seed))
    x2, p = tasks.multiplication_problem(n, T, np.random.default_rng(seed))
    assert x.shape == (T, n, 2) and s.shape == (n, 1) and p.shape == (n, 1)
    assert x.dtype == s.dtype == np.float64
    np.testing.assert_array_equal(x, x2)                     # same draws for the same rng
    values, markers = x[:, :, 0], x[:, :, 1]
    assert np.all((values >= 0) & (values <= 1))
    assert set(np.unique(markers)) <= {0.0, 1.0}
    half = T // 2
    # exactly one marker in steps [0, T//2) and one in [T//2, T) for every sequence
    np.testing.assert_array_equal(markers[:half].sum(axis=0), np.ones(n))
    np.testing.assert_array_equal(markers[half:].sum(axis=0), np.ones(n))
    # targets recomputed independently from the marker mask (exact: same two numbers)
    marked = np.where(markers == 1, values, 0.0)
    np.testing.assert_array_equal(s[:, 0], marked.sum(axis=0))
    i = np.argmax(markers[:half], axis=0)
    j = half + np.argmax(markers[half:], axis=0)
    np.testing.assert_array_equal(p[:, 0], values[i, np.arange(n)] * values[j, np.arange(n)])


def test_generators_are_reproducible_from_a_seed_and_differ_across_seeds():
    a = tasks.adding_problem(8, 30, np.random.default_rng(5))
    b = tasks.adding_problem(8, 30, np.random.default_rng(5))
    c = tasks.adding_problem(8, 30, np.random.default_rng(6))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_trivial_baselines_of_the_documented_size():
    # Predicting the mean: MSE = Var(target) = 1/6 (sum) and 7/144 (product) of two
    # independent U(0, 1). With 200k samples the standard error of each estimate is below
    # 0.0005 (Var((a+b-1)^2) < 0.04), so 0.003 is a margin of more than 5 standard errors.
    rng = np.random.default_rng(0)
    _, s = tasks.adding_problem(200_000, 4, rng)
    _, p = tasks.multiplication_problem(200_000, 4, rng)
    assert abs(np.mean((s - 1.0) ** 2) - tasks.ADDING_BASELINE_MSE) < 3e-3
    assert abs(np.mean((p - 0.25) ** 2) - tasks.MULTIPLY_BASELINE_MSE) < 3e-3


@pytest.mark.parametrize("args, err", [((0, 5), ValueError), ((3, 1), ValueError),
                                       ((2.0, 5), TypeError)])
def test_generators_reject_bad_sizes(args, err):
    with pytest.raises(err, match="n|T"):
        tasks.adding_problem(*args, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        tasks.adding_problem(3, 5, 0)


def _idx_bytes(arr, magic):
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def _tiny_mnist(rng, n_train=5, n_test=3):
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": rng.integers(0, 10, n_test).astype(np.uint8)}


def _write_idx_dir(folder, data, gz=False, override=None):
    folder.mkdir(exist_ok=True)
    for key, name in tasks.MNIST_IDX_NAMES.items():
        raw = _idx_bytes(data[key], 2051 if key.startswith("x") else 2049)
        if override and key in override:
            raw = override[key](raw)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_raw_and_gzipped_load_exactly(tmp_path, gz):
    data = _tiny_mnist(np.random.default_rng(1))
    got = tasks.load_mnist(_write_idx_dir(tmp_path / "m", data, gz=gz))
    for key in ("x_train", "x_test"):
        np.testing.assert_array_equal(got[key], data[key].reshape(-1, 784))
    for key in ("y_train", "y_test"):
        np.testing.assert_array_equal(got[key], data[key])


def test_mnist_npz_loads_and_sequences_are_scanline_scaled_and_permuted(tmp_path):
    data = _tiny_mnist(np.random.default_rng(2))
    np.savez(tmp_path / "mnist.npz", **data)
    got = tasks.load_mnist(tmp_path)                         # a folder holding mnist.npz
    np.testing.assert_array_equal(got["x_test"], data["x_test"].reshape(-1, 784))
    seq = tasks.pixel_sequences(got["x_test"])
    assert seq.shape == (784, 3, 1)
    # step t of sequence i is pixel (t // 28, t % 28) of image i, divided by 255
    assert seq[28 * 3 + 5, 1, 0] == data["x_test"][1, 3, 5] / 255.0
    perm = np.random.default_rng(0).permutation(784)
    pseq = tasks.pixel_sequences(got["x_test"], perm)
    np.testing.assert_array_equal(pseq[:, :, 0], seq[perm, :, 0])


def _corrupt(kind):
    return {
        "magic": {"x_train": lambda b: (2049).to_bytes(4, "big") + b[4:]},
        "truncated": {"x_test": lambda b: b[:-7]},
        "too long": {"y_test": lambda b: b + b"\x00"},
        "counts": {"y_train": lambda b: (2049).to_bytes(4, "big") + (4).to_bytes(4, "big")
                   + b[8:-1]},
    }[kind]


@pytest.mark.parametrize("kind, match", [("magic", "magic number must be 2051"),
                                         ("truncated", "truncated"),
                                         ("too long", "truncated or damaged"),
                                         ("counts", "5 images but y_train has 4 labels")])
def test_mnist_bad_idx_files_are_refused_with_a_reason(tmp_path, kind, match):
    data = _tiny_mnist(np.random.default_rng(3))
    folder = _write_idx_dir(tmp_path / "m", data, override=_corrupt(kind))
    with pytest.raises(ValueError, match=match):
        tasks.load_mnist(folder)


def test_mnist_damaged_gzip_and_missing_files(tmp_path):
    data = _tiny_mnist(np.random.default_rng(4))
    folder = _write_idx_dir(tmp_path / "g", data, gz=True)
    p = folder / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ValueError, match="damaged gzip"):
        tasks.load_mnist(folder)
    p.unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        tasks.load_mnist(folder)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        tasks.load_mnist(tmp_path / "nowhere")


@pytest.mark.parametrize("change, match", [
    (lambda d: d.pop("y_test"), "missing arrays y_test"),
    (lambda d: d.update(x_train=d["x_train"][:, :27]), r"shape \(n, 28, 28\)"),
    (lambda d: d.update(y_train=d["y_train"][:4]), "5 images but y_train has 4"),
    (lambda d: d.update(x_test=d["x_test"].astype(np.float32)), "uint8"),
    (lambda d: d.update(y_test=d["y_test"] + 10), "0..9"),
])
def test_mnist_bad_npz_files_are_refused_with_a_reason(tmp_path, change, match):
    data = _tiny_mnist(np.random.default_rng(5))
    change(data)
    np.savez(tmp_path / "mnist.npz", **data)
    with pytest.raises(ValueError, match=match):
        tasks.load_mnist(tmp_path / "mnist.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a readable"):
        tasks.load_mnist(tmp_path / "junk.npz")


def _cfg(**kw):
    c = {"task": "adding", "scheme": "np", "seq_len": 6, "hidden": 5, "steps": 30,
         "batch": 4, "lr": 0.01, "momentum": 0.0, "clip": 10.0, "seed": 0,
         "eval_every": 10, "test_size": 16, "target_mse": 0.01}
    c.update(kw)
    return c


def test_huge_learning_rate_diverges_and_other_runs_go_on():
    out = io.StringIO()
    results = tasks.run_many([_cfg(lr=1e12, clip=None, scheme="irnn"), _cfg()], jobs=1,
                             progress=tasks.Progress(out, tty=False))
    (bad, bad_curve), (good, good_curve) = results
    assert bad["diverged_at"] is not None and 1 <= bad["diverged_at"] <= 30
    assert bad["steps_done"] == bad["diverged_at"] - 1
    assert np.isfinite(bad["final_test_mse"])            # last evaluation before divergence
    assert good["diverged_at"] is None and good["steps_done"] == 30
    assert [p["step"] for p in good_curve] == [0, 10, 20, 30]
    assert "DIVERGED at step" in out.getvalue()


def test_steps_to_target_is_the_first_evaluated_step_below_target():
    rec, curve = tasks.train_run(_cfg(target_mse=1e9))       # every evaluation qualifies
    assert rec["steps_to_target"] == 0
    rec, curve = tasks.train_run(_cfg(target_mse=1e-12))     # none does
    assert rec["steps_to_target"] is None
    assert rec["best_test_mse"] == min(p["test_mse"] for p in curve)
    assert rec["final_test_mse"] == curve[-1]["test_mse"]


def _params_velocity(rng, H=4):
    params = nr.init_params(2, H, 1, "np", rng)
    velocity = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    return params, velocity


def test_checkpoint_round_trip_keeps_every_array_the_config_and_the_rng(tmp_path):
    rng = np.random.default_rng(7)
    params, velocity = _params_velocity(rng)
    data_rng = np.random.default_rng(8)
    data_rng.standard_normal(3)
    config = {k: v for k, v in _cfg().items() if k in tasks.CHECKPOINT_CONFIG_KEYS}
    config["nonlinearity"] = "relu"
    tasks.save_checkpoint(tmp_path / "c.npz", params, velocity, 123, config, data_rng)
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:       # the agreed format
        assert str(z["format"]) == "nprnn-ref-checkpoint/1"
        assert z["step"].shape == () and z["step"].dtype == np.int64
        assert set(z.files) == set(nr.PARAM_NAMES) | {"velocity_" + k for k in
                                                       nr.PARAM_NAMES} | {
            "step", "config", "rng_state", "format"}
    ck = tasks.load_checkpoint(tmp_path / "c.npz")
    for k in nr.PARAM_NAMES:
        np.testing.assert_array_equal(ck["params"][k], params[k])
        np.testing.assert_array_equal(ck["velocity"][k], velocity[k])
    assert ck["step"] == 123 and ck["config"] == config
    np.testing.assert_array_equal(ck["rng"].standard_normal(5), data_rng.standard_normal(5))


def _bad_checkpoint(tmp_path, kind):
    rng = np.random.default_rng(0)
    params, velocity = _params_velocity(rng)
    config = {k: 1 for k in tasks.CHECKPOINT_CONFIG_KEYS}
    path = tmp_path / "c.npz"
    tasks.save_checkpoint(path, params, velocity, 5, config, rng)
    with np.load(path) as z:
        a = dict(z)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:300])
        return path
    if kind == "text":
        path.write_text("hello")
        return path
    if kind == "foreign":
        a = {"weights": np.ones(3)}
    elif kind == "format":
        a["format"] = np.array("someone-else/2")
    elif kind == "missing":
        del a["velocity_W_hh"]
    elif kind == "shape":
        a["velocity_b_h"] = np.zeros(7)
    elif kind == "json":
        a["config"] = np.array("{not json")
    elif kind == "rng":
        a["rng_state"] = np.array(json.dumps({"bit_generator": "NoSuchThing"}))
    elif kind == "step":
        a["step"] = np.array(-1)
    elif kind == "nan":
        a["W_hh"] = a["W_hh"].copy()
        a["W_hh"][0, 0] = np.nan
    np.savez(path, **a)
    return path


@pytest.mark.parametrize("kind, match", [
    ("truncated", "damaged or unreadable"), ("text", "damaged or unreadable"),
    ("foreign", "no 'format' entry"), ("format", "format must be"),
    ("missing", "missing velocity_W_hh"), ("shape", "velocity_b_h must be"),
    ("json", "not valid JSON"), ("rng", "rng_state"), ("step", "step must be"),
    ("nan", "must be finite")])
def test_damaged_or_foreign_checkpoints_are_refused_with_a_reason(tmp_path, kind, match):
    with pytest.raises(ValueError, match=match):
        tasks.load_checkpoint(_bad_checkpoint(tmp_path, kind))


@pytest.mark.parametrize("task", ["adding", "digits"])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, task):
    if task == "digits":
        pytest.importorskip("sklearn")
        kw = {"task": "digits", "seq_len": None, "train_size": 40,
              "test_size": 20}                                  # 10 steps per epoch
    else:
        kw = {}
    full = _cfg(momentum=0.9, save=str(tmp_path / "full.npz"), **kw)
    rec_full, curve_full = tasks.train_run(full)
    tasks.train_run(_cfg(momentum=0.9, steps=13, save=str(tmp_path / "part.npz"), **kw))
    assert tasks.load_checkpoint(tmp_path / "part.npz")["step"] == 13
    rec_res, curve_res = tasks.train_run(_cfg(momentum=0.9, resume=str(tmp_path / "part.npz"),
                                              save=str(tmp_path / "res.npz"), **kw))
    a, b = tasks.load_checkpoint(tmp_path / "full.npz"), tasks.load_checkpoint(
        tmp_path / "res.npz")
    assert a["step"] == b["step"] == 30
    for k in nr.PARAM_NAMES:
        np.testing.assert_array_equal(a["params"][k], b["params"][k])      # bit-identical
        np.testing.assert_array_equal(a["velocity"][k], b["velocity"][k])
    assert a["rng"].bit_generator.state == b["rng"].bit_generator.state
    assert curve_res[-1] == {**curve_full[-1], "train_loss": curve_res[-1]["train_loss"]}


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    tasks.train_run(_cfg(steps=10, save=str(tmp_path / "c.npz")))
    with pytest.raises(ValueError, match="lr"):
        tasks.train_run(_cfg(lr=0.5, resume=str(tmp_path / "c.npz")))


def test_progress_rewrites_one_line_on_a_terminal_and_prints_plain_lines_otherwise():
    m = {"run": "np s0", "step": 5, "total": 10, "sps": 100.0, "loss": 0.1, "metric": 0.2,
         "metric_name": "test mse", "eta": 0.05}
    tty, plain = io.StringIO(), io.StringIO()
    p = tasks.Progress(tty, tty=True)
    p.update(m)
    p.update(dict(m, step=6))
    assert tty.getvalue().count("\r") == 2 and "\n" not in tty.getvalue()
    assert "6/10" in tty.getvalue() and "ETA 0:00" in tty.getvalue()
    q = tasks.Progress(plain, every=3600, tty=False)
    q.update(m)
    q.update(dict(m, step=6))                                # within the interval: quiet
    assert plain.getvalue() == tasks.Progress.text(m) + "\n"


_CLI_TINY = ["--seq-len", "6", "--hidden", "4", "--steps", "20", "--eval-every", "10",
             "--test-size", "16", "--batch", "4", "--jobs", "1", "--progress-every", "1000",
             "--seeds", "1"]


def test_cli_adding_end_to_end_writes_curves_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert tasks.main(["adding", *_CLI_TINY, "--schemes", "np,irnn", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "steps_to_target" in text and "wall time" in text
    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]
    assert [r["scheme"] for r in runs] == ["np", "irnn"]
    for key in ("scheme", "seed", "lr", "momentum", "clip", "seq_len", "steps",
                "final_test_mse", "best_test_mse", "steps_to_target", "diverged_at",
                "wall_seconds", "steps_per_second"):
        assert key in runs[0]
    assert runs[0]["seq_len"] == 6 and runs[0]["steps"] == 20
    lines = (out / "curves.csv").read_text().splitlines()
    assert lines[0].startswith("task,scheme,seed") and len(lines) == 1 + 2 * 3


def test_cli_never_overwrites_out_without_force(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="already exists; pass --force"):
        tasks.main(["adding", *_CLI_TINY, "--schemes", "np", "--out", str(out)])
    assert not (out / "summary.json").exists()
    assert tasks.main(["adding", *_CLI_TINY, "--schemes", "np", "--out", str(out),
                       "--force"]) == 0
    assert (out / "summary.json").exists() and (out / "keep.txt").read_text() == "mine"


def test_cli_sweep_prints_the_fraction_solved_per_cell(tmp_path, capsys):
    assert tasks.main(["sweep", "adding", *_CLI_TINY, "--schemes", "np,irnn", "--lrs",
                       "0.01,1e12", "--clips", "1,none", "--seeds", "2",
                       "--target-mse", "1e9"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "np s1 lr0.01 cnone: done" in captured.err          # progress names the cell
    # target 1e9: every run that did not diverge before its first evaluation is solved
    assert "np: rows lr, columns clip" in text and "irnn: rows lr, columns clip" in text
    assert "2/2" in text


def test_cli_mnist_from_tiny_files_and_clear_message_without_them(tmp_path, capsys):
    data = _tiny_mnist(np.random.default_rng(6), n_train=8, n_test=4)
    np.savez(tmp_path / "mnist.npz", **data)
    assert tasks.main(["mnist", "--data", str(tmp_path), "--epochs", "1", "--hidden", "3",
                       "--batch", "4", "--schemes", "np", "--jobs", "1", "--permuted",
                       "--out", str(tmp_path / "o")]) == 0
    run = json.loads((tmp_path / "o" / "summary.json").read_text())["runs"][0]
    assert run["seq_len"] == 784 and run["steps"] == 2 and run["permuted"]
    assert 0 <= run["final_test_accuracy"] <= 1
    with pytest.raises(SystemExit, match="nothing is downloaded; put either mnist.npz"):
        tasks.main(["mnist", "--data", str(tmp_path / "none"), "--epochs", "1"])


def test_cli_digits_end_to_end_when_scikit_learn_is_installed(tmp_path):
    pytest.importorskip("sklearn")
    assert tasks.main(["digits", "--epochs", "1", "--train-size", "64", "--hidden", "8",
                       "--schemes", "np,tanh", "--jobs", "1", "--out",
                       str(tmp_path / "d")]) == 0
    runs = json.loads((tmp_path / "d" / "summary.json").read_text())["runs"]
    assert [r["seq_len"] for r in runs] == [64, 64] and runs[0]["test_size"] == 359


def test_parallel_workers_give_the_same_results_as_one_process():
    cfgs = [_cfg(steps=10, scheme="np"), _cfg(steps=10, scheme="tanh")]
    serial = tasks.run_many(cfgs, jobs=1)
    parallel = tasks.run_many(cfgs, jobs=2)
    for (a, ca), (b, cb) in zip(serial, parallel):
        assert ca == cb and a["final_test_mse"] == b["final_test_mse"]


def test_cli_says_what_to_install_when_an_optional_package_is_missing(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_optional(name, *a, **k):
        if name.split(".")[0] in ("sklearn", "matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_optional)
    with pytest.raises(SystemExit, match="pip install scikit-learn"):
        tasks.main(["digits", "--epochs", "1"])
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        tasks.main(["adding", *_CLI_TINY, "--plot", str(tmp_path / "p.png")])
    assert not (tmp_path / "p.png").exists()


def test_cli_save_then_resume_continues_the_saved_run(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert tasks.main(["adding", *_CLI_TINY, "--schemes", "irnn", "--save", str(ck)]) == 0
    path = ck / "adding_irnn_seed0.npz"
    assert tasks.load_checkpoint(path)["step"] == 20
    with pytest.raises(SystemExit, match="already exists"):      # --save never overwrites
        tasks.main(["adding", *_CLI_TINY, "--schemes", "irnn", "--save", str(ck)])
    argv = [a if a != "20" else "30" for a in _CLI_TINY]             # --steps 30
    assert tasks.main(["adding", *argv, "--resume", str(path), "--save",
                       str(tmp_path / "more.npz"), "--out", str(tmp_path / "o")]) == 0
    assert "resuming irnn s0 from step 20" in capsys.readouterr().out
    run = json.loads((tmp_path / "o" / "summary.json").read_text())["runs"][0]
    assert run["start_step"] == 20 and run["steps_done"] == 10 and run["scheme"] == "irnn"
    assert tasks.load_checkpoint(tmp_path / "more.npz")["step"] == 30
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(SystemExit, match="--resume: .*not an nprnn-ref checkpoint"):
        tasks.main(["adding", *argv, "--resume", str(tmp_path / "junk.npz")])
