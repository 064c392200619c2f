"""sesh: HTTP sessions that survive load balancing."""

__version__ = "0.1.0"
