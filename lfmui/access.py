"""Who administers this app (the owner), the key ``/v1`` asks for, and where an endpoint may point:
``Access`` answers each (``require_owner``, ``api_refusal``, ``check_endpoint``) with a sentence
that says what to do. The rules, stated once: docs/security.md#who-may-do-what-lfmuiaccess.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from lfmui.errors import InputError

TOKEN_HEADERS = ("x-lfmui-admin-token",)
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
# cloud metadata services answer on these (AWS and others on IPv4; AWS's IPv6 one)
METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


class NotOwner(InputError):
    """A visitor asked for something only the owner may do; the sentence says how to be one."""


class EndpointRefused(InputError):
    """An endpoint URL this app will not call; the sentence says why and what to do."""


def listed(name: str) -> list[str]:
    """The comma- or space-separated values of environment variable `name`."""
    return [v for v in re.split(r"[,\s]+", os.environ.get(name, "")) if v]


def is_loopback_host(host: str) -> bool:
    """Whether listening on `host` keeps the app on this machine."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """Who the owner is, for one running app."""

    admin_token: str = ""
    owners: frozenset[str] = frozenset()
    local: bool = True  # loopback and no Space: whoever reaches the page is the owner
    endpoint_hosts: frozenset[str] = frozenset()  # hosts the owner lets endpoints point at
    api_key: str = ""  # what /v1 asks for as a Bearer token ("" and local: nothing)

    @classmethod
    def configured(
        cls, host: str = "127.0.0.1", endpoint_hosts: Iterable[str] = (), api_key: str = ""
    ) -> Access:
        """From where the app listens and the environment (see the module's policy)."""
        on_space = bool(os.environ.get("SPACE_ID"))
        owners = {*listed("LFMUI_OWNERS"), os.environ.get("SPACE_AUTHOR_NAME", "")}
        hosts = {*listed("LFMUI_ENDPOINT_HOSTS"), *endpoint_hosts}
        return cls(
            admin_token=os.environ.get("LFMUI_ADMIN_TOKEN", "").strip(),
            owners=frozenset(o.lower() for o in owners if o),
            local=is_loopback_host(host) and not on_space,
            endpoint_hosts=frozenset(h.lower().strip("[]") for h in hosts),
            api_key=(api_key or os.environ.get("LFMUI_API_KEY", "")).strip(),
        )

    @property
    def sign_in(self) -> bool:
        """Whether a Hugging Face sign-in can make a visitor the owner (a Space with OAuth)."""
        return not self.local and bool(os.environ.get("OAUTH_CLIENT_ID")) and bool(self.owners)

    def is_owner(
        self, headers: Mapping[str, str] | None, username: str | None = None, token: str = ""
    ) -> bool:
        """Whether a request with these headers, signed-in user and typed token is the owner's."""
        if self.local:
            return True
        given = (token or "").strip() or _token(headers or {})
        if self.admin_token and given and hmac.compare_digest(given, self.admin_token):
            return True
        return bool(username) and username.lower() in self.owners

    def require_owner(
        self, headers: Mapping[str, str] | None, username: str | None, what: str, token: str = ""
    ) -> None:
        """Raise NotOwner, saying how to become the owner, unless the request is the owner's."""
        if self.is_owner(headers, username, token):
            return
        ways = [
            "give the admin token (LFMUI_ADMIN_TOKEN) in the Models tab, or send it as "
            "'Authorization: Bearer <token>'"
        ]
        if self.sign_in:
            ways.insert(0, "sign in with Hugging Face as the Space's owner")
        raise NotOwner(
            f"Only the owner of this app can {what}: it changes what every visitor uses. "
            f"To do it, {' or '.join(ways)}."
        )

    def api_refusal(self, headers: Mapping[str, str]) -> str:
        """Why a /v1 request with these headers is refused ("" when it may go on)."""
        if not self.api_key:
            if self.local:
                return ""
            return (
                "This server's /v1 needs an API key, and none is set: the owner starts lfmui "
                "with --api-key KEY (or LFMUI_API_KEY), and clients send it as "
                "'Authorization: Bearer KEY'."
            )
        given = _token({k: v for k, v in headers.items() if k.lower() == "authorization"})
        if given and hmac.compare_digest(given.encode(), self.api_key.encode()):
            return ""
        what = "A wrong API key was sent" if given else "No API key was sent"
        return f"{what}: send the key this server was started with as 'Authorization: Bearer KEY'."

    # ---- endpoints --------------------------------------------------------------------------
    def check_endpoint(self, url: str, resolve: bool = True) -> None:
        """Raise EndpointRefused unless `url` may be called (the module's policy)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise EndpointRefused(
                f"'{url[:80]}' is not an http(s) URL; give the server's address, e.g. "
                "http://localhost:8000/v1."
            )
        if parts.username is not None or parts.password is not None:
            raise EndpointRefused(
                "The endpoint URL carries a user name or password; give the URL without them "
                "and put the key in the API key field (it is sent as a Bearer token)."
            )
        host = (parts.hostname or "").lower()
        if not host:
            raise EndpointRefused(f"'{url[:80]}' names no host; e.g. http://localhost:8000/v1.")
        if host in self.endpoint_hosts:
            return
        for address in _addresses(host, parts.port, resolve):
            why = self._refused_address(address)
            if why:
                raise EndpointRefused(
                    f"The endpoint {host} resolves to {address}, {why}: this app does not call "
                    "such addresses unless the owner names the host in LFMUI_ENDPOINT_HOSTS "
                    "(or --allow-endpoint)."
                )

    def _refused_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        mapped = getattr(address, "ipv4_mapped", None)
        address = mapped or address
        if address in METADATA:
            return "a cloud metadata service"
        if address.is_loopback:
            return "" if self.local else "this machine (the loopback)"
        if address.is_link_local:
            return "a link-local address"
        if address.is_unspecified or address.is_multicast or address.is_reserved:
            return "not an address of a server"
        if address.is_private:
            return "a private address"
        return ""


def _token(headers: Mapping[str, str]) -> str:
    lowered = {k.lower(): v for k, v in headers.items()}
    bearer = lowered.get("authorization", "")
    if bearer.lower().startswith("bearer "):
        return bearer[7:].strip()
    return next((lowered[h].strip() for h in TOKEN_HEADERS if h in lowered), "")


def _addresses(host: str, port: int | None, resolve: bool) -> list:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    if host in LOOPBACK_NAMES:
        return [ipaddress.ip_address("127.0.0.1")]
    if not resolve:
        return []
    try:
        found = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise EndpointRefused(
            f"The endpoint host {host} cannot be found ({exc.strerror or exc}); check the URL."
        ) from None
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in found]
