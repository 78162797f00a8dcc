"""Private messages through the gateway, over the embedded and the real system."""
import re

import pytest

from tests.helpers import post_form, signed_in, text


def _send(client, recipient, body):
    return post_form(client, f"/send_message/{recipient}", {"message": body})


def _bodies(page_html):
    return re.findall(r'<p class="card-text message-body">(.*?)</p>', page_html, re.S)



def test_send_message_flashes_and_redirects_to_the_profile(susan_and_john):
    susan, john = susan_and_john
    profile = text(susan.get("/user/john"))
    assert 'href="/send_message/john"' in profile and "Send private message" in profile
    form = text(susan.get("/send_message/john"))
    assert 'name="message"' in form
    response = _send(susan, "john", "  hello john  ")
    assert response.status_code == 302
    assert response.headers["Location"] == "/user/john"
    assert "Your message has been sent." in text(susan.get("/user/john"))
    inbox = text(john.get("/messages"))
    assert _bodies(inbox) == ["hello john"]
    assert 'href="/user/susan">susan</a>' in inbox


def test_navbar_links_to_messages(susan_and_john):
    susan, _ = susan_and_john
    assert 'href="/messages"' in text(susan.get("/index"))


def test_inbox_is_newest_first_with_working_newer_and_older_links(susan_and_john):
    susan, john = susan_and_john
    for i in range(27):
        assert _send(susan, "john", f"message {i}").status_code == 302
    first = text(john.get("/messages"))
    assert _bodies(first) == [f"message {i}" for i in range(26, 1, -1)]
    assert 'href="/messages?page=2"' in first
    second = text(john.get("/messages?page=2"))
    assert _bodies(second) == ["message 1", "message 0"]
    assert 'href="/messages?page=1"' in second
    assert 'href="/messages?page=3"' not in second
    assert text(john.get("/messages")).count('href="#"') == 1  # only "Newer" is disabled on page 1


def test_a_user_never_sees_messages_sent_to_someone_else(client, other_client, system_app):
    third = system_app.test_client()
    signed_in(third, "mary")
    signed_in(other_client, "john")
    signed_in(client, "susan")
    _send(client, "john", "for john only")
    assert _bodies(text(third.get("/messages"))) == []
    assert _bodies(text(client.get("/messages"))) == []
    assert _bodies(text(other_client.get("/messages"))) == ["for john only"]


@pytest.mark.parametrize("body, error", [
    ("", "This field is required."),
    ("   ", "This field is required."),
    ("x" * 141, "Messages are at most 140 characters; this one has 141."),
])
def test_bad_messages_are_refused_and_nothing_is_stored(susan_and_john, body, error):
    susan, john = susan_and_john
    response = _send(susan, "john", body)
    assert response.status_code == 200
    assert error in text(response)
    assert _bodies(text(john.get("/messages"))) == []


def test_a_message_of_exactly_140_characters_is_sent(susan_and_john):
    susan, john = susan_and_john
    assert _send(susan, "john", "z" * 140).status_code == 302
    assert _bodies(text(john.get("/messages"))) == ["z" * 140]


def test_unknown_recipient_is_404(susan_and_john):
    susan, _ = susan_and_john
    assert susan.get("/send_message/nobody").status_code == 404
    response = susan.post("/send_message/nobody", data={"message": "hi"})
    assert response.status_code in (400, 404)


def test_send_without_csrf_token_is_refused(susan_and_john):
    susan, john = susan_and_john
    response = susan.post("/send_message/john", data={"message": "forged"})
    assert response.status_code == 400
    assert _bodies(text(john.get("/messages"))) == []


def test_message_bodies_with_html_are_escaped(susan_and_john):
    susan, john = susan_and_john
    _send(susan, "john", '<script>alert("x")</script>')
    page = text(john.get("/messages"))
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page


@pytest.mark.parametrize("page", ["abc", "0", "-1", "1.5", "", "%C2%B2", "99999999999999999999999"])
def test_malformed_page_numbers_are_a_clear_400(susan_and_john, page):
    _, john = susan_and_john
    response = john.get(f"/messages?page={page}")
    if page == "99999999999999999999999":
        assert response.status_code == 404
    else:
        assert response.status_code == 400
        assert "The page number must be a whole number, 1 or more." in text(response)


def test_a_page_past_the_end_is_404_but_an_empty_first_page_is_fine(susan_and_john):
    _, john = susan_and_john
    first = john.get("/messages?page=1")
    assert first.status_code == 200 and "You have no messages yet." in text(first)
    assert john.get("/messages?page=2").status_code == 404


def test_anonymous_visitors_are_sent_to_login(client):
    for url in ("/messages", "/send_message/john"):
        response = client.get(url)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/auth/login")


def test_inbox_in_spanish(susan_and_john):
    _, john = susan_and_john
    page = text(john.get("/messages", headers={"Accept-Language": "es"}))
    assert "Mensajes" in page and "No tienes mensajes" in page


def test_visiting_messages_appends_inbox_read(susan_and_john, running_system):
    susan, john = susan_and_john
    _send(susan, "john", "one")
    with running_system.app.app_context():
        from gateway.rpc import services

        before = services().messages.head()
        john.get("/messages")
        feed = services().messages.events_after(before)
    assert [e["event_type"] for e in feed] == ["InboxRead"]
