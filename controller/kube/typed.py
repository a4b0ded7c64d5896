"""Typed access to one resource: pydantic models in, pydantic models out.

Parse at the boundary: a reconciler holding a `TypedResource[Workspace]` never sees a
raw dict from the API. Serialization is `model_dump(by_alias=True, exclude_none=True,
mode="json")`, so camelCase aliases round-trip. Errors are the client's error tree.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from controller.kube.client import KubeClient
from controller.kube.resources import KubeObject, ResourceType

ModelT = TypeVar("ModelT", bound=BaseModel)


def dump(model: BaseModel) -> KubeObject:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


class TypedResource(Generic[ModelT]):
    """CRUD on `resource` with objects validated as `model`."""

    def __init__(self, client: KubeClient, resource: ResourceType, model: type[ModelT]) -> None:
        self.client = client
        self.resource = resource
        self.model = model

    def parse(self, obj: KubeObject) -> ModelT:
        return self.model.model_validate(obj)

    async def get(self, name: str, namespace: str | None = None) -> ModelT:
        return self.parse(await self.client.get(self.resource, name, namespace))

    async def list(
        self, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[ModelT]:
        page = await self.client.list_all(self.resource, namespace, label_selector=label_selector)
        return [self.parse(item) for item in page.items]

    async def create(self, obj: ModelT) -> ModelT:
        return self.parse(await self.client.create(self.resource, dump(obj)))

    async def replace(self, obj: ModelT) -> ModelT:
        return self.parse(await self.client.replace(self.resource, dump(obj)))

    async def replace_status(self, obj: ModelT) -> ModelT:
        return self.parse(await self.client.replace_status(self.resource, dump(obj)))

    async def patch(self, name: str, patch: Any, namespace: str | None = None) -> ModelT:
        return self.parse(await self.client.patch(self.resource, name, patch, namespace))

    async def delete(self, name: str, namespace: str | None = None) -> None:
        await self.client.delete(self.resource, name, namespace)
