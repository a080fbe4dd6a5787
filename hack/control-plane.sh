#!/usr/bin/env bash
# Builds the Kubernetes control plane that envtest and the local cluster run on:
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler, compiled from
# source through the Go module proxy because no release binaries can be downloaded
# on the machines kinfer is developed on.
#
# The Kubernetes version follows k8s.io/api in go.mod (v0.X.Y -> v1.X.Y); the build
# module in hack/k8s must pin the same version. Binaries are cached in
# bin/k8s/<version>/ and built only when missing. When KUBEBUILDER_ASSETS already
# names a folder with etcd and kube-apiserver, that folder is used and nothing is
# built.
#
# Progress goes to stderr; the folder holding the binaries is the only thing
# printed on stdout, so callers can write KUBEBUILDER_ASSETS="$(hack/control-plane.sh)".
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { echo "control-plane: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
	for bin in etcd kube-apiserver; do
		[[ -x "${KUBEBUILDER_ASSETS}/${bin}" ]] ||
			die "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} has no ${bin}; unset it to build the control plane from source"
	done
	say "using KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS}; nothing to build"
	echo "${KUBEBUILDER_ASSETS}"
	exit 0
fi

module_version() { # go.mod module -> version from its require lines
	awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) { v = ($1 == m) ? $2 : $3 } END { print v }' "$1"
}

api_version=$(module_version "${root}/go.mod" k8s.io/api)
[[ "${api_version}" =~ ^v0\.([0-9]+\.[0-9]+)$ ]] || die "cannot read a released k8s.io/api version from go.mod (found '${api_version}')"
version="v1.${BASH_REMATCH[1]}"
minor=${BASH_REMATCH[1]%%.*}
pinned=$(module_version "${root}/hack/k8s/go.mod" k8s.io/kubernetes)
[[ "${pinned}" == "${version}" ]] ||
	die "go.mod uses k8s.io/api ${api_version} but hack/k8s/go.mod builds k8s.io/kubernetes ${pinned}; run hack/k8s/update.sh ${version}"

dir="${root}/bin/k8s/${version}"
mkdir -p "${dir}"

# Two builds at once (make test beside make run) would race on the same files.
exec 9>"${dir}/.lock"
flock 9

ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	ldflags+=" -X ${pkg}.gitVersion=${version} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
	ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
done

build() { # name package
	local name=$1 pkg=$2
	if [[ -x "${dir}/${name}" ]]; then
		say "${name} is cached in bin/k8s/${version}"
		return
	fi
	say "building ${name} for Kubernetes ${version} from ${pkg}; a cold build takes minutes"
	local start=${SECONDS} tmp="${dir}/.${name}.partial"
	(cd "${root}/hack/k8s" && GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags "${ldflags}" -o "${tmp}" "${pkg}") >&2 &
	local pid=$!
	while ! wait_for "${pid}" 30; do
		say "  still building ${name} ($((SECONDS - start))s so far)"
	done
	wait "${pid}" || { rm -f "${tmp}"; die "building ${name} failed"; }
	mv "${tmp}" "${dir}/${name}"
	say "built ${name} in $((SECONDS - start))s"
}

wait_for() { # pid seconds: true once pid has ended, false after seconds
	local i
	for ((i = 0; i < $2; i++)); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 1
	done
	! kill -0 "$1" 2>/dev/null
}

build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler

echo "${dir}"
