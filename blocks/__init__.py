"""Prefect blocks: where hubfleet keeps credentials (as SecretStr) and settings."""
