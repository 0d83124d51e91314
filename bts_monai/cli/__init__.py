"""Thin command-line entry points: parse arguments, call the library, map errors to exit codes."""
