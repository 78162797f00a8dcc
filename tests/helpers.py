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
