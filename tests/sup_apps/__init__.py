"""Tiny apps and a harness for the supervisor tests: the app sources are copied into a temp project."""
