"""Helper for tests/test_checkpoint.py: continue a saved training run in a fresh process.

Usage: python resume_worker.py CHECKPOINT DATA.npz OUT FIT_KWARGS_JSON
Loads CHECKPOINT on NumPy, trains on DATA (X, y, X_val, y_val) with the given fit arguments
and saves the result to OUT.
"""

import json
import sys

import numpy as np

import bpgpu


def main(checkpoint, data_path, out, fit_kwargs):
    data = np.load(data_path)
    net = bpgpu.load(checkpoint, backend="numpy")
    net.fit(data["X"], data["y"], validation_data=(data["X_val"], data["y_val"]), verbose=0,
            **json.loads(fit_kwargs))
    net.save(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
