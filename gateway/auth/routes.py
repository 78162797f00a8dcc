"""Routes of the auth blueprint."""
from urllib.parse import urlsplit

from flask import flash, redirect, render_template, request, url_for
from flask_babel import _
from flask_login import current_user, login_user, logout_user

from gateway.auth import bp
from gateway.auth.forms import LoginForm, RegistrationForm
from gateway.forms import show_service_error
from gateway.rpc import services
from gateway.session_user import SessionUser, session_lifetime_seconds, sign_out
from kernel.errors import InvalidCredentials, ValidationFailed


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site, else None (no open redirects).

    Browsers treat ``//host``, ``/\\host`` and paths with tabs or newlines inside as
    links to another site, so all of those are refused along with absolute URLs.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = LoginForm()
    if form.validate_on_submit():
        try:
            profile = services().users.authenticate(form.username.data, form.password.data)
        except InvalidCredentials:
            flash(_("Invalid username or password"))
            return redirect(url_for("auth.login", next=safe_next(request.args.get("next"))))
        opened = services().users.open_session(profile["id"], session_lifetime_seconds())
        login_user(SessionUser(profile, opened["token"]), remember=form.remember_me.data)
        return redirect(safe_next(request.args.get("next")) or url_for("main.index"))
    return render_template("auth/login.html", title=_("Sign In"), form=form)


@bp.route("/logout")
def logout():
    """Sign out: end the session in the users service, so that a copy of this browser's
    cookies stops working too, then forget it here. If the users service cannot be
    reached, the sign-out fails (503) and the browser stays signed in to try again: a
    session that only looked ended would be worse."""
    token = getattr(current_user, "session_token", None)
    if current_user.is_authenticated and token:
        sign_out(current_user.id, token)
    logout_user()
    return redirect(url_for("main.index"))


@bp.route("/register", methods=["GET", "POST"])
def register():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = RegistrationForm()
    if form.validate_on_submit():
        try:
            services().users.register(form.username.data, form.email.data, form.password.data)
        except ValidationFailed as error:
            show_service_error(form, error)
        else:
            flash(_("Congratulations, you are now a registered user!"))
            return redirect(url_for("auth.login"))
    return render_template("auth/register.html", title=_("Register"), form=form)
