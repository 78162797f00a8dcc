"""The inbox and profiles as the tutorial shows them (issue 14, item 1): avatars, "<user>
said <a moment ago>" with the exact time on hover, a Reply link, new messages marked."""
import re

from tests.helpers import post_form, text
from tests.waiting import wait_until


def _cards(page: str) -> list[str]:
    return re.findall(r'<div class="card mb-2 message.*?</div>\s*</div>\s*</div>', page, re.S)


def _unread(client) -> int:
    rows = [row for row in client.get("/notifications").get_json() if row["name"] == "unread_message_count"]
    return rows[-1]["data"] if rows else 0


def test_messages_show_avatar_relative_time_reply_and_which_are_new(susan_and_john, system_app):
    susan, john = susan_and_john
    post_form(susan, "/send_message/john", {"message": "first"})
    wait_until(lambda: _unread(john) == 1, interval=0.02, message="john's count did not reach 1")
    john.get("/messages")  # "first" is read now
    post_form(susan, "/send_message/john", {"message": "second"})
    wait_until(lambda: _unread(john) == 1, interval=0.02, message="john's count did not reach 1 again")
    cards = _cards(text(john.get("/messages")))
    assert len(cards) == 2
    newest, oldest = cards
    assert "message-new" in newest and ">New<" in newest  # unread when the page opened
    assert "message-new" not in oldest and ">New<" not in oldest
    for card in cards:
        assert re.search(r'<a href="/user/susan">susan</a>\s+said\s+<time datetime="[^"]+" title="[^"]+">'
                         r'(in )?\d+ seconds?( ago)?</time>|said <time[^>]*>now', card), card
        assert 'href="/send_message/susan"' in card and ">Reply<" in card
        assert re.search(r'<img src="(/avatar/[0-9a-f]{32}\.svg\?s=36|https://www\.gravatar\.com/avatar/[0-9a-f]{32}'
                         r'\?d=identicon&amp;s=36)"', card), card
    # The next visit: nothing is new any more.
    assert "message-new" not in text(john.get("/messages"))


def test_in_spanish(susan_and_john):
    susan, john = susan_and_john
    post_form(susan, "/send_message/john", {"message": "hola"})
    wait_until(lambda: _unread(john) == 1, interval=0.02, message="john's count did not reach 1")
    page = text(john.get("/messages", headers={"Accept-Language": "es"}))
    assert "susan</a>\n        dijo <time" in page or re.search(r"susan</a>\s+dijo\s+<time", page)
    assert ">Responder<" in page and ">Nuevo<" in page and "hace" in page


def test_profile_shows_avatar_about_me_last_seen_and_send_link(susan_and_john):
    susan, john = susan_and_john
    page = text(susan.get("/user/john"))
    assert re.search(r'<img src="[^"]*[0-9a-f]{32}[^"]*s=128"', page)
    assert "Last seen on" in page and 'href="/send_message/john"' in page


def test_the_local_identicon_is_an_svg_and_refuses_what_is_not_a_digest(client):
    answer = client.get("/avatar/" + "0123456789abcdef" * 2 + ".svg?s=64")
    assert answer.status_code == 200 and answer.mimetype == "image/svg+xml"
    assert answer.get_data(as_text=True).startswith('<svg xmlns="http://www.w3.org/2000/svg" width="64"')
    assert answer.headers["Cache-Control"].startswith("public")
    assert client.get("/avatar/not-a-digest.svg").status_code == 404
    assert client.get("/avatar/" + "0" * 32 + ".svg?s=abc").status_code == 200  # a bad size: the default
