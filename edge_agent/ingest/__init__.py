"""Readings in: topic -> model (bindings, demux), validate, window, deadline (the per-model
core).
"""
