"""Built-in fleet-sim scenarios (TOML); a package so the files ship as package data."""
