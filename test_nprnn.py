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
