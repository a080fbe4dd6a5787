#!/usr/bin/env bash
# Points the control-plane build module at another Kubernetes release, e.g.
#   hack/k8s/update.sh v1.37.2
# k8s.io/kubernetes cannot be required on its own: its go.mod replaces every
# staging module (k8s.io/api, k8s.io/apiserver, ...) with a folder of its own
# repository. This writes a go.mod that replaces each of them with the matching
# v0.X.Y release instead, keeps the four programs as tool directives so that
# go mod tidy keeps their dependencies, and resolves the rest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

version=${1:?usage: hack/k8s/update.sh v1.X.Y}
[[ "${version}" =~ ^v1\.([0-9]+\.[0-9]+)$ ]] || { echo "update.sh: ${version} is not a v1.X.Y release" >&2; exit 1; }
staging="v0.${BASH_REMATCH[1]}"

upstream=$(GOWORK=off GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@${version}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[[ -f "${upstream}" ]] || { echo "update.sh: could not download k8s.io/kubernetes ${version}" >&2; exit 1; }

{
	echo "// Builds the control plane that envtest and the local cluster run on;"
	echo "// see hack/control-plane.sh. Written by hack/k8s/update.sh."
	echo "module github.com/kinfer/kinfer/hack/k8s"
	echo
	echo "go $(awk '$1 == "go" { print $2 }' "${upstream}")"
	echo
	echo "require k8s.io/kubernetes ${version}"
	echo
	echo "tool ("
	echo "	go.etcd.io/etcd/server/v3"
	echo "	k8s.io/kubernetes/cmd/kube-apiserver"
	echo "	k8s.io/kubernetes/cmd/kube-controller-manager"
	echo "	k8s.io/kubernetes/cmd/kube-scheduler"
	echo ")"
	echo
	echo "replace ("
	sed -n '/^replace (/,/^)/p' "${upstream}" | awk -v v="${staging}" '$2 == "=>" && $3 ~ /^\.\/staging\// { printf "\t%s => %s %s\n", $1, $1, v }'
	echo ")"
} >go.mod
rm -f go.sum
GOWORK=off go mod tidy
echo "hack/k8s now builds Kubernetes ${version}; hack/control-plane.sh builds it into bin/k8s/${version} when missing"
