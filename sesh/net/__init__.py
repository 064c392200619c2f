"""The only code that touches sockets: listeners, stream adapters, client pools, shutdown."""
