"""Flask extensions, created unbound and attached in ``create_app``."""
from flask_babel import Babel, lazy_gettext as _l
from flask_login import LoginManager
from flask_wtf import CSRFProtect

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = _l("Please log in to access this page.")
csrf = CSRFProtect()
babel = Babel()

