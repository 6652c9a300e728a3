"""Models and inference-time preprocessing, shared by training (train/) and serving (handlers/).

This package is pure torch code with no TorchServe dependency: archive.sh copies it into every .mar
so that a handler rebuilds its model from the same definitions the training script used.
"""
