"""Process shells shared by the four programs: flags generated from a settings class
(:mod:`shell.cli`), the logging setup (:mod:`shell.logs`), one-line settings errors
(:mod:`shell.settings_errors`), and the HTTP side every aiohttp app shares: the status
table, one JSON error middleware and redacted bad-request logs (:mod:`shell.http`).
Builds on ``models`` (the exception root) only.
"""
