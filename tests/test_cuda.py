"""The CUDA kernels, under Numba's CUDA simulator in a process of its own (the simulator must be
chosen before Numba is imported): ``tests/sim_cuda.py``."""
import os
import subprocess
import sys


def test_cuda_kernels_in_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           os.path.join(here, "sim_cuda.py")], env=env, capture_output=True,
                          text=True, cwd=os.path.dirname(here), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout, proc.stdout[-2000:]
