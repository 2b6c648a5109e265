#!/usr/bin/env bash
# Installs the oracle: Rocket.Chat's published validator (@rocket.chat/rest-typings,
# the last version that has isVoipRoomCloseProps) and REST client
# (@rocket.chat/api-client), with only what they need at run time (ajv,
# query-string, pinned in package.json and package-lock.json).
#
# The registry lacks some versions their package.json files depend on, so the
# two packages are fetched with 'npm pack' and unpacked into node_modules
# rather than installed; their code is never committed here. The one import
# that cannot be had, @rocket.chat/core-typings, is served by a stub that
# exports the only name they use (VoipClientEvents, for another route's schema).
set -euo pipefail
cd "$(dirname "$0")"
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || {
  echo "error: Node.js 20+ and npm are needed for the conformance suite (apt-get install nodejs npm)" >&2; exit 1; }

REST_TYPINGS=@rocket.chat/rest-typings@7.13.9
API_CLIENT=@rocket.chat/api-client@0.2.57
stamp="$REST_TYPINGS $API_CLIENT $(sha256sum package-lock.json | cut -c1-16)"
if [ -f node_modules/.oracle-stamp ] && [ "$(cat node_modules/.oracle-stamp)" = "$stamp" ]; then
  exit 0
fi

npm ci --no-audit --no-fund --loglevel=error >&2
mkdir -p .cache node_modules/@rocket.chat
for spec in "$REST_TYPINGS" "$API_CLIENT"; do
  name=${spec%@*}; short=${name#@rocket.chat/}; version=${spec##*@}
  tgz=".cache/rocket.chat-$short-$version.tgz"
  [ -f "$tgz" ] || npm pack "$spec" --pack-destination .cache --loglevel=error >/dev/null
  rm -rf "node_modules/$name" .cache/unpack && mkdir -p .cache/unpack
  tar xzf "$tgz" -C .cache/unpack
  mv .cache/unpack/package "node_modules/$name"
done
mkdir -p node_modules/@rocket.chat/core-typings
cat > node_modules/@rocket.chat/core-typings/package.json <<'JSON'
{"name": "@rocket.chat/core-typings", "version": "0.0.0-stub", "type": "module", "main": "index.js"}
JSON
cat > node_modules/@rocket.chat/core-typings/index.js <<'JS'
// Stub: rest-typings' voip.js imports this enum for the voip/events schema only.
export const VoipClientEvents = {
  'VOIP-CALL-STARTED': 'VOIP-CALL-STARTED',
  'VOIP-CALL-ENDED': 'VOIP-CALL-ENDED',
  'VOIP-CALL-ON-HOLD': 'VOIP-CALL-ON-HOLD',
  'VOIP-CALL-UNHOLD': 'VOIP-CALL-UNHOLD',
};
JS
echo "$stamp" > node_modules/.oracle-stamp
