"""Edge-agent benchmark: ``edge-agent`` vs a naive agent under the same raw-socket load."""
