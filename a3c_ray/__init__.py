"""a3c_ray: Ray-distributed A3C for Atari."""

import os

# Before TensorFlow is imported anywhere in this process: TF 2.21 leaves its oneDNN
# kernels off on some x86 CPUs (AMD here), which makes the A3C gradient 1.6-1.8x slower.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ noise (cuInit on CPU-only hosts)
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU-only project: skip the CUDA probe

__version__ = "0.1.0"
