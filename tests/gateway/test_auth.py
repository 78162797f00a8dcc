"""Register, sign in and out through the gateway, over the embedded and the real system."""
import re

import pytest

from tests.helpers import PASSWORD, csrf_token, login, post_form, register, text


def test_register_then_login_then_logout(client):
    response = register(client, "susan")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/auth/login")
    assert "Congratulations, you are now a registered user!" in text(client.get("/auth/login"))

    response = login(client, "susan")
    assert response.status_code == 302
    assert response.headers["Location"] == "/index"
    home = client.get("/index")
    assert home.status_code == 200
    assert "Hi, susan!" in text(home)

    client.get("/auth/logout")
    response = client.get("/index")
    assert response.status_code == 302
    assert "/auth/login" in response.headers["Location"]


def test_pages_that_need_login_redirect_anonymous_visitors(client):
    for url in ("/", "/index", "/edit_profile", "/user/anyone"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.headers["Location"].startswith("/auth/login?next="), url


def test_duplicate_username_is_refused_case_insensitively(client):
    assert register(client, "susan").status_code == 302
    response = register(client, "Susan", email="other@example.com")
    assert response.status_code == 200
    assert "Please use a different username." in text(response)


def test_duplicate_email_is_refused(client):
    assert register(client, "susan", email="susan@example.com").status_code == 302
    response = register(client, "john", email="SUSAN@example.com")
    assert response.status_code == 200
    assert "Please use a different email address." in text(response)
    assert login(client, "john").headers["Location"].startswith("/auth/login")  # nothing stored


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "two@@example.com", "spaces in@example.com"])
def test_invalid_email_is_refused(client, email):
    response = register(client, "susan", email=email)
    assert response.status_code == 200
    assert "Invalid email address." in text(response)


def test_passwords_that_differ_are_refused(client):
    response = register(client, "susan", password=PASSWORD, password2=PASSWORD + "x")
    assert response.status_code == 200
    assert "Passwords must match." in text(response)
    assert login(client, "susan").headers["Location"].startswith("/auth/login")


@pytest.mark.parametrize("username", ["bad/name", "<script>", "a" * 65, "   "])
def test_unusable_usernames_are_refused_with_a_message(client, username):
    response = register(client, username, email="x@example.com")
    assert response.status_code == 200
    assert 'class="invalid-feedback"' in text(response)
    assert "<script>" not in text(response).split("</nav>", 1)[1].replace("&lt;script&gt;", "")


def test_wrong_password_and_unknown_user_are_refused_alike(client):
    register(client, "susan")
    for username, password in (("susan", "wrong password!"), ("nobody", PASSWORD)):
        response = login(client, username, password)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/auth/login")
        page = text(client.get(response.headers["Location"]))
        assert "Invalid username or password" in page
        assert client.get("/index").status_code == 302


def test_local_next_is_honoured(client):
    register(client, "susan")
    response = login(client, "susan", next_url="/edit_profile")
    assert response.headers["Location"] == "/edit_profile"


@pytest.mark.parametrize(
    "next_url",
    ["http://evil.example/", "//evil.example/", "/\\evil.example", "https:evil.example", "javascript:alert(1)", "/\t/evil.example", "/ /evil.example"],
)
def test_external_next_is_ignored(client, next_url):
    register(client, "susan")
    from urllib.parse import quote

    response = login(client, "susan", next_url=quote(next_url, safe=""))
    assert response.status_code == 302
    assert response.headers["Location"] == "/index"


def test_post_without_csrf_token_is_refused(client):
    response = client.post("/auth/register", data={
        "username": "susan", "email": "susan@example.com", "password": PASSWORD, "password2": PASSWORD,
    })
    assert response.status_code == 400
    assert "security token" in text(response)
    # nothing was stored: the account does not exist
    assert login(client, "susan").headers["Location"].startswith("/auth/login")


def test_post_with_a_forged_csrf_token_is_refused(client):
    csrf_token(client, "/auth/login")
    response = client.post("/auth/login", data={"csrf_token": "forged", "username": "a", "password": "b"})
    assert response.status_code == 400


def test_remember_me_sets_a_remember_cookie(client):
    register(client, "susan")
    login(client, "susan", remember=True)
    assert client.get_cookie("remember_token") is not None


def test_login_without_remember_me_sets_no_remember_cookie(client):
    register(client, "susan")
    login(client, "susan")
    assert client.get_cookie("remember_token") is None


def test_logged_in_user_visiting_login_or_register_goes_home(client):
    register(client, "susan")
    login(client, "susan")
    for url in ("/auth/login", "/auth/register"):
        response = client.get(url)
        assert response.status_code == 302
        assert response.headers["Location"] == "/index"


def test_empty_login_form_shows_field_errors(client):
    response = post_form(client, "/auth/login", {"username": "", "password": ""})
    assert response.status_code == 200
    assert "This field is required." in text(response)


def test_pages_are_in_spanish_when_the_browser_asks(client):
    page = client.get("/auth/login", headers={"Accept-Language": "es-ES,es;q=0.9,en;q=0.5"})
    assert '<html lang="es">' in text(page)
    assert "Ingresar" in text(page)
    assert "Recordarme" in text(page)


def test_wtforms_own_messages_follow_each_requests_language(client):
    """WTForms' messages come in the language of each request (its catalogs are loaded
    once a process per language, gateway.forms): Spanish, then English again, then Spanish."""
    for language, message in (("es", "Este campo es obligatorio."), ("en", "This field is required."),
                              ("es-ES,es;q=0.9", "Este campo es obligatorio.")):
        response = post_form(client, "/auth/login", {"username": "", "password": ""},
                             headers={"Accept-Language": language})
        assert response.status_code == 200 and message in text(response), language


def test_no_page_needs_the_internet(client):
    register(client, "susan")
    login(client, "susan")
    local = client.application.config["AVATARS"] == "local"
    for url in ("/auth/register", "/index", "/user/susan", "/edit_profile"):
        page = text(client.get(url))
        if not local:  # the operator chose Gravatar's avatars (AVATARS=gravatar): only those
            page = re.sub(r'<img src="https://www\.gravatar\.com/avatar/[0-9a-f]{32}\?[^"]*"', "<img", page)
        for reference in ("http://", "https://", "//cdn", "//fonts"):
            assert f'src="{reference}' not in page and f'href="{reference}' not in page, url
    assert client.get("/static/bootstrap/bootstrap.min.css").status_code == 200
    assert client.get("/static/bootstrap/bootstrap.bundle.min.js").status_code == 200
    assert client.get("/static/site.css").status_code == 200
