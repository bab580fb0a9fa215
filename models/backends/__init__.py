"""Inference backends behind one small interface; see :mod:`models.backends.base`."""
