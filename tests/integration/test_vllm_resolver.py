"""The vLLM LoRA resolver's logic against a live registry (both deployment shapes), and its
vLLM glue run against a stand-in ``vllm`` package (vLLM itself is not installable here)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from registry import errors
from registry.clientside.transfer import push, register_base_dir
from registry.integrations.vllm_resolver import cache_dir_name, resolve_and_pull
from registry.lifecycle.schemas import PromoteIn
from tests.integration.helpers import read_dir
from tests.integration.test_pull_if_changed import stamps

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry_with_bot(http, settings, base_dirs, adapters_dir):
    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"], settings=settings)
    for d in (adapters_dir["lora"], adapters_dir["lora_v2"]):
        push(http, name="support-bot", directory=d, settings=settings, base_model="tiny-llama")
    http.promote("support-bot", "production", PromoteIn(version=1))
    return http


def test_resolves_alias_to_a_verified_versioned_pull(registry_with_bot, tmp_path, adapters_dir,
                                                     base_dirs):
    http, cache = registry_with_bot, tmp_path / "lora-cache"
    name, path = resolve_and_pull(http, "tiny-llama", "support-bot@production", cache)
    assert (name, path) == ("support-bot:1", cache / "support-bot--v1")
    assert read_dir(path) == read_dir(adapters_dir["lora"])

    # Same version (by alias, by number, by the served model's path): same directory, untouched.
    before = stamps(path)
    assert resolve_and_pull(http, "tiny-llama", "support-bot@production", cache) == (name, path)
    assert resolve_and_pull(http, str(base_dirs["llama"]), "support-bot:1", cache) == (name, path)
    assert resolve_and_pull(http, "/models/tiny-llama", "support-bot:1", cache) == (name, path)
    assert stamps(path) == before

    # A promotion: the alias now resolves to a new versioned name and directory; v1 stays.
    http.promote("support-bot", "production", PromoteIn(version=2))
    name2, path2 = resolve_and_pull(http, "tiny-llama", "support-bot@production", cache)
    assert (name2, path2) == ("support-bot:2", cache / "support-bot--v2")
    assert read_dir(path2) == read_dir(adapters_dir["lora_v2"])
    assert stamps(path) == before
    assert sorted(p.name for p in cache.iterdir()) == ["support-bot--v1", "support-bot--v2"]

    # A cached copy that lost a file is pulled again, whole.
    (path2 / "adapter_config.json").unlink()
    assert resolve_and_pull(http, "tiny-llama", "support-bot:2", cache) == (name2, path2)
    assert read_dir(path2) == read_dir(adapters_dir["lora_v2"])


def test_refuses_a_foreign_base_and_bad_names(registry_with_bot, tmp_path, settings,
                                              adapters_dir):
    http, cache = registry_with_bot, tmp_path / "lora-cache"
    with pytest.raises(errors.CheckFailed, match="not the served model 'meta-llama/Llama-3'"):
        resolve_and_pull(http, "meta-llama/Llama-3", "support-bot@production", cache)
    with pytest.raises(errors.CheckFailed, match="not the served model"):
        resolve_and_pull(http, "/models/tiny-llama-2", "support-bot@production", cache)
    # Linked to no base (it declares one nobody registered): nothing says it fits.
    loose = tmp_path / "loose"
    shutil.copytree(adapters_dir["lora"], loose)
    config = json.loads((loose / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "unregistered-llama"
    (loose / "adapter_config.json").write_text(json.dumps(config))
    push(http, name="team/loose", directory=loose, settings=settings)
    assert http.get_version("team/loose", 1).base_model is None
    with pytest.raises(errors.CheckFailed, match="linked to no registered base"):
        resolve_and_pull(http, "tiny-llama", "team/loose:1", cache)
    with pytest.raises(errors.AliasNotFound):
        resolve_and_pull(http, "tiny-llama", "support-bot@canary", cache)
    with pytest.raises(errors.InvalidReference):
        resolve_and_pull(http, "tiny-llama", "../../etc", cache)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_namespaced_names_get_one_directory_each(http, settings, base_dirs, adapters_dir,
                                                 tmp_path):
    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"], settings=settings)
    push(http, name="team/bot", directory=adapters_dir["lora"], settings=settings,
         base_model="tiny-llama")
    assert cache_dir_name("team/bot", 1) == "team+bot--v1"
    name, path = resolve_and_pull(http, "tiny-llama", "team/bot", tmp_path)
    assert (name, path) == ("team/bot:1", tmp_path / "team+bot--v1")


def test_registry_never_imports_vllm_or_its_plugin():
    """The plugin module is reached only from the entry point; the rest runs without vLLM."""
    plugin = "registry.integrations.vllm_plugin"
    for root in (REPO / "registry", REPO / "cli"):
        for path in root.rglob("*.py"):
            if path.name == "vllm_plugin.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                assert not any(n == plugin or n.split(".")[0] == "vllm" for n in names), path
    code = ("import sys, registry.integrations.vllm_resolver, registry.api.app, cli.main; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'vllm'], 'vllm imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'adapter_registry = "registry.integrations.vllm_plugin:register"' in pyproject
    assert '[project.entry-points."vllm.general_plugins"]' in pyproject


# A stand-in for the two vLLM modules the plugin imports, with vLLM's signatures
# (vllm/lora/resolver.py, vllm/lora/request.py).
FAKE_VLLM = {
    "vllm/__init__.py": "",
    "vllm/lora/__init__.py": "",
    "vllm/lora/request.py": """
        from dataclasses import dataclass

        @dataclass
        class LoRARequest:
            lora_name: str
            lora_int_id: int
            lora_path: str = ""
    """,
    "vllm/lora/resolver.py": """
        from abc import ABC, abstractmethod

        class LoRAResolver(ABC):
            @abstractmethod
            async def resolve_lora(self, base_model_name, lora_name): ...

        class _LoRAResolverRegistry:
            def __init__(self):
                self.resolvers = {}

            def register_resolver(self, resolver_name, resolver):
                self.resolvers[resolver_name] = resolver

        LoRAResolverRegistry = _LoRAResolverRegistry()
    """,
}

GLUE = """
import asyncio, json, sys
from registry.integrations.vllm_plugin import register
from vllm.lora.resolver import LoRAResolverRegistry
register()
[resolver] = LoRAResolverRegistry.resolvers.values()
ok = asyncio.run(resolver.resolve_lora("tiny-llama", "support-bot@production"))
foreign = asyncio.run(resolver.resolve_lora("other-model", "support-bot@production"))
missing = asyncio.run(resolver.resolve_lora("tiny-llama", "nobody@production"))
print(json.dumps({"name": ok.lora_name, "path": ok.lora_path, "id": ok.lora_int_id,
                  "foreign": foreign, "missing": missing}))
"""


def test_plugin_glue_with_a_stand_in_vllm(registry_with_bot, live_server, tmp_path):
    fake = tmp_path / "fake-vllm"
    for rel, text in FAKE_VLLM.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(textwrap.dedent(text))
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "AWS_"))}
    env.update({"PYTHONPATH": f"{REPO}{os.pathsep}{fake}", "REGISTRY_URL": live_server.url,
                "VLLM_LORA_RESOLVER_CACHE_DIR": str(cache)})
    proc = subprocess.run([sys.executable, "-c", GLUE], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert (out["name"], out["path"]) == ("support-bot:1", str(cache / "support-bot--v1"))
    assert out["id"] > 0 and out["foreign"] is None and out["missing"] is None
    assert "not serving 'support-bot@production'" in proc.stderr  # why it returned None
    # Without its settings the plugin registers nothing (vLLM starts as if it were absent).
    env.pop("REGISTRY_URL")
    code = GLUE.split("[resolver]")[0] + "assert not LoRAResolverRegistry.resolvers\n"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=120)
