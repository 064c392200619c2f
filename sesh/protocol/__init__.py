"""Sans-IO codecs: bytes in, events out. Nothing here imports trio, socket, time or logging."""
