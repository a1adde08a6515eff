"""Shared pytest configuration for unit and end-to-end tests."""
