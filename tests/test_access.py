"""lfmui.access: who the owner is, and where an endpoint may point (issue 26's probe classes
owner_only and ssrf, at the policy's level; test_space.py sends them through a served app)."""

from __future__ import annotations

import pytest

from lfmui.access import Access, EndpointRefused, NotOwner, is_loopback_host

SPACE = {"SPACE_ID": "someone/lfmui", "SPACE_AUTHOR_NAME": "Someone"}


@pytest.fixture
def on_space(monkeypatch):
    for name in ("SPACE_ID", "SPACE_AUTHOR_NAME", "LFMUI_OWNERS", "LFMUI_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in SPACE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LFMUI_ADMIN_TOKEN", "s3cret-token")
    return Access.configured("0.0.0.0")


def test_owner_only_on_this_machine_whoever_reaches_the_page_is_the_owner(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    for host in ("127.0.0.1", "localhost", "::1"):
        assert is_loopback_host(host)
        assert Access.configured(host).is_owner({}, None)
    assert not Access.configured("0.0.0.0").is_owner({}, None)  # reachable from elsewhere


def test_owner_only_on_a_space_the_token_or_the_authors_sign_in(on_space):
    assert not on_space.local
    assert not on_space.is_owner({}, None)
    assert not on_space.is_owner({"Authorization": "Bearer wrong"}, "visitor")
    assert on_space.is_owner({"Authorization": "Bearer s3cret-token"}, None)
    assert on_space.is_owner({"X-Lfmui-Admin-Token": "s3cret-token"}, None)
    assert on_space.is_owner({}, "someone")  # the author, signed in (names are case-blind)
    with pytest.raises(NotOwner, match="Only the owner of this app can unload the model"):
        on_space.require_owner({}, "visitor", "unload the model")


def test_owner_only_no_token_set_means_no_token_works(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/lfmui")
    monkeypatch.delenv("LFMUI_ADMIN_TOKEN", raising=False)
    access = Access.configured("0.0.0.0")
    assert not access.is_owner({"Authorization": "Bearer "}, None)
    assert not access.is_owner({"Authorization": "Bearer anything"}, None)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://169.254.169.254/latest/meta-data", "a cloud metadata service"),
        ("http://[fd00:ec2::254]/v1", "a cloud metadata service"),
        ("http://10.1.2.3:8000/v1", "a private address"),
        ("http://192.168.1.20/v1", "a private address"),
        ("http://[fe80::1]/v1", "a link-local address"),
        ("http://[::ffff:169.254.169.254]/v1", "a cloud metadata service"),
        ("http://0.0.0.0:8000/v1", "not an address of a server"),
        ("http://127.0.0.1:8000/v1", "this machine (the loopback)"),  # on a Space
        ("http://localhost:8000/v1", "this machine (the loopback)"),
        ("http://user:pass@example.org/v1", "carries a user name or password"),
        ("file:///etc/passwd", "is not an http(s) URL"),
        ("gopher://example.org/", "is not an http(s) URL"),
    ],
)
def test_item41_ssrf_endpoint_urls_that_point_inside_are_refused(on_space, url, says):
    with pytest.raises(EndpointRefused, match=says.replace("(", r"\(").replace(")", r"\)")):
        on_space.check_endpoint(url, resolve=False)


def test_ssrf_the_owner_allows_an_address_by_name(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/lfmui")
    monkeypatch.setenv("LFMUI_ENDPOINT_HOSTS", "10.1.2.3, gpu-box.internal")
    access = Access.configured("0.0.0.0", endpoint_hosts=["[::1]"])
    access.check_endpoint("http://10.1.2.3:8000/v1")
    access.check_endpoint("http://gpu-box.internal:8000/v1")
    access.check_endpoint("http://[::1]:8000/v1")
    with pytest.raises(EndpointRefused):
        access.check_endpoint("http://10.1.2.4:8000/v1")


def test_ssrf_locally_the_loopback_is_this_users_own_machine(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("LFMUI_ENDPOINT_HOSTS", raising=False)
    access = Access.configured("127.0.0.1")
    access.check_endpoint("http://localhost:8000/v1")
    access.check_endpoint("http://127.0.0.1:8000/v1")
    with pytest.raises(EndpointRefused, match="a private address"):
        access.check_endpoint("http://10.0.0.9:8000/v1")  # the owner names such a host
