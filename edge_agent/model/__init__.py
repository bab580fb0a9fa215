"""The models served: the zero-downtime slot of one model and the updater that follows the
desired state.
"""
