#!/usr/bin/env bash
# Register a trained adapter from a CI job: push it (idempotent per CI run), wait for the
# registry's validation, record the job's own eval scores, promote it to staging with a
# compare-and-set. Any refusal fails the job with the registry's one-line reason.
#
#   register-adapter.sh NAME ADAPTER_DIR [METRIC=VALUE ...]
#
# Environment:
#   REGISTRY_URL, REGISTRY_TOKEN  the registry, and a token with the push and promote scopes
#   BASE_MODEL                    the registered base model the adapter was trained on
#   RUN_ID                        the CI run (GitHub: github.run_id; GitLab: CI_PIPELINE_ID):
#                                 the push's idempotency key, so a re-run pushes nothing new
#   EVAL_SUITE=ci-eval            the suite name METRIC=VALUE scores are recorded under
#   PROMOTE_ALIAS=staging         the alias to move
#   EXPECT_CURRENT                the version the alias must still hold when it is moved
#                                 ("none": unset); default: what it held when this started
#   VALIDATE_TIMEOUT=3600         seconds to wait for the validation
# Exit status: the CLI's (1 invalid, 3 not found, 4 conflict, 5 unavailable or timed out,
# 6 validation failed or a promotion gate said no). On GitHub Actions the reason is also an
# ::error annotation, and `version` is written to $GITHUB_OUTPUT.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 NAME ADAPTER_DIR [METRIC=VALUE ...]" >&2
  exit 1
fi
name=$1 adapter_dir=$2
shift 2
scores=("$@")
: "${REGISTRY_URL:?set REGISTRY_URL to the registry's URL}"
: "${BASE_MODEL:?set BASE_MODEL to the base model the adapter was trained on}"
: "${RUN_ID:?set RUN_ID to the CI run id (the push's idempotency key)}"
suite=${EVAL_SUITE:-ci-eval}
alias_name=${PROMOTE_ALIAS:-staging}
timeout=${VALIDATE_TIMEOUT:-3600}
cli=(adapter-registry --json)

errfile=$(mktemp)
trap 'rm -f "$errfile"' EXIT

# step WHAT CMD...: run CMD (stdout passes through); on failure repeat the registry's one-line
# reason as the job's last line and exit with the CLI's status.
step() {
  local what=$1 code=0
  shift
  "$@" 2>"$errfile" || code=$?
  cat "$errfile" >&2
  if [[ $code -ne 0 ]]; then
    local reason
    reason=$(grep '^error: ' "$errfile" | tail -n 1 || true)
    reason=${reason#error: }
    [[ -n $reason ]] || reason=$(tail -n 1 "$errfile")
    if [[ ${GITHUB_ACTIONS:-} == true ]]; then
      echo "::error title=register-adapter: ${what} failed::${reason}" >&2
    fi
    echo "register-adapter: ${what} failed (exit ${code}): ${reason}" >&2
    exit "$code"
  fi
}

field() {  # field KEY < JSON
  python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

# What the alias holds now: the promotion below moves it only if nobody moved it meanwhile.
if [[ -z ${EXPECT_CURRENT:-} ]]; then
  code=0
  shown=$("${cli[@]}" show "${name}@${alias_name}" 2>"$errfile") || code=$?
  if [[ $code -eq 0 ]]; then
    EXPECT_CURRENT=$(field version <<<"$shown")
  elif [[ $code -eq 3 ]]; then
    EXPECT_CURRENT=none  # no such alias (or adapter) yet
  else
    step "reading ${name}@${alias_name}" "${cli[@]}" show "${name}@${alias_name}"
  fi
fi

pushed=$(step push "${cli[@]}" push "$name" "$adapter_dir" --base "$BASE_MODEL" \
  --idempotency-key "ci-run-${RUN_ID}" --meta "ci_run_id=${RUN_ID}")
version=$(field version <<<"$pushed")
ref="${name}:${version}"
echo "pushed ${ref}" >&2

step validate "${cli[@]}" validate "$ref" --wait --timeout "$timeout" >/dev/null
echo "validated ${ref}" >&2

if [[ ${#scores[@]} -gt 0 ]]; then
  step "eval record" "${cli[@]}" eval record "$ref" --suite "$suite" "${scores[@]}" >/dev/null
  echo "recorded ${suite}: ${scores[*]}" >&2
fi

step promote "${cli[@]}" promote "$ref" --alias "$alias_name" \
  --expect-current "$EXPECT_CURRENT" --reason "CI run ${RUN_ID}" >/dev/null
echo "promoted ${ref} to ${name}@${alias_name} (was ${EXPECT_CURRENT})" >&2

if [[ -n ${GITHUB_OUTPUT:-} ]]; then
  echo "version=${version}" >>"$GITHUB_OUTPUT"
fi
echo "$ref"
