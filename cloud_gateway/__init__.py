"""cloud_gateway package."""
