"""Bamboo: a workload management server speaking the PanDA REST API v1."""

__version__ = "0.1.0"
