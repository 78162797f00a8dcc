"""Finding people: ``/explore`` lists users newest first, a page at a time, filtered by a
name prefix, with links to each profile and to a new message; one RPC per page."""
import re

import pytest

from tests.gateway.test_memory_pages import counting  # noqa: F401 (a fixture)
from tests.helpers import PASSWORD, signed_in, text
from tests.waiting import wait_until


def _register(app, *names):
    with app.app_context():
        users = app.extensions["rpc"].users
        for name in names:
            users.register(name, f"{name.lower()}@example.com", PASSWORD)


def _listed(page) -> list[str]:
    return re.findall(r'<h2 class="h5 card-title mb-1"><a href="/user/([^"]+)">', text(page))


def test_explore_lists_everyone_newest_first_with_links(susan_and_john, system_app):
    susan, _ = susan_and_john  # john signed in first
    _register(system_app, "Sam")
    page = susan.get("/explore")
    assert page.status_code == 200
    assert _listed(page) == ["Sam", "susan", "john"]
    html = text(page)
    assert 'href="/send_message/Sam"' in html and 'href="/send_message/john"' in html
    assert 'href="/send_message/susan"' not in html  # not to yourself
    assert 'href="/explore"' in html  # the navbar


def test_explore_needs_a_sign_in_and_the_navbar_link_only_shows_then(client):
    page = client.get("/explore")
    assert page.status_code == 302 and "/auth/login" in page.headers["Location"]
    assert 'href="/explore"' not in text(client.get("/auth/login"))
    signed_in(client, "susan")
    assert '<a class="nav-link" href="/explore">Explore</a>' in text(client.get("/index"))


def test_the_filter_is_a_case_insensitive_literal_prefix(susan_and_john, system_app):
    susan, _ = susan_and_john
    _register(system_app, "Susanna", "a_b", "axb")
    assert _listed(susan.get("/explore?q=SUS")) == ["Susanna", "susan"]
    assert _listed(susan.get("/explore?q=a_")) == ["a_b"]
    for q in ("%25", "a%25", "%3Cscript%3E", "%00"):
        page = susan.get(f"/explore?q={q}")
        assert page.status_code == 200 and _listed(page) == [], q
        assert "No username starts with" in text(page)
    page = text(susan.get("/explore?q=%3Cscript%3Ealert(1)%3C/script%3E"))
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;"' in page  # kept in the search box
    assert _listed(susan.get("/explore?q=" + "a" * 64)) == []
    assert susan.get("/explore?q=" + "a" * 65).status_code == 400
    assert _listed(susan.get("/explore?q=")) == ["axb", "a_b", "Susanna", "susan", "john"]


def test_pages_go_older_and_newer_and_keep_the_filter(susan_and_john, system_app):
    susan, _ = susan_and_john
    names = [f"user{n:02}" for n in range(26)]
    _register(system_app, *names)
    first = susan.get("/explore?q=USER")
    assert _listed(first) == names[::-1][:25]
    assert 'href="/explore?page=2&amp;q=USER"' in text(first)
    second = susan.get("/explore?page=2&q=USER")
    assert _listed(second) == ["user00"]
    assert 'href="/explore?page=1&amp;q=USER"' in text(second) and "page=3" not in text(second)
    assert susan.get("/explore?page=3&q=USER").status_code == 404
    assert _listed(susan.get("/explore?page=2")) == ["user00", "susan", "john"]
    assert susan.get("/explore?page=2&q=nobody").status_code == 404
    assert susan.get("/explore?page=1&q=nobody").status_code == 200  # the first page is never past the end
    assert susan.get(f"/explore?page={2**31}").status_code == 404


@pytest.mark.parametrize("page", ["abc", "-1", "0", "1.5", "", "１", "1" * 101])
def test_malformed_page_numbers_are_a_400(susan_and_john, page):
    susan, _ = susan_and_john
    assert susan.get(f"/explore?page={page}").status_code == 400


def test_a_page_is_one_rpc_and_its_profiles_are_kept(susan_and_john, system_app, counting):  # noqa: F811
    susan, _ = susan_and_john
    _register(system_app, "Sam")  # not in this gateway's memory: registered without it
    with system_app.app_context():
        sam = system_app.extensions["rpc"].users.get_user_by_username("Sam")
    known = system_app.extensions["known"]
    # Its UserRegistered heard first: a page read before that would rightly not be kept.
    wait_until(lambda: known.profiles.mark(sam["id"]) is not None, message="the registration was not heard")
    assert known.profiles.get(sam["id"]) is None
    assert susan.get("/explore").status_code == 200  # fills the memory (badge, session)
    counting.calls.clear()
    assert _listed(susan.get("/explore?q=s")) == ["Sam", "susan"]
    assert counting.calls == ["users.list_users"]
    counting.calls.clear()
    assert susan.get("/user/Sam").status_code == 200
    assert susan.get("/send_message/Sam").status_code == 200
    assert counting.calls == []


def test_explore_in_spanish(susan_and_john):
    susan, _ = susan_and_john
    page = text(susan.get("/explore?q=zz", headers={"Accept-Language": "es"}))
    assert "Explorar" in page and "Ningún nombre de usuario empieza por “zz”." in page
