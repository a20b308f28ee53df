"""Check RNN backends against the nprnn-ref reference: a pytest file to copy into a
backend's own test suite.

For each backend in BACKENDS, two tests: every golden fixture case (nr.verify_fixtures:
every scheme, loss, output and both dtypes, exact-zero ReLU pre-activations, tiny and
large scales), and property-based differential testing (nr.verify_differential: cases
drawn by hypothesis from a fixed seed; a failure is shrunk to the smallest case and
printed with a reproducer). The backend runs in a child process, so a crash or a hang
fails the test instead of ending the run. A failing test shows the report: each failing
case's tensors, with errors and tolerances, and the likely causes.

To adapt it, replace BACKENDS by one entry for your function:

    BACKENDS = [backend("mine", AGAINST, dtypes=DTYPES, tier=TIER)]

with AGAINST = "your_module:your_function" (importable from the folder pytest runs in)
or "path/to/your_file.py:your_function"; DTYPES = "float64,float32" (both, the default)
or "float32" for a float32-only backend; TIER = "float32", or "tf32" for float32 on a
GPU whose matrix products round to TF32. The function takes one case (a dict of NumPy
arrays) and returns h, y, loss and the seven gradients in the case's dtype, as
docs/examples/torch_backend.py of nprnn-ref does. Pass backend(..., buckets=True) for a
backend that compiles once per shape (JAX).

Run it with nprnn_ref installed (`pip install .` in the nprnn-ref checkout) and pytest:

    python -m pytest -q -rs test_backend_recipe.py

Backends whose package or GPU is missing here are skipped; -rs prints why.
"""
import importlib.util
import os

import pytest

import nprnn_ref as nr

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 120.0     # seconds per case; the first includes starting the backend
SEED = 0            # the differential tests draw the same cases on every run


def missing(*modules):
    """A check for backend(): why the backend cannot run here, or None."""
    def why():
        for m in modules:
            if importlib.util.find_spec(m) is None:
                return f"{m} is not installed: pip install {m}"
        return None
    return why


def torch_cuda():
    """Why torch cannot run on a CUDA GPU here, or None (imports torch when asked)."""
    why = missing("torch")()
    if why:
        return why
    import torch
    if not torch.cuda.is_available():
        return "no CUDA GPU: torch.cuda.is_available() is False"
    return None


def backend(name, against, *, dtypes=None, tier="float32", examples=25, buckets=False,
            needs=None):
    """One backend to check; ``needs`` returns why it cannot run here (then skipped)."""
    return pytest.param(dict(against=against, dtypes=dtypes, tier=tier, examples=examples,
                             buckets=buckets, needs=needs), id=name)


BACKENDS = [
    backend("torch-cpu", os.path.join(HERE, "torch_backend.py") + ":run",
            needs=missing("torch")),
    backend("torch-cuda", os.path.join(HERE, "torch_backend.py") + ":run_cuda",
            tier="tf32", needs=torch_cuda),
    backend("jax-x64", os.path.join(HERE, "jax_backend.py") + ":run", examples=15,
            buckets=True, needs=missing("jax", "jaxlib")),
]


def check(report):
    """Fail the test with the report: the failing cases' tables and the likely causes."""
    if not report.ok:
        pytest.fail(report.text(), pytrace=False)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """The golden fixtures, written once for the module."""
    directory = tmp_path_factory.mktemp("fixtures")
    nr.export_fixtures(directory)
    return directory


@pytest.fixture(params=BACKENDS)
def tested(request):
    why = request.param["needs"] and request.param["needs"]()
    if why:
        pytest.skip(why)
    return request.param


def test_fixtures(fixtures, tested):
    t = tested
    check(nr.verify_fixtures(fixtures, t["against"], dtypes=t["dtypes"], tier=t["tier"],
                             timeout=TIMEOUT))


def test_differential(tested):
    t = tested
    check(nr.verify_differential(t["against"], examples=t["examples"], seed=SEED,
                                 dtypes=t["dtypes"], tier=t["tier"], buckets=t["buckets"],
                                 timeout=TIMEOUT))


def test_recipe_self_test(fixtures):
    """The recipe's self-test, independent of any backend package: the reference itself
    must pass both checks, so a failure of the tests above is the backend's."""
    against = "nprnn_ref:fixture_outputs"
    check(nr.verify_fixtures(fixtures, against, timeout=TIMEOUT))
    check(nr.verify_differential(against, examples=10, seed=SEED, timeout=TIMEOUT))
