"""A PyTorch backend for the golden fixtures: torch.nn.RNN + a Linear read-out, autograd.

``run(case)`` computes on the CPU, ``run_cuda(case)`` on the GPU. Each takes one fixture
case (a dict of NumPy arrays: x, h0, target, the five parameters and the 0-d strings
nonlinearity, loss_kind, output) and returns h, y, loss and the seven gradients as NumPy
arrays of the case's dtype (float32 in, float32 out). Check it with

    python tasks.py export-fixtures fixtures
    python tasks.py verify-fixtures fixtures --against docs/examples/torch_backend.py:run
    python tasks.py verify-fixtures fixtures --against docs/examples/torch_backend.py:run_cuda

Needs PyTorch (``pip install torch``), imported on the first call.
"""
import numpy as np

import nprnn_ref as nr


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("the PyTorch backend needs torch: pip install torch") from e
    return torch


def _run_on(case, device):
    """The whole computation on one torch device ("cpu" or "cuda")."""
    torch = _import_torch()
    dtype = getattr(torch, case["x"].dtype.name)            # torch.float32 or float64
    D = case["x"].shape[2]
    O, H = case["W_yh"].shape

    # PyTorch's RNN has two biases; b_h goes into bias_ih_l0 and bias_hh_l0 is zero.
    # The read-out is attached as `readout`, so the keys match nr.to_torch_state_dict.
    model = torch.nn.RNN(D, H, nonlinearity=str(case["nonlinearity"]),
                         dtype=dtype, device=device)
    model.readout = torch.nn.Linear(H, O, dtype=dtype, device=device)
    state = nr.to_torch_state_dict({k: case[k] for k in nr.PARAM_NAMES})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})

    def tensor(name):                                       # a copy on the device
        return torch.tensor(case[name], device=device)

    x = tensor("x").requires_grad_()                        # (T, B, D)
    h0 = tensor("h0")[None].requires_grad_()                # (1, B, H): one layer
    h, _ = model(x, h0)                                     # (T, B, H), every step
    y = model.readout(h[-1] if str(case["output"]) == "last" else h)
    target = tensor("target")
    if str(case["loss_kind"]) == "mse":
        loss = torch.nn.functional.mse_loss(y, target)      # mean over all elements
    else:                                                   # mean over (step, sequence)
        loss = torch.nn.functional.cross_entropy(y.reshape(-1, O), target.reshape(-1))
    loss.backward()                                         # ReLU'(0) = 0 in torch

    def out(t):
        return t.detach().cpu().numpy()

    g = {k: out(p.grad) for k, p in model.named_parameters()}
    return {"h": out(h), "y": out(y), "loss": out(loss),
            "grad_W_hx": g["weight_ih_l0"], "grad_W_hh": g["weight_hh_l0"],
            "grad_b_h": g["bias_ih_l0"],                    # = the grad of bias_hh_l0
            "grad_W_yh": g["readout.weight"], "grad_b_y": g["readout.bias"],
            "grad_x": out(x.grad), "grad_h0": out(h0.grad[0])}


def run(case):
    """One fixture case on the CPU."""
    return _run_on(case, "cpu")


def run_cuda(case):
    """One fixture case on the GPU.

    torch's TF32 settings are left at their defaults on purpose: cuDNN's RNN computes
    float32 with TF32 on Ampere and newer GPUs (torch.backends.cudnn.allow_tf32 is True
    by default; torch.backends.cudnn.rnn.fp32_precision is "tf32" in recent releases),
    which is what a user gets, and why float32 results on a GPU need looser tolerances
    than on a CPU. float64 is unaffected.
    """
    torch = _import_torch()
    if not torch.cuda.is_available():
        raise RuntimeError("run_cuda needs a CUDA GPU, but torch.cuda.is_available() is "
                           "False (no GPU, or a CPU-only torch build); use run instead")
    return _run_on(case, "cuda")
