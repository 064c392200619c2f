"""Who may read the node's status document: a pure function over a request's head, used by
:mod:`sesh.node.server`.

The status document (``--status-path``, ``/sesh/status`` by default) names internal URLs and store
addresses, so it is not for the clients a balancer forwards. It is answered to a loopback peer whose
request carries no proxy header (``sesh top`` and the tests read it that way, directly), or to anyone
presenting ``--status-token`` (``Authorization: Bearer TOKEN`` or ``?token=TOKEN``). A balancer on the
same machine is a loopback peer too, which is why a proxy header (``X-Forwarded-For``, which sesh's
balancer and httpd always add, ``Forwarded``, ``Via``...) refuses the request unless the token is given.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

# Headers a proxy adds to what it forwards: a request carrying one came from somewhere else, whatever
# the peer address says.
PROXY_HEADERS = frozenset({b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-server", b"forwarded", b"via"})


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack listener
    return address.is_loopback


def presented_token(headers: Sequence[tuple[bytes, bytes]], query: bytes) -> bytes | None:
    """The token in ``Authorization: Bearer TOKEN`` or in ``?token=TOKEN``, or None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
    for pair in query.split(b"&"):
        key, sep, value = pair.partition(b"=")
        if key == b"token" and sep and value:
            # Percent escapes are decoded, '+' is kept: a token with a '+' works as typed (form
            # encoding's '+' for a space cannot be meant, --status-token has no spaces).
            return unquote_to_bytes(value)
    return None


def status_allowed(headers: Sequence[tuple[bytes, bytes]], query: bytes, client: tuple[str, int], token: str) -> bool:
    """Whether a request may read the status document (see the module docstring); ``token`` is
    ``--status-token`` (empty: none opens it)."""
    if token:
        presented = presented_token(headers, query)
        # compare_digest: the time taken says nothing about how much of a guess was right.
        if presented is not None and hmac.compare_digest(presented, token.encode()):
            return True
    if any(name in PROXY_HEADERS for name, _ in headers):
        return False
    return is_loopback(client[0])
