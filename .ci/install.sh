#!/usr/bin/env bash
# Installs the real parts the tests talk to. Idempotent; quiet when present.
set -euo pipefail
pkgs=()
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || pkgs+=("$2"); }
need mosquitto mosquitto
need mosquitto_pub mosquitto-clients
need pebble pebble
need haproxy haproxy
need curl curl
need promtool prometheus
need docker-compose docker-compose   # `config` only: no engine needed
need systemd-analyze systemd
need pushpin pushpin                 # its runner starts condure, zurl, pushpin-proxy, pushpin-handler
if [ ${#pkgs[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# Go-installed tools, pinned.
gobin="$(go env GOPATH)/bin"
if ! command -v h2spec >/dev/null 2>&1 && [ ! -x "$gobin/h2spec" ]; then
  go install github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible
fi
if ! command -v staticcheck >/dev/null 2>&1 && [ ! -x "$gobin/staticcheck" ]; then
  go install honnef.co/go/tools/cmd/staticcheck@v0.7.0   # 2026.1: Go 1.26
fi
