"""The API gateway: prefix routing to registry instances, balancing, retries, passive health, streaming."""
