"""One benchmark per kernel, named as its module in the worker's kernels/ (``kernels/registry.py``).

Each file builds its kernel's timed cases, GPU correctness check and compile launches over
``harness.py``; bench/kernels/kernels_bench.py, bench/kernels/gpu_kernel_check.py and the compile reports
iterate over the registry and call them.
"""
