"""MIL architectures with one output contract, model cards, checkpoints and a registry."""
