"""Subcommands of the ``v1motion`` CLI."""
