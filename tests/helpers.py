"""Browser-like helpers for the Flask test client: forms carry their CSRF token."""
import re

CSRF_PATTERN = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
PASSWORD = "correct horse battery"


def csrf_token(client, url: str) -> str:
    page = client.get(url)
    assert page.status_code == 200, f"GET {url} gave {page.status_code}"
    match = CSRF_PATTERN.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {url}"
    return match.group(1)


def post_form(client, url: str, data: dict, **kwargs):
    return client.post(url, data={"csrf_token": csrf_token(client, url), **data}, **kwargs)


def register(client, username: str, email: str | None = None, password: str = PASSWORD, password2: str | None = None):
    return post_form(
        client,
        "/auth/register",
        {
            "username": username,
            "email": email or f"{username.lower()}@example.com",
            "password": password,
            "password2": password if password2 is None else password2,
        },
    )


def login(client, username: str, password: str = PASSWORD, remember: bool = False, next_url: str | None = None):
    url = "/auth/login" + (f"?next={next_url}" if next_url is not None else "")
    data = {"username": username, "password": password}
    if remember:
        data["remember_me"] = "y"
    return post_form(client, url, data)


def text(response) -> str:
    return response.get_data(as_text=True)


def signed_in(client, username: str = "susan"):
    """``client`` after registering ``username`` and signing in."""
    register(client, username)
    login(client, username)
    return client


# Over HTTP, against a served gateway (``requests``): for tests that need a real server.
HIDDEN_FIELDS = re.compile(r'<input[^>]*name="([^"]+)"[^>]*type="hidden"[^>]*value="([^"]*)"')


def http_sign_in(base: str, username: str):
    """A ``requests.Session`` after registering ``username`` and signing in at ``base``."""
    import requests

    session = requests.Session()
    token = CSRF_PATTERN.search(session.get(base + "/auth/register", timeout=30).text).group(1)
    response = session.post(base + "/auth/register", allow_redirects=False, timeout=30, data={
        "csrf_token": token, "username": username, "email": f"{username}@example.com",
        "password": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 302, response.text
    token = CSRF_PATTERN.search(session.get(base + "/auth/login", timeout=30).text).group(1)
    response = session.post(base + "/auth/login", allow_redirects=False, timeout=30, data={
        "csrf_token": token, "username": username, "password": PASSWORD})
    assert response.status_code == 302, response.text
    return session


def http_send_form(session, base: str, recipient: str) -> dict:
    """The hidden fields of a fresh send form (CSRF token, idempotency key)."""
    page = session.get(f"{base}/send_message/{recipient}", timeout=30)
    assert page.status_code == 200, page.status_code
    return dict(HIDDEN_FIELDS.findall(page.text))


def http_send(session, base: str, recipient: str, body: str, form: dict | None = None) -> None:
    """Send ``body`` through the form (a fresh one unless ``form`` is given); 302 expected."""
    form = form or http_send_form(session, base, recipient)
    response = session.post(f"{base}/send_message/{recipient}", data={**form, "message": body},
                            allow_redirects=False, timeout=30)
    assert response.status_code == 302, (response.status_code, response.text[:500])


def storage_of(messages_db):
    """Opens recorders of the messages database ``(engine, sessionmaker)`` (the storage
    class its dialect picks), as the service's ``Database`` dependency does per worker."""
    from services.messages.storage import STORAGE

    engine, make_session = messages_db
    return lambda: STORAGE.for_engine(engine)(make_session())
