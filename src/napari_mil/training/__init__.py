"""Bag datasets, one trainer for every model, method-specific schemes."""
