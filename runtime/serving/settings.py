"""Settings of the serving runtime: one pydantic-settings tree, env prefix ``KAITO_SERVING_``.

Command-line flags (``__main__``) override the environment. Either ``model`` (a local
folder or the preset name) or ``tgi_url`` (proxy to an external TGI server) is required.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.precision import normalise_dtype
from runtime.serving.loader import AdapterSpec


class ServingSettings(BaseSettings):
    """Everything ``python -m runtime.serving`` can be told."""

    model_config = SettingsConfigDict(env_prefix="KAITO_SERVING_", extra="forbid")

    model: str | None = None
    tgi_url: str | None = None
    tokenizer: str | None = None
    adapters: list[str] = Field(default_factory=list)
    adapter_dir: Path | None = Path("/mnt/adapter")
    served_model_name: str | None = None
    default_model: str | None = None
    host: str = "0.0.0.0"
    port: int = Field(default=5000, ge=0, le=65535)
    max_batch_size: int = Field(default=16, ge=1, le=256)
    max_queue: int = Field(default=64, ge=0)
    max_context_tokens: int | None = Field(default=None, ge=2)
    default_max_tokens: int = Field(default=256, ge=1)
    device: str | None = None
    dtype: str = "auto"
    torch_threads: int | None = Field(default=None, ge=1)
    tgi_timeout_seconds: float = Field(default=600.0, gt=0)
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        return normalise_dtype(value)

    @model_validator(mode="after")
    def _one_source(self) -> ServingSettings:
        if (self.model is None) == (self.tgi_url is None):
            raise ValueError("give exactly one of --model and --tgi-url")
        if self.tgi_url is not None and self.adapters:
            raise ValueError("adapters are served by the external TGI server, not the proxy")
        for text in self.adapters:
            AdapterSpec.parse(text, self.adapter_dir)
        return self

    def adapter_specs(self) -> list[AdapterSpec]:
        """``--adapter`` flags plus every other adapter folder under ``adapter_dir``
        (strength 1; the proxy loads none)."""
        specs = [AdapterSpec.parse(text, self.adapter_dir) for text in self.adapters]
        named = {spec.name for spec in specs}
        if self.tgi_url is None and self.adapter_dir is not None and self.adapter_dir.is_dir():
            for folder in sorted(self.adapter_dir.iterdir()):
                if (folder / "adapter_config.json").is_file() and folder.name not in named:
                    spec = AdapterSpec(folder.name, folder)
                    spec.check()
                    specs.append(spec)
        names = [spec.name for spec in specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate adapter names: {', '.join(duplicates)}")
        return specs
