"""Model layer: bundles, the versioned repository, inference backends, built-in recipes.

The ground floor of edgecloud: it imports none of the other packages.
"""
