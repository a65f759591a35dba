"""Provenance a push records from the usual CI environment variables (GitHub Actions, GitLab CI)."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Provenance:
    git_commit: str | None
    ci_run_url: str | None
    created_by: str | None


def detect_provenance(env: Mapping[str, str] | None = None) -> Provenance:
    """Read git commit, CI run URL and actor from the environment, when a CI system set them."""
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") == "true" or env.get("GITHUB_SHA"):
        run_url = None
        if env.get("GITHUB_REPOSITORY") and env.get("GITHUB_RUN_ID"):
            server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
            run_url = f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
        return Provenance(env.get("GITHUB_SHA"), run_url, env.get("GITHUB_ACTOR") or _user(env))
    if env.get("GITLAB_CI") == "true" or env.get("CI_COMMIT_SHA"):
        run_url = env.get("CI_JOB_URL") or env.get("CI_PIPELINE_URL")
        return Provenance(
            env.get("CI_COMMIT_SHA"), run_url, env.get("GITLAB_USER_LOGIN") or _user(env)
        )
    return Provenance(None, None, _user(env))


def _user(env: Mapping[str, str]) -> str | None:
    if env.get("REGISTRY_ACTOR"):
        return env["REGISTRY_ACTOR"]
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None
