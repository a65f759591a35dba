"""Provenance from CI environment variables."""

from __future__ import annotations

from registry.clientside.ci_env import detect_provenance


def test_github_actions():
    p = detect_provenance({"GITHUB_ACTIONS": "true", "GITHUB_SHA": "abc1234",
                           "GITHUB_REPOSITORY": "o/r", "GITHUB_RUN_ID": "9",
                           "GITHUB_ACTOR": "me"})
    assert (p.git_commit, p.ci_run_url, p.created_by) == (
        "abc1234", "https://github.com/o/r/actions/runs/9", "me")


def test_gitlab():
    p = detect_provenance({"GITLAB_CI": "true", "CI_COMMIT_SHA": "def5678",
                           "CI_JOB_URL": "https://gitlab.example/o/r/-/jobs/5",
                           "GITLAB_USER_LOGIN": "you"})
    assert (p.git_commit, p.ci_run_url, p.created_by) == (
        "def5678", "https://gitlab.example/o/r/-/jobs/5", "you")


def test_no_ci():
    p = detect_provenance({"REGISTRY_ACTOR": "someone"})
    assert (p.git_commit, p.ci_run_url, p.created_by) == (None, None, "someone")
