"""Server settings: CLI flags, `GEMMA_SERVER_*` environment variables and a TOML/YAML file.

Precedence: command line > environment > config file > defaults. Built once at the edge (the
CLI) and passed inward as a frozen object; nothing reads settings at import time.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from gemma_server.config import EngineConfig
from gemma_server.errors import ConfigurationError

StrList = Annotated[list[str], NoDecode]


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GEMMA_SERVER_", frozen=True, extra="forbid")

    checkpoint: str | None = None
    served_model_name: StrList = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantize: Literal["int8"] | None = None
    api_key: StrList = Field(default_factory=list)
    api_key_file: str | None = None
    max_batch_size: int = Field(8, ge=1, le=1024)
    max_waiting: int = Field(128, ge=0)
    max_input_length: int = Field(1512, ge=1)
    max_total_tokens: int = Field(2048, ge=2)
    max_batch_prefill_tokens: int = Field(1024, ge=32)
    decode_steps: int = Field(4, ge=1, le=64)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    compilation_cache_dir: str | None = None  # default: <cache root>/xla; "off": none
    lora: StrList = Field(default_factory=list)  # NAME=DIR
    lora_dir: str | None = None
    max_loras: int | None = Field(None, ge=0, le=256)
    max_lora_rank: int = Field(32, ge=1, le=256)
    allow_runtime_lora: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    shutdown_timeout: float = Field(30.0, ge=0)
    tensor_parallel: int = Field(1, ge=1, le=1024)
    data_parallel: int = Field(1, ge=1, le=1024)
    memory_utilization: float = Field(0.9, gt=0, le=1)
    coordinator_address: str | None = None  # multi-host: HOST:PORT of process 0
    num_processes: int | None = Field(None, ge=1)
    process_id: int | None = Field(None, ge=0)

    @field_validator("served_model_name", "api_key", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        """Environment variables hold lists as comma-separated text (or a JSON list)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("lora")
    @classmethod
    def _lora_pairs(cls, value: list[str]) -> list[str]:
        for item in value:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--lora takes NAME=DIR, got {item!r}")
        return value

    @model_validator(mode="after")
    def _consistent_limits(self) -> ServerSettings:
        if self.max_input_length >= self.max_total_tokens:
            raise ValueError(
                f"max_input_length ({self.max_input_length}) must be < max_total_tokens "
                f"({self.max_total_tokens})")
        if self.tensor_parallel > 1 and self.data_parallel > 1:
            raise ValueError("tensor_parallel and data_parallel cannot be combined yet: run "
                             "one server per group of devices instead")
        multi_host = (self.coordinator_address, self.num_processes, self.process_id)
        if any(v is not None for v in multi_host) and any(v is None for v in multi_host):
            raise ValueError("multi-host serving needs coordinator_address, num_processes and "
                             "process_id together")
        if self.num_processes is not None and self.process_id is not None and \
                self.process_id >= self.num_processes:
            raise ValueError(f"process_id ({self.process_id}) must be < num_processes "
                             f"({self.num_processes})")
        if self.allow_runtime_lora and not (self.api_key or self.api_key_file):
            raise ValueError("allow_runtime_lora needs an API key: the adapter routes must be "
                             "authenticated")
        return self

    def lora_sources(self) -> list[tuple[str, str]]:
        """(name, directory) of every adapter to load at start-up."""
        pairs = [tuple(item.split("=", 1)) for item in self.lora]
        if self.lora_dir:
            root = Path(self.lora_dir)
            if not root.is_dir():
                raise ConfigurationError(f"lora_dir {root}: not a directory")
            pairs += [(p.name, str(p)) for p in sorted(root.iterdir()) if p.is_dir()]
        return [(name, path) for name, path in pairs]

    def lora_capacity(self, adapters: int) -> int:
        """Rows of the LoRA stacks: --max-loras, or the start-up adapters (+4 for runtime)."""
        if self.max_loras is not None:
            if self.max_loras < adapters:
                raise ConfigurationError(
                    f"{adapters} LoRA adapters were given but max_loras is {self.max_loras}")
            return self.max_loras
        return adapters + (4 if self.allow_runtime_lora else 0)

    def engine_config(self, max_loras: int = 0) -> EngineConfig:
        return EngineConfig(
            max_loras=max_loras, max_lora_rank=self.max_lora_rank,
            max_batch_size=self.max_batch_size, max_total_tokens=self.max_total_tokens,
            max_input_length=self.max_input_length,
            max_batch_prefill_tokens=self.max_batch_prefill_tokens,
            decode_steps=self.decode_steps, max_waiting=self.max_waiting,
            compilation_cache_dir=self.compilation_cache(),
        )

    def compilation_cache(self) -> str | None:
        """Where compiled executables persist across restarts: the setting, else a folder of
        the cache root (`$GEMMA_SERVER_CACHE`); "off" keeps none."""
        value = self.compilation_cache_dir
        if value is not None and value.strip().lower() in ("off", "none", "false", ""):
            return None
        if value is None:
            from gemma_server.demo import cache_root

            return str(cache_root() / "xla")
        return value

    def api_keys(self) -> list[str]:
        keys = list(self.api_key)
        if self.api_key_file:
            path = Path(self.api_key_file)
            try:
                keys += [line.strip() for line in path.read_text().splitlines() if line.strip()]
            except OSError as exc:
                raise ConfigurationError(f"api_key_file {path}: {exc.strerror}") from None
        return keys


class _FileSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]):
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML or YAML file of settings; keys use the flag names with `_` or `-`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"config file {path}: expected a table of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_settings(cli: dict[str, Any], config_file: str | Path | None = None) -> ServerSettings:
    """Merge the three sources; errors name the setting and the problem."""
    file_values = read_config_file(config_file) if config_file else {}

    class _Merged(ServerSettings):
        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return init_settings, env_settings, _FileSource(settings_cls, file_values)

    from pydantic import ValidationError

    try:
        merged = _Merged(**{k: v for k, v in cli.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            for e in exc.errors())
        raise ConfigurationError(f"invalid settings: {problems}") from None
    return ServerSettings.model_construct(**merged.model_dump())
