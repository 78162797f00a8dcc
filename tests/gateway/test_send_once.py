"""A send happens once: the send form carries an idempotency key made when it is shown,
so submitting the same form again (a retry after a 503 or a timeout, a double click, the
back button) sends one message. Over the embedded and the real system."""
import re

from tests.helpers import text

KEY = re.compile(r'name="idempotency_key" type="hidden" value="([^"]*)"')
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def _bodies(page_html):
    return re.findall(r'<p class="card-text message-body">(.*?)</p>', page_html, re.S)


def _form(client, recipient="john"):
    page = text(client.get(f"/send_message/{recipient}"))
    return {"csrf_token": CSRF.search(page).group(1), "idempotency_key": KEY.search(page).group(1)}


def test_each_showing_of_the_form_carries_a_fresh_key(susan_and_john):
    susan, _ = susan_and_john
    first, second = _form(susan)["idempotency_key"], _form(susan)["idempotency_key"]
    assert len(first) == 32 and first != second


def test_the_same_form_submitted_twice_sends_one_message(susan_and_john):
    susan, john = susan_and_john
    form = _form(susan)
    for _ in range(3):
        response = susan.post("/send_message/john", data={**form, "message": "only once"})
        assert response.status_code == 302 and response.headers["Location"] == "/user/john"
    assert "Your message has been sent." in text(susan.get("/user/john"))
    assert _bodies(text(john.get("/messages"))) == ["only once"]
    # A new showing of the form is a new action.
    assert susan.post("/send_message/john", data={**_form(susan), "message": "only once"}).status_code == 302
    assert _bodies(text(john.get("/messages"))) == ["only once", "only once"]


def test_a_form_that_failed_validation_keeps_its_key_and_sends_once_when_fixed(susan_and_john):
    susan, john = susan_and_john
    form = _form(susan)
    page = text(susan.post("/send_message/john", data={**form, "message": "x" * 141}))
    assert KEY.search(page).group(1) == form["idempotency_key"]  # nothing was sent under it
    assert susan.post("/send_message/john", data={**form, "message": "fixed"}).status_code == 302
    assert susan.post("/send_message/john", data={**form, "message": "fixed"}).status_code == 302
    assert _bodies(text(john.get("/messages"))) == ["fixed"]


def test_a_key_reused_for_a_different_message_is_refused_with_a_message(susan_and_john):
    susan, john = susan_and_john
    form = _form(susan)
    assert susan.post("/send_message/john", data={**form, "message": "first"}).status_code == 302
    page = susan.post("/send_message/john", data={**form, "message": "second"})
    assert page.status_code == 200
    assert "already used to send a different message" in text(page)
    assert KEY.search(text(page)).group(1) != form["idempotency_key"]  # the form shown again is new
    assert _bodies(text(john.get("/messages"))) == ["first"]


def test_a_malformed_key_is_a_400_and_sends_nothing(susan_and_john):
    susan, john = susan_and_john
    for bad in ("short", "x" * 65, "<script>alert(1)</script>", "a b c d e f g h"):
        form = _form(susan)
        response = susan.post("/send_message/john", data={**form, "idempotency_key": bad, "message": "hi"})
        assert response.status_code == 400
        assert "<script>alert(1)</script>" not in text(response)
    assert _bodies(text(john.get("/messages"))) == []


def test_a_client_that_sends_no_key_still_sends(susan_and_john):
    # The tutorial's form has no such field: a script posting message + csrf_token works.
    susan, john = susan_and_john
    form = _form(susan)
    del form["idempotency_key"]
    assert susan.post("/send_message/john", data={**form, "message": "from a script"}).status_code == 302
    assert _bodies(text(john.get("/messages"))) == ["from a script"]
