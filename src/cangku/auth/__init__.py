"""Accounts, `docker login` and token authentication, and who may do what."""
