"""Debian's reference programs that interop tests compare sesh against, found or skipped in one place.

``make test`` installs them when it runs as root (``.ci/debian-deps test --optional``); on a machine
where they are missing and cannot be installed, exactly the tests that need one are skipped, with a
reason that names the Debian package, and nothing fails because a reference is absent.
"""

from __future__ import annotations

import os
import shutil

import pytest

# binary -> the Debian package that ships it
PACKAGES = {
    "memcached": "memcached",
    "memccat": "libmemcached-tools",
    "memcaslap": "libmemcached-tools",
    "apache2": "apache2",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
    "tmux": "tmux",
}


def find_reference(binary: str) -> str | None:
    """The path of ``binary``, looking in the sbin directories too (apache2 lives in /usr/sbin)."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin:/sbin"
    return shutil.which(binary, path=path)


# pytest-trio 0.8 re-raises a skip from inside an async test without its reason; conftest.py puts the
# reason recorded here back into the report.
last_skip_reason: str | None = None


def reference(binary: str) -> str:
    """The path of ``binary``, or skip the calling test with the package to install."""
    global last_skip_reason
    found = find_reference(binary)
    if found is None:
        package = PACKAGES.get(binary, binary)
        last_skip_reason = (
            f"Debian's {package} is not installed ({binary} not found): "
            f"'make test' as root or 'sudo bash .ci/debian-deps' installs it"
        )
        pytest.skip(last_skip_reason)
    return found
