#!/usr/bin/env bash
# The README's demo: copy the example root somewhere scratch, create a pipeline from a
# template, and show it. Usage: bash example_pipelines/demo.sh [DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-$(mktemp -d -t clowder-demo.XXXXXX)}"
mkdir -p "$dir"
cp -r "$here/clowder.toml" "$here/templates" "$dir/"
mkdir -p "$dir/pipelines"
cd "$dir"
echo "== demo root: $dir"
clowder validate
name=$(clowder new fan-out --prompt "Square and cube the numbers 1 to 3, then join the results")
clowder graph "$name" --format mermaid
clowder status "$name"
