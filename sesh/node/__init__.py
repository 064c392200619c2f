"""The app node: HTTP server, demo page, ASGI host and the session backends."""
