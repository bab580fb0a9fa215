"""The process: settings, the command line, the agent that builds one pipeline per served
model, shutdown.
"""
