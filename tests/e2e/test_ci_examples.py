"""The CI examples cannot rot: both YAML files run infra/ci/register-adapter.sh, and that script
runs here, as a CI job would (bash, the `adapter-registry` command on PATH, only REGISTRY_URL
and the job's variables), against a live server with a real worker validating on CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from registry.client import HttpRegistry
from tests.integration import worker_helpers as wh

REPO = Path(__file__).resolve().parents[2]
CI = REPO / "infra" / "ci"
SCRIPT = CI / "register-adapter.sh"
SCRIPT_CALL = "bash infra/ci/register-adapter.sh"

pytestmark = pytest.mark.slow


def test_both_examples_are_valid_yaml_and_call_the_script():
    github = yaml.safe_load((CI / "github-actions.yml").read_text())
    [job] = github["jobs"].values()
    runs = [s.get("run", "") for s in job["steps"]]
    [register] = [s for s in job["steps"] if SCRIPT_CALL in s.get("run", "")]
    env = {**job["env"], **register["env"]}
    assert env["RUN_ID"] == "${{ github.run_id }}"  # not the attempt: a re-run is idempotent
    assert {"REGISTRY_URL", "REGISTRY_TOKEN", "BASE_MODEL"} <= set(env)
    assert "secrets.REGISTRY_TOKEN" in env["REGISTRY_TOKEN"]
    assert any("adapter-registry" in r for r in runs[:runs.index(register["run"])])

    gitlab = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    jobs = {k: v for k, v in gitlab.items() if isinstance(v, dict) and "script" in v}
    [(name, job)] = [(k, v) for k, v in jobs.items()
                     if any(SCRIPT_CALL in line for line in v["script"])]
    assert job["variables"]["RUN_ID"] == "$CI_PIPELINE_ID"
    assert "BASE_MODEL" in job["variables"]
    assert set(gitlab["stages"]) >= {jobs[n]["stage"] for n in jobs}
    assert job["needs"] == [n for n in jobs if n != name]  # the training job's artifacts

    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    first = SCRIPT.read_text().splitlines()
    assert first[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in first


@pytest.fixture
def ci_env(tmp_path, live_server) -> dict[str, str]:
    """A CI job's environment: `adapter-registry` on PATH (this checkout), the registry's URL,
    nothing of the test's own (no database, storage or GitHub variables)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "adapter-registry"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli.main "$@"\n')
    shim.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "REGISTRY_HOME": str(tmp_path / "cli-home"),
        "REGISTRY_URL": live_server.url,
        "BASE_MODEL": "tiny-llama",
        "VALIDATE_TIMEOUT": "300",
    }


def register(env: dict[str, str], adapter: Path, *scores: str, **extra: str
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), "bot", str(adapter), *scores],
                          env={**env, **extra}, capture_output=True, text=True, timeout=600,
                          cwd=REPO)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_the_script_against_a_live_registry(live_server, ci_env, adapters_dir, base_dirs,
                                            tmp_path):
    http = HttpRegistry(live_server.url)
    from registry.clientside.transfer import register_base_dir

    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"],
                      settings=live_server.context.settings)
    worker = wh.start_worker(tmp_path / "worker", "--device", "cpu", url=live_server.url)
    try:
        outputs = tmp_path / "github-output"
        done = register(ci_env, adapters_dir["lora"], "accuracy=0.91", "loss=0.25",
                        RUN_ID="1001", GITHUB_ACTIONS="true", GITHUB_OUTPUT=str(outputs))
        assert done.returncode == 0, done.stderr
        assert done.stdout == "bot:1\n" and outputs.read_text() == "version=1\n"
        v1 = http.get_version("bot", 1)
        assert v1.status == "validated" and v1.aliases == ["staging"]
        assert v1.idempotency_key == "ci-run-1001" and v1.metadata["ci_run_id"] == "1001"
        ci_scores = {(s.suite, s.metric): (s.value, s.source) for s in v1.scores
                     if s.source == "ci"}
        assert ci_scores == {("ci-eval", "accuracy"): (0.91, "ci"),
                             ("ci-eval", "loss"): (0.25, "ci")}
        [move] = http.history("bot")
        assert (move.alias, move.from_version, move.to_version, move.reason) == (
            "staging", None, 1, "CI run 1001")

        # The same run again (a retried job): the same version, nothing new anywhere.
        again = register(ci_env, adapters_dir["lora"], "accuracy=0.91", RUN_ID="1001")
        assert again.returncode == 0, again.stderr
        assert again.stdout == "bot:1\n" and len(http.list_versions("bot")) == 1
        assert len(http.history("bot")) == 1

        # Someone moved staging since the job read it: the compare-and-set refuses, the job
        # fails with the registry's reason as its last line, staging stays where it was.
        stale = register(ci_env, adapters_dir["lora_v2"], "accuracy=0.95", RUN_ID="1002",
                         EXPECT_CURRENT="none", GITHUB_ACTIONS="true")
        assert stale.returncode == 4, stale.stderr
        assert last_line(stale.stderr) == (
            "register-adapter: promote failed (exit 4): bot@staging points at bot:1, not none "
            "as expected (--expect-current): it moved meanwhile; nothing was changed")
        assert "::error title=register-adapter: promote failed::bot@staging points at bot:1" \
            in stale.stderr
        assert "Traceback" not in stale.stderr and stale.stdout == ""
        assert http.get_version("bot", 2).status == "validated"  # pushed and validated first
        assert http.get_version("bot", 1).aliases == ["staging"]

        # An adapter that fails validation: exit 6 with the worker's reason; nothing promoted.
        zero = wh.variant(adapters_dir["lora"], tmp_path / "zero", wh.zero_lora_b)
        failed = register(ci_env, zero, "accuracy=0.99", RUN_ID="1003")
        assert failed.returncode == 6, failed.stderr
        assert last_line(failed.stderr).startswith(
            "register-adapter: validate failed (exit 6): validation of bot:3 failed: ")
        assert "the adapter does not change the model's outputs" in last_line(failed.stderr)
        assert not [s for s in http.get_version("bot", 3).scores if s.source == "ci"]
        assert http.get_version("bot", 1).aliases == ["staging"]

        # Bad input is refused before anything is pushed, with one line.
        missing = register(ci_env, tmp_path / "nowhere", RUN_ID="1004")
        assert missing.returncode == 1 and last_line(missing.stderr).startswith(
            "register-adapter: push failed (exit 1): ")
        assert len(http.list_versions("bot")) == 3
        unset = register({k: v for k, v in ci_env.items() if k != "BASE_MODEL"},
                         adapters_dir["lora"], RUN_ID="1005")
        assert unset.returncode != 0 and "BASE_MODEL" in last_line(unset.stderr)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.communicate(timeout=120)
        finally:
            worker.kill()
        http.close()
    assert worker.returncode == 0


@pytest.mark.skipif(os.name != "posix", reason="bash")
def test_usage_without_arguments():
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and done.stderr.startswith("usage: ")
