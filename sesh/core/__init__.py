"""The session core: plain synchronous Python, no I/O, time passed in."""
