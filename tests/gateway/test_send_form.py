"""The send form tells the truth about the 140-character limit: it is shown with a live
counter, and a longer body is a form error that keeps the text; nothing is cut or sent.
The rules are the server's (JavaScript off is the test client). Over the embedded and the
real system."""
import html
import re

from tests.helpers import post_form, text

EMOJI = "\N{GRINNING FACE}"  # one character, two UTF-16 units, four UTF-8 bytes


def _bodies(page_html):
    return [html.unescape(body) for body in
            re.findall(r'<p class="card-text message-body">(.*?)</p>', page_html, re.S)]


def _head(app):
    with app.app_context():
        from gateway.rpc import services

        return services().messages.head()


def _textarea(page_html):
    match = re.search(r'<textarea([^>]*)>(.*?)</textarea>', page_html, re.S)
    assert match, "no textarea on the page"
    return match.group(1), html.unescape(match.group(2)).lstrip("\r\n")


def test_the_form_shows_the_limit_and_a_counter_and_lets_a_paste_through_uncut(susan_and_john):
    susan, _ = susan_and_john
    page = text(susan.get("/send_message/john"))
    attributes, _ = _textarea(page)
    assert "maxlength" not in attributes  # the browser would cut a longer paste silently
    assert 'aria-describedby="message-limit"' in attributes
    assert "At most 140 characters." in page  # said in words, with or without JavaScript
    assert 'id="message-counter"' in page and 'data-max="140"' in page
    assert 'aria-live="polite"' in page
    assert "Array.from(field.value.trim()).length" in page  # code points, as the server counts
    assert "<script src=\"http" not in page  # nothing from a CDN


def test_a_body_over_the_limit_is_a_form_error_that_keeps_the_text_and_sends_nothing(susan_and_john, system_app):
    susan, john = susan_and_john
    head = _head(system_app)
    body = "The whole of it " + "y" * 130  # 146 characters
    response = post_form(susan, "/send_message/john", {"message": body})
    assert response.status_code == 200
    page = text(response)
    assert "Messages are at most 140 characters; this one has 146." in page
    attributes, kept = _textarea(page)
    assert kept == body  # not cut: all of it, to shorten
    assert "is-invalid" in attributes and 'aria-invalid="true"' in attributes
    assert 'aria-describedby="message-limit message-errors"' in attributes
    assert _head(system_app) == head
    assert _bodies(text(john.get("/messages"))) == []


def test_exactly_140_characters_of_emoji_and_accents_are_sent_whole(susan_and_john):
    susan, john = susan_and_john
    body = EMOJI * 70 + "é" * 69 + "x"  # 140 code points, 210 UTF-16 units, 419 bytes
    assert len(body) == 140
    assert post_form(susan, "/send_message/john", {"message": body}).status_code == 302
    assert _bodies(text(john.get("/messages"))) == [body]


def test_141_emoji_are_refused(susan_and_john, system_app):
    susan, john = susan_and_john
    head = _head(system_app)
    response = post_form(susan, "/send_message/john", {"message": EMOJI * 141})
    assert "this one has 141." in text(response)
    assert _textarea(text(response))[1] == EMOJI * 141
    assert _head(system_app) == head


def test_line_breaks_count_as_one_character_as_the_counter_counts_them(susan_and_john):
    # A browser sends a textarea's line breaks as CRLF; its value (what the counter
    # counts) has one character for each. 70 lines of "x" joined: 139 characters.
    susan, john = susan_and_john
    assert post_form(susan, "/send_message/john", {"message": "\r\n".join("x" * 70)}).status_code == 302
    assert _bodies(text(john.get("/messages"))) == ["\n".join("x" * 70)]


def test_the_limit_the_counter_and_the_error_are_translated(susan_and_john):
    susan, _ = susan_and_john
    spanish = {"Accept-Language": "es"}
    page = text(susan.get("/send_message/john", headers=spanish))
    assert "Como máximo 140 caracteres." in page
    assert 'data-within="{count} de 140 caracteres"' in page
    response = post_form(susan, "/send_message/john", {"message": "x" * 141}, headers=spanish)
    assert "Los mensajes tienen como máximo 140 caracteres; este tiene 141." in text(response)
