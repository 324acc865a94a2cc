"""Where the registry lives: ``mlruns_config/<env>.yaml`` rendered with the data folder."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prodguard.config import Settings
from prodguard.errors import RegistryError
from prodguard.templates import load_yaml_template


class RegistryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_uri: str = Field(min_length=1)
    registry_uri: str = Field(min_length=1)
    artifact_location: str = Field(min_length=1)
    experiment: str = Field(min_length=1)
    audit_uri: str = Field(min_length=1)


def load_registry_config(settings: Settings) -> RegistryConfig:
    path = settings.registry.config
    document = load_yaml_template(path, settings.template_variables, RegistryError)
    try:
        return RegistryConfig.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        hint = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise RegistryError(f"{path.name}: {where}: {hint}") from None
