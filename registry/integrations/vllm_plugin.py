"""vLLM's side of the registry's LoRA resolver: a ``LoRAResolver`` registered from the
``vllm.general_plugins`` entry point (``adapter_registry``). Imported only by vLLM's plugin
loader, where vLLM is installed; nothing in the registry imports it. The logic is in
`registry.integrations.vllm_resolver`.

Settings (environment): ``VLLM_LORA_RESOLVER_CACHE_DIR`` (where versions are pulled; vLLM's own
setting, also read by its filesystem resolver), ``REGISTRY_URL``, ``REGISTRY_TOKEN``. vLLM calls
resolvers only with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib
from pathlib import Path

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from registry.client import HttpRegistry
from registry.errors import RegistryError
from registry.integrations.vllm_resolver import resolve_and_pull

log = logging.getLogger("registry.vllm")
RESOLVER_NAME = "adapter-registry"


class RegistryLoRAResolver(LoRAResolver):
    """Resolves ``NAME@ALIAS`` / ``NAME:VERSION`` model names to verified registry pulls."""

    def __init__(self, client: HttpRegistry, cache_dir: Path) -> None:
        self.client = client
        self.cache_dir = cache_dir

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        try:
            # Blocking HTTP and file writes: off the server's event loop.
            name, path = await asyncio.to_thread(
                resolve_and_pull, self.client, base_model_name, lora_name, self.cache_dir)
        except RegistryError as exc:
            log.warning("adapter-registry: not serving %r: %s", lora_name, exc.detail)
            return None
        # vLLM replaces lora_int_id with its own counter; a stable value until then.
        return LoRARequest(lora_name=name, lora_int_id=zlib.crc32(name.encode()) or 1,
                           lora_path=str(path))


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the resolver when configured."""
    cache_dir = os.environ.get("VLLM_LORA_RESOLVER_CACHE_DIR")
    url = os.environ.get("REGISTRY_URL")
    if not cache_dir or not url:
        log.info("adapter-registry LoRA resolver not registered: set REGISTRY_URL and "
                 "VLLM_LORA_RESOLVER_CACHE_DIR")
        return
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    client = HttpRegistry(url, token=os.environ.get("REGISTRY_TOKEN") or None)
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, RegistryLoRAResolver(client, root))
