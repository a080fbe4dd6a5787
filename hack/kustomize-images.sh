#!/usr/bin/env bash
# Renders a kustomization with some of its images replaced, the way
# `kustomize edit set image` would, but in a temporary overlay: the
# kustomization itself is never modified.
#
#   hack/kustomize-images.sh config/default ghcr.io/kinfer/kinfer=registry.example/kinfer:v1.2.3
#
# Each argument after the folder is OLD=NEW, OLD the image name as the
# kustomization renders it (without tag) and NEW a reference with a tag, a
# digest (name@sha256:...) or neither. The rendered YAML goes to stdout.
set -euo pipefail

if [[ $# -lt 1 ]]; then
	echo "usage: $0 KUSTOMIZATION-DIR [OLD-NAME=NEW-IMAGE ...]" >&2
	exit 2
fi
dir=$(cd "$1" && pwd)
shift
# Kustomize takes other kustomizations by relative path only, so the overlay
# is made in the repository's bin/ (ignored by git), next to config/.
bin="$(cd "$(dirname "$0")/.." && pwd)/bin"
mkdir -p "$bin"
overlay=$(mktemp -d "$bin/kustomize-images.XXXXXX")
trap 'rm -rf "$overlay"' EXIT

{
	echo "apiVersion: kustomize.config.k8s.io/v1beta1"
	echo "kind: Kustomization"
	echo "resources:"
	echo "- $(realpath --relative-to="$overlay" "$dir")"
	if [[ $# -eq 0 ]]; then echo "images: []"; else echo "images:"; fi
	for mapping in "$@"; do
		old=${mapping%%=*}
		new=${mapping#*=}
		if [[ -z $old || -z $new || $old == "$mapping" ]]; then
			echo "$0: $mapping is not OLD-NAME=NEW-IMAGE" >&2
			exit 2
		fi
		echo "- name: $old"
		if [[ $new == *@* ]]; then
			echo "  newName: ${new%%@*}"
			echo "  digest: ${new#*@}"
		elif [[ ${new##*/} == *:* ]]; then
			echo "  newName: ${new%:*}"
			echo "  newTag: \"${new##*:}\""
		else
			echo "  newName: $new"
		fi
	done
} >"$overlay/kustomization.yaml"

kubectl kustomize "$overlay"
