"""Stages given to the YAML by import path in tests: code this project's registry does not know."""
