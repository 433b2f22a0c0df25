"""Discrete-event simulation pieces that need no torch (executor, ...)."""
