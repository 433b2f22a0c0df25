"""Torch side of FineServe: quantized linear methods, model folders, layers and runners.

This package's `__init__` stays light: it imports nothing heavy, so `fineserve.cli` can list
commands without loading torch.
"""
