"""Forms of the main pages; field names are the tutorial's."""
from flask_babel import lazy_gettext as _l
from wtforms import HiddenField, StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length

from gateway.forms import TextForm


class EditProfileForm(TextForm):
    username = StringField(_l("Username"), validators=[DataRequired(), Length(max=64)])
    about_me = TextAreaField(_l("About me"), validators=[Length(max=140)])
    submit = SubmitField(_l("Submit"))


class MessageForm(TextForm):
    message = TextAreaField(_l("Message"), validators=[DataRequired(), Length(max=140)])
    # Made once when the form is shown and sent back with it: the messages service appends
    # one MessageSent per key, so a form submitted twice (a retry after a 503 or a timeout,
    # a double click, the back button) sends one message. Not one of the tutorial's fields:
    # a client that leaves it out gets a fresh key per request.
    idempotency_key = HiddenField()
    submit = SubmitField(_l("Submit"))
