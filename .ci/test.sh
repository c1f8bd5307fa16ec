#!/usr/bin/env bash
# The README's test command: install what the tests need, vet, test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install.sh
go vet ./...
go test -count=1 -timeout 20m ./...
