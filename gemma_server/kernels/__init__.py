"""Hand-written compute kernels that XLA calls where its own code is slow (CPU decode)."""
