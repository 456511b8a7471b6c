#!/usr/bin/env bash
# The shop demo, offline: what may reach what before and after zero-trust
# NetworkPolicies, from the same compiler the agent enforces with.
set -euo pipefail
cd "$(dirname "$0")/.."
ztctl=_out/bin/ztctl
shop=examples/shop

echo "== 1. The shop with no NetworkPolicy: everything reaches everything"
$ztctl reach -f $shop/cluster.yaml
echo
echo "== 2. After default-deny and two narrow allows ($shop/policies.yaml)"
$ztctl reach -f $shop/cluster.yaml -f $shop/policies.yaml
echo
echo "== 3. Only frontend->api:8080 and api->db:5432 pass:"
$ztctl reach -f $shop/cluster.yaml -f $shop/policies.yaml -o json |
  awk -F'"' '/"from"/{f=$4} /"to"/{t=$4} /"port"/{gsub(/[^0-9]/,"",$3); p=$3} /"protocol"/{pr=$4} /"verdict": "allow"/{print "    " f " -> " t " " p "/" pr}'
echo
echo "== 4. The attacker's lateral movement, explained"
$ztctl reach -f $shop/cluster.yaml -f $shop/policies.yaml --from shop/attacker --to data/db --port 5432/TCP
$ztctl reach -f $shop/cluster.yaml -f $shop/policies.yaml --from shop/attacker --to shop/api --port 8080/TCP
echo
echo "Try your own: kubectl get ns,pods,netpol -A -o yaml > cluster.yaml; $ztctl reach -f cluster.yaml"
