"""Hostile input to the gateway's forms and pages: a 4xx with a reason, never a 500.

Over the embedded and the real system (the ``client`` fixtures).
"""
import io

import pytest

from tests.helpers import PASSWORD, csrf_token, signed_in, text


def _file(content: bytes = b"hello"):
    return (io.BytesIO(content), "part.txt", "text/plain")


def _multipart(client, url, data):
    return client.post(url, data={"csrf_token": csrf_token(client, url), **data}, content_type="multipart/form-data")


def _bodies(client):
    import re

    return re.findall(r'<p class="card-text message-body">(.*?)</p>', text(client.get("/messages")), re.S)


def test_a_message_sent_as_a_file_part_is_a_400_and_sends_nothing(susan_and_john):
    susan, john = susan_and_john
    response = _multipart(susan, "/send_message/john", {"message": _file(b"x" * 50)})
    assert response.status_code == 400
    assert "This form takes text only" in text(response)
    assert _bodies(john) == []


def test_a_multipart_form_with_text_fields_only_still_works(susan_and_john):
    susan, john = susan_and_john
    response = _multipart(susan, "/send_message/john", {"message": "hi as multipart"})
    assert response.status_code == 302
    assert _bodies(john) == ["hi as multipart"]


@pytest.mark.parametrize("field", ["username", "password", "remember_me"])
def test_login_with_a_file_part_is_a_400(client, field):
    signed_in(client, "susan")
    client.get("/auth/logout")
    data = {"username": "susan", "password": PASSWORD, field: _file()}
    response = _multipart(client, "/auth/login", data)
    assert response.status_code == 400
    assert client.get("/index").status_code == 302  # not signed in


@pytest.mark.parametrize("field", ["username", "email", "password", "password2"])
def test_register_with_a_file_part_is_a_400(client, field):
    data = {"username": "susan", "email": "susan@example.com", "password": PASSWORD, "password2": PASSWORD}
    data[field] = _file(PASSWORD.encode())
    response = _multipart(client, "/auth/register", data)
    assert response.status_code == 400
    assert "This form takes text only" in text(response)


@pytest.mark.parametrize("field", ["username", "about_me"])
def test_edit_profile_with_a_file_part_is_a_400_and_changes_nothing(client, field):
    signed_in(client, "susan")
    client.post("/edit_profile", data={"csrf_token": csrf_token(client, "/edit_profile"),
                                       "username": "susan", "about_me": "kept"})
    data = {"username": "susan2", "about_me": "replaced", field: _file()}
    response = _multipart(client, "/edit_profile", data)
    assert response.status_code == 400
    page = text(client.get("/user/susan"))
    assert "User: susan" in page and "kept" in page


def test_a_json_body_is_not_read_as_a_form(susan_and_john):
    # Flask-WTF reads a JSON body as form data: numbers and lists reached the validators.
    susan, john = susan_and_john
    token = csrf_token(susan, "/send_message/john")
    response = susan.post("/send_message/john", json={"message": 12345}, headers={"X-CSRFToken": token})
    assert response.status_code == 200  # the form again, with "required" under the field
    assert "This field is required." in text(response)
    assert _bodies(john) == []


@pytest.mark.parametrize("page, status", [
    ("9" * 5000, 400),          # no page number at all: too long to read
    ("1" + "0" * 100, 400),     # 101 digits
    ("9" * 100, 404),           # past the end of any inbox; never reaches a database
    ("9223372036854775808", 404),  # 2**63: SQLite's integers overflow here
    (str(2**31), 404),
    (str(2**31 - 1), 404),      # the largest page asked of the service: past the end
    ("0001", 200),
])
def test_huge_page_numbers_are_4xx_not_500(susan_and_john, page, status):
    _, john = susan_and_john
    response = john.get(f"/messages?page={page}")
    assert response.status_code == status
    if status == 400:
        assert "not a page number" in text(response)


def test_the_inbox_rpc_refuses_huge_pages_itself(susan_and_john, system_app):
    from gateway.rpc import services
    from kernel.errors import ValidationFailed

    with system_app.app_context():
        john = services().users.get_user_by_username("john")["id"]
        assert services().messages.inbox(john, 2**31 - 1)["messages"] == []
        for page in (2**31, 2**63, 10**40):
            with pytest.raises(ValidationFailed, match="page must be a whole number"):
                services().messages.inbox(john, page)


@pytest.mark.parametrize("multipart", [False, True], ids=["urlencoded", "multipart"])
def test_a_body_over_1_mb_is_a_413_and_sends_nothing(susan_and_john, multipart):
    susan, john = susan_and_john
    data = {"csrf_token": csrf_token(susan, "/send_message/john"), "message": "x" * (2 * 1024 * 1024)}
    response = susan.post("/send_message/john", data=data,
                          content_type="multipart/form-data" if multipart else None)
    assert response.status_code == 413
    assert _bodies(john) == []
