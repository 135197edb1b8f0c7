"""The {{service}} service."""
