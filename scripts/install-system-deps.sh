#!/usr/bin/env bash
# Install the Debian packages the tests need: Ceph (a real S3 server for the store
# tests), Redis (the Celery broker) and Chromium (browser tests). Does nothing when
# they are already there.
set -euo pipefail

needed_commands=(ceph-mon ceph-osd radosgw radosgw-admin monmaptool ceph-authtool redis-server chromium)
missing=()
for command_name in "${needed_commands[@]}"; do
    command -v "$command_name" >/dev/null 2>&1 || missing+=("$command_name")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "system-deps: all present (${needed_commands[*]})"
    exit 0
fi

packages=(ceph-mon ceph-osd radosgw ceph-common redis-server chromium)
echo "system-deps: missing ${missing[*]}; installing Debian packages: ${packages[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: apt-get not found; install the equivalents of: ${packages[*]}" >&2
    exit 1
fi
sudo_prefix=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_prefix=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_prefix[@]}" apt-get update -qq
"${sudo_prefix[@]}" apt-get install -y -qq "${packages[@]}" >/dev/null
echo "system-deps: installed ${packages[*]}"
