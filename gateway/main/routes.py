"""Routes of the main blueprint."""
from datetime import timedelta

from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import _
from flask_login import current_user, login_required

from gateway.forms import show_service_error
from gateway.main import bp
from gateway.main.forms import EditProfileForm
from gateway.rpc import services
from gateway.session_user import SessionUser
from kernel.errors import UserNotFound, ValidationFailed

# The tutorial writes last_seen on every request; once a minute says the same for a
# fraction of the writes.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)


@bp.before_app_request
def record_last_seen():
    if current_user.is_authenticated and not current_user.seen_within(LAST_SEEN_RESOLUTION):
        try:
            services().users.record_seen(current_user.id)
        except UserNotFound:
            pass  # the account is gone; the next request's user loader signs them out


@bp.route("/")
@bp.route("/index")
@login_required
def index():
    return render_template("index.html", title=_("Home"))


@bp.route("/user/<username>")
@login_required
def user(username):
    try:
        profile = services().users.get_user_by_username(username)
    except UserNotFound:
        abort(404)
    return render_template("user.html", user=SessionUser(profile), title=profile["username"])


@bp.route("/edit_profile", methods=["GET", "POST"])
@login_required
def edit_profile():
    form = EditProfileForm()
    if form.validate_on_submit():
        try:
            services().users.update_profile(current_user.id, form.username.data, form.about_me.data)
        except ValidationFailed as error:
            show_service_error(form, error)
        else:
            flash(_("Your changes have been saved."))
            return redirect(url_for("main.edit_profile"))
    elif request.method == "GET":
        form.username.data = current_user.username
        form.about_me.data = current_user.about_me
    return render_template("edit_profile.html", title=_("Edit Profile"), form=form)
