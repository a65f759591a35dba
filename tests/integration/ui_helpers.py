"""A small registry for the web UI tests, pushed through the real HTTP API (and, for the base
model's own score, which no route records, through the evals service).

``bot``: versions 1-4 of a tiny LoRA linked to tiny-llama (4 is bot:3's child, metadata and
the promotion reason carry ``<script>``), ``smoke.accuracy`` scored 0.70 / 0.80 / 0.90 / 0.60,
``production`` at 2 then 3 (two promotions), a policy on ``production`` requiring
``smoke.accuracy >= 0.75``; ``bot-fork`` 1 forked from bot:3; ``other`` 1 (linked through
its config's declared base).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from registry.adapters.schemas import CreateVersionIn
from registry.backend import RegistryBackend
from registry.base_models.queries import get_base
from registry.clientside.transfer import push, register_base_dir
from registry.config import Settings
from registry.context import RegistryContext
from registry.db.engine import session_scope
from registry.db.models import ScoreSource
from registry.evals import service as eval_service
from registry.evals.schemas import RecordScoresIn
from registry.lifecycle.schemas import PolicyIn, PromoteIn

XSS = "<script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\">"
SCORES = {1: 0.70, 2: 0.80, 3: 0.90, 4: 0.60}
BASE_SCORE = 0.5


@dataclass
class Seeded:
    name: str = "bot"
    fork: str = "bot-fork"


def seed(backend: RegistryBackend, context: RegistryContext, settings: Settings,
         adapters_dir: dict[str, Path], base_dirs: dict[str, Path]) -> Seeded:
    register_base_dir(backend, name="tiny-llama", directory=base_dirs["llama"],
                      settings=settings)
    first = push(backend, name="bot", directory=adapters_dir["lora"], settings=settings,
                 base_model="tiny-llama", description="a support bot",
                 metadata={"note": XSS, "team": "search"})
    files = {f.path: f.digest for f in first.version.files}
    for i in (2, 3):
        backend.create_version("bot", CreateVersionIn(
            files=files, base_model="tiny-llama", parent=f"bot:{i - 1}",
            git_commit="0123abcd" * 5, ci_run_url=f"https://ci.example/run/{i}",
            created_by="ci"))
    backend.create_version("bot", CreateVersionIn(
        files=files, base_model="tiny-llama", parent="bot:3", metadata={"x": XSS},
        ci_run_url="https://ci.example/run/4?a=\"><script>window.__xss=3</script>",
        created_by="alice"))
    backend.create_version("bot-fork", CreateVersionIn(files=files, base_model="tiny-llama",
                                                       parent="bot:3"))
    backend.create_version("other", CreateVersionIn(files=files))
    for version, value in SCORES.items():
        backend.record_scores("bot", version, RecordScoresIn(
            suite="smoke", scores={"accuracy": value, "loss": 2 - value}))
    with session_scope(context.sessions) as session:
        eval_service.record_scores(session, version=None,
                                   base=get_base(session, name="tiny-llama"), suite="smoke",
                                   scores={"accuracy": BASE_SCORE}, source=ScoreSource.user)
    backend.promote("bot", "production", PromoteIn(version=2, actor="alice",
                                                   reason="first release"))
    backend.promote("bot", "production", PromoteIn(version=3, actor="bob", reason=XSS))
    backend.set_policy("bot", "production", PolicyIn(min_scores={"smoke.accuracy": 0.75}))
    return Seeded()
