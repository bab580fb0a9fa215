"""What survives a crash or a restart: the write-ahead journal, the SQLite store and
uplink, saved windows.
"""
