"""Patch embedders (registry) and batched feature extraction on a device."""
