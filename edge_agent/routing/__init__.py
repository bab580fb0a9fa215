"""Batches and where they run: the EDF queue, the policy and its estimates, local and
remote runners, the cascade.
"""
