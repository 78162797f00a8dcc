"""Sign-out ends the session server-side: cookies copied before it stop working after it.

Over the embedded and the real system. A "thief" is a second test client given a copy of
the victim's cookies.
"""
import hashlib

from sqlalchemy import create_engine, text as sql

from tests.helpers import login, register, signed_in, text


def _copy_cookies(source, target, names=("session", "remember_token")):
    for name in names:
        cookie = source.get_cookie(name)
        if cookie is not None:
            target.set_cookie(name, cookie.value)


def _signed_in_as(browser, username: str) -> bool:
    response = browser.get("/index")
    if response.status_code == 302:
        assert "/auth/login" in response.headers["Location"]
        return False
    assert response.status_code == 200 and f"Hi, {username}!" in text(response)
    return True


def test_a_session_cookie_copied_before_logout_stops_working_after_it(client, system_app):
    signed_in(client, "susan")
    thief = system_app.test_client()
    _copy_cookies(client, thief, names=("session",))
    assert _signed_in_as(thief, "susan")
    assert thief.get("/notifications").status_code == 200  # this process now trusts the session

    client.get("/auth/logout")
    assert not _signed_in_as(client, "susan")
    assert not _signed_in_as(thief, "susan")
    assert thief.get("/messages").status_code == 302
    assert thief.get("/notifications").status_code == 401  # at once, in the process that signed out


def test_a_remember_me_cookie_copied_before_logout_stops_working_after_it(client, system_app):
    register(client, "susan")
    login(client, "susan", remember=True)
    remember = client.get_cookie("remember_token").value
    thief = system_app.test_client()
    thief.set_cookie("remember_token", remember)
    assert _signed_in_as(thief, "susan")  # from the remember cookie alone (it gets a session cookie too)

    client.get("/auth/logout")
    assert not _signed_in_as(thief, "susan")
    assert thief.get("/notifications").status_code == 401
    later = system_app.test_client()  # the browser closed: only the remember cookie is left
    later.set_cookie("remember_token", remember)
    assert not _signed_in_as(later, "susan")
    assert later.get("/notifications").status_code == 401


def test_signing_in_again_or_elsewhere_leaves_other_sessions_alone(client, other_client, system_app):
    signed_in(client, "susan")
    laptop = system_app.test_client()
    login(laptop, "susan")
    phone = system_app.test_client()
    login(phone, "susan", remember=True)
    for browser in (client, laptop, phone):
        assert _signed_in_as(browser, "susan")

    laptop.get("/auth/logout")
    assert not _signed_in_as(laptop, "susan")
    assert _signed_in_as(client, "susan") and _signed_in_as(phone, "susan")
    assert client.get("/notifications").status_code == 200 and phone.get("/notifications").status_code == 200
    login(laptop, "susan")  # signing in again opens a new session; the others stay
    assert _signed_in_as(laptop, "susan") and _signed_in_as(client, "susan")


def test_cookies_without_a_live_session_are_anonymous(client, system_app):
    signed_in(client, "susan")
    with client.session_transaction() as session:
        user_id, token = session["_user_id"].split(":")
    for forged in (user_id,                       # a cookie from before server-side sessions
                   f"{user_id}:{token}x",         # a guessed token
                   f"{int(user_id) + 1}:{token}",  # someone else's id with this token
                   f"{user_id}:{token}:{token}", f"{user_id}:", f":{token}", "9" * 40 + ":x"):
        browser = system_app.test_client()
        with browser.session_transaction() as session:
            session["_user_id"] = forged
            session["_fresh"] = True
        assert not _signed_in_as(browser, "susan"), forged
        assert browser.get("/notifications").status_code == 401, forged


def test_session_tokens_are_random_and_stored_hashed(client, other_client, running_system):
    signed_in(client, "susan")
    login(other_client, "susan")
    tokens = []
    for browser in (client, other_client):
        with browser.session_transaction() as session:
            tokens.append(session["_user_id"].split(":")[1])
    assert tokens[0] != tokens[1] and min(len(t) for t in tokens) >= 40
    users_url = next(url for url in running_system.database_urls if "users" in url)
    engine = create_engine(users_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.connect() as connection:
        stored = [tuple(row) for row in connection.execute(sql("SELECT * FROM sessions"))]
    engine.dispose()
    assert len(stored) == 2
    dump = repr(stored)
    for token in tokens:
        assert token not in dump
        assert hashlib.sha256(token.encode()).hexdigest() in dump
