"""Forms of the main pages; field names are the tutorial's."""
from flask_babel import lazy_gettext as _l
from wtforms import HiddenField, StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length

from gateway.forms import TextForm

# The messages service's limit (services.messages.commands.MESSAGE_MAX): characters as
# Python counts them (code points), after the service strips surrounding whitespace.
MESSAGE_MAX = 140


def as_the_service_counts(text):
    """The body the service will store: line breaks as one character each (a browser sends
    a textarea's line breaks as CRLF, and its own count, and the page's counter, as one),
    without surrounding whitespace (the service strips it)."""
    if not isinstance(text, str):
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


class EditProfileForm(TextForm):
    username = StringField(_l("Username"), validators=[DataRequired(), Length(max=64)])
    about_me = TextAreaField(_l("About me"), validators=[Length(max=140)])
    submit = SubmitField(_l("Submit"))


class MessageForm(TextForm):
    # No maxlength attribute (Length would add one): a browser cuts a longer paste to fit
    # without a word, and sends the cut text. A longer body is a form error instead,
    # shown with the text kept; the page's counter shows the limit as one types.
    message = TextAreaField(
        _l("Message"),
        filters=[as_the_service_counts],
        validators=[DataRequired(), Length(max=MESSAGE_MAX, message=_l(
            "Messages are at most %(max)d characters; this one has %(length)d."))],
        render_kw={"maxlength": False},
    )
    # Made once when the form is shown and sent back with it: the messages service appends
    # one MessageSent per key, so a form submitted twice (a retry after a 503 or a timeout,
    # a double click, the back button) sends one message. Not one of the tutorial's fields:
    # a client that leaves it out gets a fresh key per request.
    idempotency_key = HiddenField()
    submit = SubmitField(_l("Submit"))
