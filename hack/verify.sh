#!/usr/bin/env bash
# Fails when files that are generated from the code (CRDs, RBAC, deepcopy), the
# Helm chart generated from config/, or the module files differ from what the
# code produces. Run after make manifests generate chart, which rewrite the
# generated files in place: any difference from the
# committed tree then means someone changed the code without regenerating.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

failed=0
fail() { echo "verify: $*" >&2; failed=1; }

for mod in . hack/tools hack/k8s; do
	(cd "${mod}" && GOWORK=off go mod tidy) || fail "go mod tidy failed in ${mod}"
done

generated=(api config charts go.mod go.sum hack/tools/go.mod hack/tools/go.sum hack/k8s/go.mod hack/k8s/go.sum)
if ! git diff --quiet -- "${generated[@]}"; then
	git diff --stat -- "${generated[@]}" >&2
	fail "generated files are out of date; run 'make manifests generate chart' and 'go mod tidy', then commit the result"
fi
untracked=$(git ls-files --others --exclude-standard -- "${generated[@]}")
if [[ -n "${untracked}" ]]; then
	echo "${untracked}" >&2
	fail "generated files are not committed"
fi

hack/check-tracked-files.sh || fail "a tracked file is a binary or over 1 MiB; remove it with git rm --cached"

api=$(awk '$1 == "k8s.io/api" { print $2 }' go.mod)
kube=$(awk '$1 == "k8s.io/kubernetes" || ($1 == "require" && $2 == "k8s.io/kubernetes") { print ($1 == "require") ? $3 : $2 }' hack/k8s/go.mod)
[[ "v1.${api#v0.}" == "${kube}" ]] || fail "go.mod uses k8s.io/api ${api} but hack/k8s/go.mod builds kubernetes ${kube}; run hack/k8s/update.sh v1.${api#v0.}"

if ((failed)); then
	exit 1
fi
echo "verify: generated files and module files are up to date"
