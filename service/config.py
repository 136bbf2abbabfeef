"""The EMEWS service's configuration: YAML (a ``service:`` section) plus environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eqflow.errors import ConfigError


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db_url: str | None = Field(None, description="postgresql:// URL; None: $EQFLOW_DB_URL or the embedded DB")
    host: str = Field("127.0.0.1", description="bind address (loopback by default: reach it over SSH)")
    port: int = Field(8765, ge=0, le=65535)
    tokens: list[str] = Field(default_factory=list,
                              description="accepted bearer tokens; several during a rotation")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest request body")
    max_batch: int = Field(50_000, ge=1, description="most tasks or ids in one request")
    max_payload_bytes: int = Field(16 * 1024 * 1024, ge=1)
    pool_size: int = Field(16, ge=1, description="database connections held by the service (by each of its "
                                                 "processes)")
    workers: int = Field(1, ge=1, le=64, description="service processes (uvicorn workers), sharing the port: "
                                                     "one per core serves more requests at once")
    body_timeout_s: float = Field(30.0, gt=0, le=3600,
                                  description="a request body that stalls this long between reads is dropped (408)")
    long_poll_threads: int = Field(8, ge=1, le=256,
                                   description="worker threads that waiting long-polls may use at once for their "
                                               "checks; short requests keep the rest")
    long_poll_check_s: float = Field(5.0, gt=0, le=25,
                                     description="a waiting long-poll checks at least this often (a safety net "
                                                 "for a lost notification)")
    health_timeout_s: float = Field(1.0, gt=0, le=30, description="longest /health waits for the database probe")
    db_wait_s: float = Field(30.0, gt=0, le=3600,
                             description="how long a request waits for an unreachable database before its 503 "
                                         "(clients retry 503s); a request never holds a thread for a whole outage")

    def accepted_tokens(self) -> list[str]:
        env = os.environ.get("EQFLOW_SERVICE_TOKENS") or os.environ.get("EQFLOW_SERVICE_TOKEN") or ""
        tokens = [t for t in self.tokens if t] + [t.strip() for t in env.split(",") if t.strip()]
        if not tokens:
            raise ConfigError("the service needs at least one bearer token: set service.tokens in the config "
                              "or $EQFLOW_SERVICE_TOKEN")
        return tokens


def load_config(path: str | Path | None) -> ServiceConfig:
    if path is None:
        return ServiceConfig.model_validate({})
    path = Path(path)
    try:
        raw: Any = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    section = raw.get("service", raw) if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: expected a mapping under 'service'")
    try:
        return ServiceConfig.model_validate(section)
    except ValidationError as exc:
        problems = "; ".join(f"service.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
