#!/usr/bin/env bash
set -euo pipefail
trap 'exit 0' TERM
echo hola 1>&2
echo hi there
