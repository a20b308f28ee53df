"""A JAX backend for the golden fixtures: jax.lax.scan for the recurrence, autodiff for
every gradient (the parameters, x and h0).

``run(case)`` takes one fixture case (a dict of NumPy arrays: x, h0, target, the five
parameters and the 0-d strings nonlinearity, loss_kind, output) and returns h, y, loss and
the seven gradients as NumPy arrays of the case's dtype (float32 in, float32 out). Check
it with

    python tasks.py export-fixtures fixtures
    python tasks.py verify-fixtures fixtures --against docs/examples/jax_backend.py:run

Needs JAX (``pip install "jax[cpu]"``), imported on the first call. That first call also
switches on float64 for the whole process, ``jax.config.update("jax_enable_x64", True)``:
without it JAX truncates float64 cases to float32 (with only a warning). float32
cases stay float32.
The core is jitted with the conventions as static arguments, so it compiles once per
(conventions, shapes, dtype) and later calls with the same ones reuse it.
On a GPU (jax[cuda]) JAX's default float32 matmul precision is TF32-like, so float32
results there need the GPU tier of tolerances, as torch's cuDNN RNN does.
"""
import functools

import numpy as np

CONVENTIONS = ("nonlinearity", "loss_kind", "output")
GRAD_OF = ("W_hx", "W_hh", "b_h", "W_yh", "b_y", "x", "h0")


@functools.cache
def _core():
    """The jitted function, built once (after JAX is imported and float64 is on)."""
    try:
        import jax
    except ImportError as e:
        raise ImportError('the JAX backend needs JAX: pip install "jax[cpu]"') from e
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy

    def loss_fn(a, target, nonlinearity, loss_kind, output):
        # jax.nn.relu's derivative at 0 is 0, as the fixtures want; jnp.maximum(z, 0)
        # would give 1/2 there.
        f = jax.nn.relu if nonlinearity == "relu" else jnp.tanh
        xw = a["x"] @ a["W_hx"].T + a["b_h"]                # every step's input part

        def step(h_prev, xw_t):
            h_t = f(xw_t + h_prev @ a["W_hh"].T)
            return h_t, h_t

        _, h = jax.lax.scan(step, a["h0"], xw)              # (T, B, H)
        y = (h[-1] if output == "last" else h) @ a["W_yh"].T + a["b_y"]
        if loss_kind == "mse":
            loss = jnp.mean((y - target) ** 2)
        else:                                               # labels: (B,) or (T, B)
            logp = jax.nn.log_softmax(y, axis=-1)
            loss = -jnp.mean(jnp.take_along_axis(logp, target[..., None], axis=-1))
        return loss, (h, y)

    @functools.partial(jax.jit, static_argnums=(2, 3, 4))
    def core(a, target, nonlinearity, loss_kind, output):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)    # d loss / d every a[k]
        (loss, (h, y)), grads = grad_fn(a, target, nonlinearity, loss_kind, output)
        return h, y, loss, grads

    return core


def run(case):
    """One fixture case through the jitted JAX core."""
    core = _core()
    a = {k: case[k] for k in GRAD_OF}
    h, y, loss, grads = core(a, case["target"], *(str(case[k]) for k in CONVENTIONS))
    out = {"h": h, "y": y, "loss": loss}
    out.update({f"grad_{k}": grads[k] for k in GRAD_OF})
    return {k: np.array(v) for k, v in out.items()}        # writable NumPy copies
