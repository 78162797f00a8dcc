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


def _spec(name: str, class_name: str) -> ServiceSpec:
    """Every service follows one layout: services/<name>/{service,settings}.py, migrations/."""
    return ServiceSpec(
        name=name,
        service_path=f"services.{name}.service:{class_name}",
        settings_module=f"services.{name}.settings",
        migrations=_ROOT / name / "migrations",
        database_key=f"{name.upper()}_DATABASE_URL",
    )


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        _spec("users", "UsersService"),
        _spec("messages", "MessagesService"),
        _spec("notifications", "NotificationsService"),
    )
}


def migrate(spec: ServiceSpec, url: str) -> None:
    from kernel.migrations import upgrade

    upgrade(spec.migrations, url)
