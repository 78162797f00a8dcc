"""Profiles and profile editing through the gateway, over the embedded and the real system."""
import re

from tests.helpers import post_form, signed_in, text


def test_unknown_user_page_is_404(client):
    signed_in(client)
    response = client.get("/user/nobody")
    assert response.status_code == 404
    assert "Not Found" in text(response)


def test_odd_usernames_in_the_url_are_404_not_500(client):
    signed_in(client)
    for url in ("/user/%00", "/user/" + "x" * 5000, "/user/%F0%9F%92%A9", "/user/a%2Fb"):
        assert client.get(url).status_code == 404, url


def test_own_profile_shows_edit_link_and_localised_last_seen(client):
    signed_in(client)
    page = text(client.get("/user/susan"))
    assert "User: susan" in page
    assert 'href="/edit_profile"' in page
    # Babel's medium format for en: "Nov 24, 2026, 1:23:45 AM"
    assert re.search(r"Last seen on: [A-Z][a-z]{2} \d{1,2}, \d{4}, \d{1,2}:\d{2}:\d{2}", page)
    page_es = text(client.get("/user/susan", headers={"Accept-Language": "es"}))
    assert re.search(r"Visto por última vez el: \d{1,2} [a-z]{3,4}\.? \d{4}, \d{1,2}:\d{2}:\d{2}", page_es)


def test_other_users_profile_has_no_edit_link(client, other_client):
    signed_in(other_client, "john")
    signed_in(client)
    page = text(client.get("/user/john"))
    assert "User: john" in page
    assert 'href="/edit_profile"' not in page


def test_edit_profile_saves_and_shows_changes(client):
    signed_in(client)
    form = text(client.get("/edit_profile"))
    assert 'name="username"' in form and 'value="susan"' in form and 'name="about_me"' in form
    response = post_form(client, "/edit_profile", {"username": "susan2", "about_me": "I write code."})
    assert response.status_code == 302
    assert "Your changes have been saved." in text(client.get("/edit_profile"))
    page = text(client.get("/user/susan2"))
    assert "I write code." in page
    assert client.get("/user/susan").status_code == 404


def test_about_me_with_html_is_shown_escaped(client):
    signed_in(client)
    payload = '<script>alert("x")</script><b>bold</b>'
    post_form(client, "/edit_profile", {"username": "susan", "about_me": payload})
    page = text(client.get("/user/susan"))
    assert "<script>alert" not in page
    assert "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in page


def test_about_me_over_140_characters_is_refused_and_nothing_changes(client):
    signed_in(client)
    post_form(client, "/edit_profile", {"username": "susan", "about_me": "short"})
    response = post_form(client, "/edit_profile", {"username": "susan", "about_me": "x" * 141})
    assert response.status_code == 200
    assert "Field cannot be longer than 140 characters." in text(response)
    assert "short" in text(client.get("/user/susan"))


def test_about_me_of_exactly_140_characters_is_kept(client):
    signed_in(client)
    post_form(client, "/edit_profile", {"username": "susan", "about_me": "y" * 140})
    assert "y" * 140 in text(client.get("/user/susan"))


def test_renaming_to_a_taken_username_is_refused(client, other_client):
    signed_in(other_client, "john")
    signed_in(client)
    response = post_form(client, "/edit_profile", {"username": "JOHN", "about_me": ""})
    assert response.status_code == 200
    assert "Please use a different username." in text(response)
    assert "User: susan" in text(client.get("/user/susan"))


def test_edit_profile_without_csrf_token_is_refused(client):
    signed_in(client)
    response = client.post("/edit_profile", data={"username": "hacked", "about_me": "pwned"})
    assert response.status_code == 400
    assert client.get("/user/hacked").status_code == 404


def test_a_deleted_session_user_is_treated_as_anonymous(client):
    signed_in(client)
    with client.session_transaction() as session:
        session["_user_id"] = "999999"
    response = client.get("/index")
    assert response.status_code == 302
    with client.session_transaction() as session:
        session["_user_id"] = "not-a-number"
    assert client.get("/index").status_code == 302
