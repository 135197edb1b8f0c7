"""The shop's services, one package each."""
