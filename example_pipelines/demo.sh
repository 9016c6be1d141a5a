#!/usr/bin/env bash
# The README's demo: copy the example root to a scratch directory and run three pipelines to
# the end: fan-out (plain commands in parallel), regression-loop (a failing test spawns a
# fix-up, then passes) started from a small git repository of "yours", and agent-dev (the
# scripted agent, with an approval gate the demo approves with `clowder approve`); show
# what the regression changed with git, and end by bringing that work
# back to your repository as a branch with `clowder export`.
# Usage: bash example_pipelines/demo.sh [DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-$(mktemp -d -t clowder-demo.XXXXXX)}"
mkdir -p "$dir"
cp -r "$here/clowder.toml" "$here/templates" "$dir/"
mkdir -p "$dir/pipelines"
cd "$dir"
echo "== demo root: $dir"
clowder validate

echo "== fan-out: a split, three parallel workers, a join"
clowder new fan-out --name numbers --prompt "Square and cube the numbers 1 to 3, then join the results"
clowder graph numbers --format mermaid
clowder run numbers
clowder logs numbers join

echo "== your project: a git repository the next pipeline starts from"
git init -q -b main myproject
echo "# myproject" > myproject/README.md
git -C myproject add README.md
git -C myproject -c user.name=You -c user.email=you@example.com commit -q -m "Start myproject"

echo "== regression-loop: test fails, spawns a fix-up of dev, passes on its second attempt"
clowder new regression-loop --name calc --prompt "Write add(a, b) with a test" --source myproject
clowder run calc
clowder status calc
echo "== what the fix-up changed: clowder diff calc dev dev.r1 -- calc.py"
clowder diff calc dev dev.r1 -- calc.py
echo "== the two test attempts: clowder diff calc test@1 test@2 --stat"
clowder diff calc test@1 test@2 --stat
echo "== the test's history: git log in its workspace"
git -C "$(clowder path calc test)" log --format='%h %s%n%(trailers:only,unfold)' | grep -v '^$'

echo "== notifications: what the [[notify]] table of clowder.toml was told (notifications.log)"
cat notifications.log

echo "== agent-dev: plan -> [approval gate] -> dev -> test -> verify with the built-in scripted agent (no model, no network)"
clowder new agent-dev --name agents --prompt "Write calc.py with add(a, b), and a test that proves it"
clowder run agents &  # runs plan, then waits at the gate before dev
run=$!
for _ in $(seq 600); do  # at most 2 minutes: until the [[notify]] table has been told of the gate
  if grep -q "^waiting_for_approval agents/dev" notifications.log; then break; fi
  kill -0 "$run" 2>/dev/null || break
  sleep 0.2
done
echo "== the plan, waiting for your approval: clowder status agents"
clowder status agents
echo "== what the [[notify]] table was told: grep agents notifications.log"
grep agents notifications.log
cat "$(clowder path agents plan)/.clowder/plan/output.json"; echo
echo "== clowder approve agents dev --comment \"the plan looks right\""
clowder approve agents dev --comment "the plan looks right"
wait "$run"
clowder status agents
echo "== who approved dev, in its commit's trailers"
git -C "$(clowder path agents dev)" log -1 --format='%(trailers:key=Clowder-Approved-By,key=Clowder-Approval-Comment)' attempt-1
echo "== what the fix-up agent was told: the regression context in its prompt"
sed -n '/^# Regression context/,/^Context:/p' "$(clowder path agents dev.r1)/.clowder/dev.r1/prompt.md"

echo "== bring the work back: clowder export calc --branch clowder/calc (your checkout is never touched)"
printf '\n[export]\nexclude = ["report.txt"]  # the test report stays out of your branch\n' >> pipelines/calc/pipeline.toml
clowder export calc --branch clowder/calc
git -C myproject log --format='%h %s' --stat clowder/calc
