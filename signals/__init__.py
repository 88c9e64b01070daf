"""Streaming signal processing and sources: LSL inlets, XDF replay, per-signal processors.

Everything here is causal: each sample is seen once, in order, in chunks of any size.
"""
