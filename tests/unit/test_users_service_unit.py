"""The users service's entry points with nameko's worker_factory and a real session."""
from nameko.testing.services import worker_factory

from services.users.service import UsersService

PASSWORD = "correct horse battery"


def test_entry_points_use_the_injected_session(users_db):
    service = worker_factory(UsersService, db=users_db)
    profile = service.register("susan", "susan@example.com", PASSWORD)
    assert service.authenticate("susan", PASSWORD)["id"] == profile["id"]
    assert service.get_user(profile["id"])["username"] == "susan"
    assert service.get_user_by_username("susan")["id"] == profile["id"]
    assert service.get_users([profile["id"]]) == {str(profile["id"]): service.get_user(profile["id"])}
    assert service.update_profile(profile["id"], "susan", "about")["about_me"] == "about"
    assert service.record_seen(profile["id"])["id"] == profile["id"]
