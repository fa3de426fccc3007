"""Who may call the app, by the request's own headers, checked before anything else for HTTP
and websockets alike (``Allowed``): the Host must name this server (which defeats DNS
rebinding), and a request that carries an Origin must come from the page's own origin or one the
owner allowed by name. The rules: docs/security.md#the-request-guard-lfmuiserveguard.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Allowed:
    """The host names this server answers to and the foreign page origins it takes requests
    from, besides its own: the flags' and the environment's, read once at launch."""

    hosts: tuple[str, ...] = ()  # names, "*.example.com" for a domain's names, "*" for any
    origins: tuple[str, ...] = ()  # "https://app.example.com", or "*" for any page

    @classmethod
    def configured(cls, hosts: tuple[str, ...] = (), origins: tuple[str, ...] = ()) -> Allowed:
        """The flags' lists with ``LFMUI_ALLOWED_HOSTS`` / ``LFMUI_ALLOWED_ORIGINS`` (space or
        comma separated), this machine's names and, on a Space, its host ``SPACE_HOST``."""

        def listed(name: str) -> list[str]:
            return re.split(r"[\s,]+", os.environ.get(name, "").strip())

        names = [*hosts, *listed("LFMUI_ALLOWED_HOSTS"), os.environ.get("SPACE_HOST", "")]
        machine = socket.gethostname()
        names += [machine, socket.getfqdn(), f"{machine}.local"]  # .local: its mDNS name
        pages = [*origins, *listed("LFMUI_ALLOWED_ORIGINS")]
        if os.environ.get("SPACE_HOST"):
            pages.append("https://" + os.environ["SPACE_HOST"])
        return cls(
            tuple(sorted({n.lower().rstrip(".") for n in names if n})),
            tuple(sorted({o.lower().rstrip("/") for o in pages if o})),
        )

    def host_ok(self, host: str) -> bool:
        name = hostname(host)
        if name is None:
            return False
        if name == "localhost" or name.endswith(".localhost") or _is_ip(name):
            return True  # an address cannot be rebound; localhost resolves here only
        return any(
            pattern == "*"
            or name == pattern
            or (pattern.startswith("*.") and name.endswith(pattern[1:]))
            for pattern in self.hosts
        )

    def origin_ok(self, origin: str, host: str) -> bool:
        origin = origin.lower().rstrip("/")
        if "*" in self.origins or origin in self.origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (a sandboxed frame, a file: page) and the like
        return _netloc(parts.netloc, parts.scheme) == _netloc(host.lower(), parts.scheme)


def hostname(host: str) -> str | None:
    """The name of a Host header without its port; None when it is not a host."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:7860
        inside = host[1:].split("]", 1)[0]
        return inside if _is_ip(inside) else None
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.rstrip(".")
    return name if re.fullmatch(r"[a-z0-9_.-]{1,253}", name) else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _netloc(netloc: str, scheme: str) -> str:
    default = {"http": ":80", "https": ":443"}[scheme]
    return netloc[: -len(default)] if netloc.endswith(default) else netloc
