"""Forms of the main pages; field names are the tutorial's."""
from flask_babel import lazy_gettext as _l
from wtforms import StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length

from gateway.forms import TextForm


class EditProfileForm(TextForm):
    username = StringField(_l("Username"), validators=[DataRequired(), Length(max=64)])
    about_me = TextAreaField(_l("About me"), validators=[Length(max=140)])
    submit = SubmitField(_l("Submit"))


class MessageForm(TextForm):
    message = TextAreaField(_l("Message"), validators=[DataRequired(), Length(max=140)])
    submit = SubmitField(_l("Submit"))
