"""The project's services, one package each."""
