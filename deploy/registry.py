"""Which services exist, and how to build, configure and migrate each one."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    service_path: str  # "module:Class"
    settings_module: str
    migrations: Path
    database_key: str

    def service_class(self):
        module, cls = self.service_path.split(":")
        return getattr(importlib.import_module(module), cls)

    def nameko_config(self) -> dict:
        return importlib.import_module(self.settings_module).nameko_config()


_ROOT = Path(__file__).resolve().parent.parent / "services"

SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec(
            name="users",
            service_path="services.users.service:UsersService",
            settings_module="services.users.settings",
            migrations=_ROOT / "users" / "migrations",
            database_key="USERS_DATABASE_URL",
        ),
        ServiceSpec(
            name="messages",
            service_path="services.messages.service:MessagesService",
            settings_module="services.messages.settings",
            migrations=_ROOT / "messages" / "migrations",
            database_key="MESSAGES_DATABASE_URL",
        ),
        ServiceSpec(
            name="notifications",
            service_path="services.notifications.service:NotificationsService",
            settings_module="services.notifications.settings",
            migrations=_ROOT / "notifications" / "migrations",
            database_key="NOTIFICATIONS_DATABASE_URL",
        ),
    )
}


def migrate(spec: ServiceSpec, url: str) -> None:
    from kernel.migrations import upgrade

    upgrade(spec.migrations, url)
