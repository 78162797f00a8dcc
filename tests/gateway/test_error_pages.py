"""Error pages (400, 403, 404, 405, 413, 500, 503): in the site's layout, translated, with
a way back; JSON for the poll and the push stream. Over stand-in services (the app is
built per test, so a test can add a route that fails)."""
import pytest
from flask import abort

from tests.gateway.test_database_outage import Services, _client

HOME = '<a class="btn btn-primary" href="/index">'
LAYOUT = ('<a class="navbar-brand" href="/index">Microblog</a>', "bootstrap/bootstrap.min.css")


def _app_client(services=None, anonymous=False):
    client = _client(services or Services())
    app = client.application

    @app.get("/test/forbidden")
    def forbidden():
        abort(403)

    @app.get("/test/fails")
    def fails():
        raise RuntimeError("a bug")

    if anonymous:
        with client.session_transaction() as session:
            session.clear()
    return client


CASES = [  # method, path, extra request arguments, status, English and Spanish headings
    ("get", "/messages?page=abc", {}, 400, "Bad Request", "Solicitud incorrecta"),
    ("get", "/test/forbidden", {}, 403, "Forbidden", "Prohibido"),
    ("get", "/no/such/page", {}, 404, "Not Found", "No encontrado"),
    ("post", "/index", {}, 405, "Method Not Allowed", "Método no permitido"),
    ("post", "/send_message/john", {"data": {"message": "x" * (2 * 1024 * 1024)}}, 413,
     "Too Much Data", "Demasiados datos"),
    ("get", "/test/fails", {}, 500, "An unexpected error has occurred", "Ha ocurrido un error inesperado"),
]


@pytest.mark.parametrize("method, path, kwargs, status, english, spanish", CASES)
def test_each_error_page_is_in_the_layout_translated_with_a_way_home(method, path, kwargs, status, english, spanish):
    for language, heading, home in (("en", english, "Go to the home page"), ("es", spanish, "Ir a la página de inicio")):
        response = getattr(_app_client(), method)(path, headers={"Accept-Language": language}, **kwargs)
        assert response.status_code == status, (path, language)
        page = response.text
        assert f"<h1>{heading}</h1>" in page, (path, language)
        assert f"<title>{heading} - Microblog</title>" in page
        assert f'<html lang="{language}">' in page
        assert all(part in page for part in LAYOUT), path
        assert HOME + home + "</a>" in page


def test_the_layout_keeps_the_visitors_navbar_and_a_stated_reason():
    page = _app_client().get("/messages?page=abc").text
    assert 'href="/auth/logout"' in page and 'id="message_count"' in page  # the user's navbar
    assert "The page number must be a whole number, 1 or more." in page
    anonymous = _app_client(anonymous=True).get("/no/such/page")
    assert anonymous.status_code == 404 and 'href="/auth/login"' in anonymous.text


def test_a_405_still_says_what_is_allowed():
    response = _app_client().post("/index")
    assert response.status_code == 405 and "GET" in response.headers["Allow"]


def test_back_goes_to_the_page_of_this_site_one_came_from_and_nowhere_else():
    client = _app_client()
    came_from = client.get("/no/such/page", headers={"Referer": "http://localhost/user/john"}).text
    assert '<a class="btn btn-outline-secondary" href="http://localhost/user/john">' in came_from
    for referrer in ("https://elsewhere.example/", "javascript:alert(1)", "http://localhost/no/such/page"):
        page = client.get("/no/such/page", headers={"Referer": referrer}).text
        assert "btn-outline-secondary" not in page, referrer
        assert HOME in page


class Broken(Services):
    """The badge's lookup fails with a bug (not an outage, which the navbar survives)."""

    def __init__(self):
        super().__init__()

        def bug(*args):
            raise RuntimeError("badge bug")
        self.notifications.notifications_since = bug


def test_a_500_page_does_not_fail_when_the_navbar_cannot_be_drawn():
    response = _app_client(Broken()).get("/test/fails", headers={"Accept-Language": "es"})
    assert response.status_code == 500
    assert "<h1>Ha ocurrido un error inesperado</h1>" in response.text
    assert all(part in response.text for part in LAYOUT) and HOME in response.text
    assert 'id="message_count"' not in response.text  # drawn without the user's navbar
    # A 404 whose page cannot be drawn becomes that 500 page, not a bare one.
    response = _app_client(Broken()).get("/no/such/page")
    assert response.status_code == 500 and "<h1>An unexpected error has occurred</h1>" in response.text


def test_a_500_page_is_bare_html_when_even_the_layout_fails(monkeypatch):
    client = _app_client()

    def no_templates(*args, **kwargs):
        raise RuntimeError("templates are broken")
    monkeypatch.setattr(client.application.jinja_env, "get_or_select_template", no_templates)
    monkeypatch.setattr(client.application.jinja_env, "get_template", no_templates)
    response = client.get("/test/fails")
    assert response.status_code == 500
    assert "An unexpected error has occurred" in response.text and '<a href="/">' in response.text


@pytest.mark.parametrize("method, path, status", [
    ("post", "/notifications", 405),
    ("get", "/notifications/nowhere", 404),
    ("post", "/notifications/stream", 405),
])
def test_the_poll_and_the_stream_answer_errors_in_json(method, path, status):
    response = getattr(_app_client(), method)(path)
    assert response.status_code == status
    assert response.is_json and response.get_json()["error"]


def test_the_503_page_is_in_the_layout_translated():
    response = _client(Services(down=["users"])).get("/index", headers={"Accept-Language": "es"})
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "<h1>Servicio no disponible temporalmente</h1>" in response.text
    assert all(part in response.text for part in LAYOUT) and HOME in response.text
