"""The memcached-protocol store: storage (LRU, expiry, CAS) and its server."""
